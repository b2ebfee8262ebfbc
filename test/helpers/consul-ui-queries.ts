// The 26 PromQL queries Consul UI's Prometheus metrics provider (Consul ≥ 1.9,
// ui/packages/consul-ui/vendor/metrics-providers/prometheus.js) runs for one service page, built
// the way the provider builds them, so a test can run them verbatim against a real Prometheus.
// `kind` says what the provider does with the result: series go to /api/v1/query_range, stats
// to /api/v1/query; grouped stats are keyed by `<service>.<namespace>.<datacenter>`.

export interface UiQuery {
  readonly id: string;
  readonly kind: "series" | "stat" | "grouped";
  /** The consul_*_ label infix a grouped result is keyed by. */
  readonly infix?: "upstream" | "source";
  readonly query: string;
}

type Type = "service" | "upstream" | "downstream";

export function consulUiQueries(service: string, dc: string, ns: string): UiQuery[] {
  const base = (type: Type) =>
    type === "downstream"
      ? `consul_destination_service="${service}",consul_destination_datacenter="${dc}",consul_destination_namespace="${ns}"`
      : `consul_source_service="${service}",consul_source_datacenter="${dc}",consul_source_namespace="${ns}"`;
  const http = (type: Type) => base(type) + (type === "upstream" ? `,envoy_http_conn_manager_prefix="upstream"` : type === "service" ? `,envoy_http_conn_manager_prefix="public_listener"` : "");
  const tcp = (type: Type) => base(type) + (type === "upstream" ? `,envoy_tcp_prefix=~"upstream.*"` : type === "service" ? `,envoy_tcp_prefix="public_listener"` : "");
  const groupLabels = (type: Type) => (type === "upstream" ? "consul_upstream_service,consul_upstream_datacenter,consul_upstream_namespace" : "consul_source_service,consul_source_datacenter,consul_source_namespace");
  const groupBy = (type: Type) => (type === "service" ? "" : ` by (${groupLabels(type)})`);
  const fin = (type: Type, q: string) => (type === "service" ? `${q} OR on() vector(0)` : q);
  const httpPfx = (type: Type) => (type === "downstream" ? "envoy_cluster_upstream_rq" : "envoy_http_downstream_rq");
  const tcpPfx = (type: Type) => (type === "downstream" ? "envoy_cluster_upstream_cx" : "envoy_tcp_downstream_cx");

  const stats = (type: Type, n: number): UiQuery[] => {
    const kind = type === "service" ? "stat" : "grouped";
    const infix = type === "upstream" ? "upstream" : type === "downstream" ? "source" : undefined;
    const g = groupBy(type);
    const le = type === "service" ? "le" : `le,${groupLabels(type)}`;
    const qs = [
      `sum(rate(${httpPfx(type)}_completed{${http(type)}}[15m]))${g}`,
      `sum(rate(${httpPfx(type)}_xx{${http(type)},envoy_response_code_class="5"}[15m]))${g}/sum(rate(${httpPfx(type)}_xx{${http(type)}}[15m]))${g}`,
      `histogram_quantile(0.5, sum by(${le}) (rate(${httpPfx(type)}_time_bucket{${http(type)}}[15m])))`,
      `histogram_quantile(0.99, sum by(${le}) (rate(${httpPfx(type)}_time_bucket{${http(type)}}[15m])))`,
      `sum(rate(${tcpPfx(type)}_total{${tcp(type)}}[15m]))${g}`,
      `8 * sum(rate(${tcpPfx(type)}_rx_bytes_total{${tcp(type)}}[15m]))${g}`,
      `8 * sum(rate(${tcpPfx(type)}_tx_bytes_total{${tcp(type)}}[15m]))${g}`,
      `sum(rate(${tcpPfx(type)}${type === "downstream" ? "_connect_fail" : "_no_route"}{${tcp(type)}}[15m]))${g}`,
    ];
    const names = ["RPS", "ER", "P50", "P99", "CR", "RX", "TX", "NR"];
    return qs.map((q, i) => ({ id: `U${n + i} ${type} ${names[i]}`, kind, ...(infix ? { infix } : {}), query: fin(type, q) }));
  };

  const sel = http("service");
  const tsel = tcp("service");
  return [
    {
      id: "U1 series L7",
      kind: "series",
      query: `sum by (label) (label_replace(label_replace(irate(envoy_listener_http_downstream_rq_xx{${sel}}[10m]), "label", "Successes", "envoy_response_code_class", "[^5]"), "label", "Errors", "envoy_response_code_class", "5"))`,
    },
    {
      id: "U2 series L4",
      kind: "series",
      query: `8 * sum by (label) (label_replace(irate(envoy_tcp_downstream_cx_tx_bytes_total{${tsel}}[10m]), "label", "Outbound", "__name__", ".*") or label_replace(irate(envoy_tcp_downstream_cx_rx_bytes_total{${tsel}}[10m]), "label", "Inbound", "__name__", ".*"))`,
    },
    ...stats("service", 3),
    ...stats("upstream", 11),
    ...stats("downstream", 19),
  ];
}
