// The tags Consul's Envoy bootstrap (`consul connect envoy`, Consul 1.10 and later) adds to
// Envoy's stats, so that Consul UI's topology metrics and the Consul/Envoy Grafana dashboards
// select meshproxy's series unchanged. Consul extracts them with regular expressions run over
// each stat name (`cluster.<name>.<stat>`, `tcp.upstream.<svc>.<ns>.<part>.<dc>.<stat>`); the
// rules below are those expressions' semantics, quirks included (a non-default-partition name
// reads its service as a subset, as Consul's greedy subset group does). Everything here runs once
// per cluster or listener, never per request: callers cache the values.

/** Consul's name for the cluster of the local app (agent/xds LocalAppClusterName). */
export const LOCAL_APP_CLUSTER = "local_app";

/** Envoy + Consul's fixed tags on every stat of the sidecar (Consul's generateStatsTags). */
export interface SourceTags {
  readonly service: string;
  readonly namespace: string;
  readonly partition: string;
  readonly datacenter: string;
}

/** A non-default partition is in the SPIFFE ID (`spiffe://<td>/ap/<partition>/ns/…`), Consul's form. */
export function sourceTagsOf(id: { readonly service: string; readonly namespace: string; readonly datacenter: string; readonly spiffeId: string }): SourceTags {
  const ap = /\/ap\/([^/]+)\/ns\//.exec(id.spiffeId);
  return { service: id.service, namespace: id.namespace, partition: ap?.[1] ?? "default", datacenter: id.datacenter };
}

/** The labels every `envoy_*` series carries (Prometheus' names of Consul's fixed tags). */
export function sourceLabels(s: SourceTags): Record<string, string> {
  return {
    // Consul sets local_cluster (the pre-1.9 name) to the same service: dashboards still use it.
    local_cluster: s.service,
    consul_source_service: s.service,
    consul_source_namespace: s.namespace || "default",
    consul_source_partition: s.partition || "default",
    consul_source_datacenter: s.datacenter,
  };
}

const DESTINATION = ["custom_hash", "service_subset", "service", "namespace", "partition", "datacenter", "peer", "routing_type", "trust_domain", "target", "full_target"] as const;
// Deprecated in Consul 1.9 and still emitted by `consul connect envoy` unless -omit-deprecated-tags.
const LEGACY = ["custom_hash", "service_subset", "service", "namespace", "datacenter", "routing_type", "trust_domain", "target", "full_target"] as const;

/** Label names of every cluster series, in the order clusterLabelValues returns values. */
export const CLUSTER_LABELS: readonly string[] = ["envoy_cluster_name", ...DESTINATION.map((t) => `consul_destination_${t}`), ...LEGACY.map((t) => `consul_${t}`)];

const SEG = "[^.]+";
// `[<hash>~][<subset>.]<svc>.<ns>[.<partition>].<dc>.<routing>.<trust-domain>.consul`, one
// expression per tag as in Consul's bootstrap: each is matched on its own, so each keeps its own
// reading of an ambiguous name.
function clusterRule(inner: (g: (s: string) => string) => string, passthrough: boolean): RegExp {
  const g = (s: string) => `(${s})`;
  return new RegExp(`^cluster\\.${passthrough ? "(?:passthrough~)?" : ""}${inner(g)}\\.consul\\.`);
}
const shape = (cap: number, routing = SEG) => (g: (s: string) => string) => {
  const parts = [`(?:${cap === 0 ? g(SEG) : SEG}~)?`, `(?:${cap === 1 ? g(SEG) : SEG}\\.)?`, `${cap === 2 ? g(SEG) : SEG}\\.`, `${cap === 3 ? g(SEG) : SEG}\\.`, `(?:${cap === 4 ? g(SEG) : SEG}\\.)?`, `${cap === 5 ? g(SEG) : SEG}\\.`, `${cap === 6 ? g(routing) : routing}\\.`, `${cap === 7 ? g(SEG) : SEG}`];
  return parts.join("");
};
const target = (full: boolean) => () => `((?:${SEG}~)?(?:${SEG}\\.)?${SEG}\\.${SEG}\\.(?:${SEG}\\.)?${SEG}${full ? `\\.${SEG}\\.${SEG}` : ""})${full ? "" : `\\.${SEG}\\.${SEG}`}`;

function destinationRules(passthrough: boolean): Record<string, RegExp> {
  return {
    custom_hash: clusterRule(shape(0), passthrough),
    service_subset: clusterRule(shape(1), passthrough),
    service: clusterRule(shape(2), passthrough),
    namespace: clusterRule(shape(3), passthrough),
    partition: clusterRule(shape(4, "internal[^.]*"), passthrough),
    datacenter: clusterRule(shape(5, "internal[^.]*"), passthrough),
    peer: new RegExp(`^cluster\\.${SEG}\\.(?:${SEG}\\.)?(${SEG})\\.external\\.${SEG}\\.consul\\.`),
    routing_type: clusterRule(shape(6), passthrough),
    trust_domain: clusterRule(shape(7), passthrough),
    target: clusterRule(target(false), passthrough),
    full_target: clusterRule(target(true), passthrough),
  };
}
const CURRENT = destinationRules(true);
const DEPRECATED = destinationRules(false);

function extract(re: RegExp | undefined, stat: string): string {
  return re?.exec(stat)?.[1] ?? "";
}

/**
 * The label values of a cluster's series, in CLUSTER_LABELS order. `envoy_cluster_name` stays
 * the whole cluster name (meshproxy's documented label; Envoy's own extractor keeps only its
 * first dot-segment). A tag Consul's expressions do not find is "": Prometheus stores a label
 * with an empty value as absent, exactly as Envoy leaves the tag out.
 */
export function clusterLabelValues(name: string): string[] {
  const stat = `cluster.${name}.x`;
  return [name, ...DESTINATION.map((t) => extract(CURRENT[t], stat)), ...LEGACY.map((t) => extract(DEPRECATED[t], stat))];
}

/** Label names of listener-filter series (tcp_proxy, http_connection_manager) of upstream listeners. */
export const UPSTREAM_LABELS: readonly string[] = ["consul_upstream_service", "consul_upstream_namespace", "consul_upstream_partition", "consul_upstream_datacenter"];

export interface UpstreamTags {
  readonly service: string;
  readonly namespace: string;
  readonly partition: string;
  readonly datacenter: string;
}

/** Consul's `upstream.<svc>.<ns>.<partition>.<dc>` stat prefix, read back into its four tags. */
export function upstreamLabelValues(u: UpstreamTags | null): string[] {
  return u ? [u.service, u.namespace || "default", u.partition || "default", u.datacenter] : ["", "", "", ""];
}
