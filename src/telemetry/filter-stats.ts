// Stats of a listener's network filter, as Envoy's tcp_proxy (`tcp.<stat_prefix>.*`) and HTTP
// connection manager (`http.<stat_prefix>.*`) keep them under the stat prefixes Consul configures:
// `public_listener` for the inbound listener, `upstream.<svc>.<ns>.<partition>.<dc>` for an
// upstream listener (Envoy's prefix extractor keeps `upstream`; Consul's tags the rest). These
// are the series Consul UI's topology metrics read for a service and its upstreams.
import type { Registry } from "prom-client";
import { BatchedCounter, BatchedHistogram, type CountSlot, type TimeSlot } from "./batched.js";
import { UPSTREAM_LABELS, upstreamLabelValues, type UpstreamTags } from "./consul-tags.js";
import { ENVOY_BUCKETS_MS } from "./http-stats.js";

export const PUBLIC_LISTENER_PREFIX = "public_listener";
export const UPSTREAM_PREFIX = "upstream";

/** tcp_proxy's counters for one listener. Bytes are the plaintext the downstream sent and got. */
export interface TcpProxyStats {
  readonly cxTotal: CountSlot;
  readonly rxBytes: CountSlot;
  readonly txBytes: CountSlot;
  /** Connections with no cluster to send them to. */
  readonly noRoute: CountSlot;
}

/** The HTTP connection manager's request stats for one listener; response() is the only hot call. */
export class HttpConnManagerStats {
  constructor(
    private readonly total: CountSlot,
    private readonly completed: CountSlot,
    private readonly time: TimeSlot,
    /** Indexed by status class (1..5). */
    private readonly byClass: readonly CountSlot[],
    /** The same per listener address (`envoy_listener_http_downstream_rq_xx`), public listener only. */
    private readonly listenerByClass: readonly CountSlot[] | null,
  ) {}

  /** One request finished; status 0: the downstream went away before any response. */
  response(status: number, ms: number): void {
    this.total.inc();
    if (status === 0) return;
    this.completed.inc();
    this.time.observe(ms);
    const cls = Math.floor(status / 100);
    if (cls < 1 || cls > 5) return; // node sends 100..599 only
    this.byClass[cls]!.inc();
    this.listenerByClass?.[cls]!.inc();
  }
}

const NO_CLASS: CountSlot = { inc: () => undefined };

export class FilterStats {
  private readonly tcpCx: BatchedCounter<string>;
  private readonly tcpRx: BatchedCounter<string>;
  private readonly tcpTx: BatchedCounter<string>;
  private readonly tcpNoRoute: BatchedCounter<string>;
  private readonly rqTotal: BatchedCounter<string>;
  private readonly rqCompleted: BatchedCounter<string>;
  private readonly rqXx: BatchedCounter<string>;
  private readonly rqTime: BatchedHistogram<string>;
  private readonly listenerRqXx: BatchedCounter<string>;

  constructor(registry: Registry) {
    const tcp = ["envoy_tcp_prefix", ...UPSTREAM_LABELS];
    const http = ["envoy_http_conn_manager_prefix", ...UPSTREAM_LABELS];
    this.tcpCx = new BatchedCounter({ name: "envoy_tcp_downstream_cx_total", help: "Connections handled by the listener's TCP proxy", labelNames: tcp, registry });
    this.tcpRx = new BatchedCounter({ name: "envoy_tcp_downstream_cx_rx_bytes_total", help: "Bytes received from the downstream (plaintext), counted when the connection closes", labelNames: tcp, registry });
    this.tcpTx = new BatchedCounter({ name: "envoy_tcp_downstream_cx_tx_bytes_total", help: "Bytes sent to the downstream (plaintext), counted when the connection closes", labelNames: tcp, registry });
    this.tcpNoRoute = new BatchedCounter({ name: "envoy_tcp_downstream_cx_no_route", help: "Connections closed because no cluster was found for them", labelNames: tcp, registry });
    this.rqTotal = new BatchedCounter({ name: "envoy_http_downstream_rq_total", help: "Requests received by the listener's HTTP connection manager", labelNames: http, registry });
    this.rqCompleted = new BatchedCounter({ name: "envoy_http_downstream_rq_completed", help: "Requests answered (by the upstream or by the proxy itself)", labelNames: http, registry });
    this.rqXx = new BatchedCounter({ name: "envoy_http_downstream_rq_xx", help: "Responses sent downstream, by status class", labelNames: [...http, "envoy_response_code_class"], registry });
    this.rqTime = new BatchedHistogram({ name: "envoy_http_downstream_rq_time", help: "Request start to response end, ms", labelNames: http, buckets: ENVOY_BUCKETS_MS, registry });
    this.listenerRqXx = new BatchedCounter({
      name: "envoy_listener_http_downstream_rq_xx",
      help: "Responses sent downstream by the listener, by status class",
      labelNames: ["envoy_listener_address", "envoy_http_conn_manager_prefix", "envoy_response_code_class"],
      registry,
    });
  }

  /** The public listener's (upstream null) or an upstream listener's tcp_proxy stats. */
  tcpProxy(upstream: UpstreamTags | null): TcpProxyStats {
    const v = [upstream ? UPSTREAM_PREFIX : PUBLIC_LISTENER_PREFIX, ...upstreamLabelValues(upstream)];
    // Envoy declares these at listener creation: a dashboard sees 0, not "no data", before traffic.
    return { cxTotal: this.tcpCx.labels(...v), rxBytes: this.tcpRx.labels(...v), txBytes: this.tcpTx.labels(...v), noRoute: this.tcpNoRoute.labels(...v) };
  }

  /** `listenerAddress` is Envoy's `envoy_listener_address` form (`127.0.0.1_21000`). */
  httpConnManager(upstream: UpstreamTags | null, listenerAddress: string): HttpConnManagerStats {
    const prefix = upstream ? UPSTREAM_PREFIX : PUBLIC_LISTENER_PREFIX;
    const v = [prefix, ...upstreamLabelValues(upstream)];
    const classes = ["1", "2", "3", "4", "5"];
    // Index 0 is never used: byClass[cls] for cls 1..5 without an offset on the request path.
    const byClass = [NO_CLASS, ...classes.map((c) => this.rqXx.labels(...v, c))];
    // Consul's upstream tags are anchored at the start of the stat name, so Envoy's per-listener
    // HTTP stats of an upstream listener keep the upstream's id in their name: not worth copying.
    const listenerByClass = upstream ? null : [NO_CLASS, ...classes.map((c) => this.listenerRqXx.labels(listenerAddress, prefix, c))];
    return new HttpConnManagerStats(this.rqTotal.labels(...v), this.rqCompleted.labels(...v), this.rqTime.slot(...v), byClass, listenerByClass);
  }
}
