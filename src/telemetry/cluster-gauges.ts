// Per-cluster state read at scrape time (outlier ejections, membership, circuit breakers), in
// Envoy's names. Nothing on the request path touches these: prom-client calls `collect` when
// Prometheus scrapes.
import { Counter, Gauge, type Registry } from "./prom.js";
import { CLUSTER_LABELS, clusterLabelValues } from "./consul-tags.js";

export interface ClusterSnapshotStats {
  readonly name: string;
  readonly membershipTotal: number;
  readonly membershipHealthy: number;
  readonly ejectionsActive: number;
  readonly ejectionsEnforcedTotal: number;
  readonly ejectionsOverflow: number;
  readonly activeRequests: number;
  readonly rqOpen: boolean;
}

export function registerClusterGauges(registry: Registry, clusters: () => Iterable<ClusterSnapshotStats>): void {
  const c = CLUSTER_LABELS;
  // Built once per cluster name, not at every scrape.
  const byName = new Map<string, Record<string, string>>();
  const labelsOf = (name: string): Record<string, string> => {
    let l = byName.get(name);
    if (!l) {
      const v = clusterLabelValues(name);
      l = Object.fromEntries(c.map((n, i) => [n, v[i] ?? ""]));
      byName.set(name, l);
    }
    return l;
  };
  const defs: Array<[string, string, (s: ClusterSnapshotStats) => number]> = [
    ["envoy_cluster_membership_total", "Hosts in the cluster", (s) => s.membershipTotal],
    ["envoy_cluster_membership_healthy", "Hosts healthy and not ejected", (s) => s.membershipHealthy],
    ["envoy_cluster_outlier_detection_ejections_active", "Hosts ejected by outlier detection now", (s) => s.ejectionsActive],
    ["envoy_cluster_upstream_rq_active", "Requests in flight", (s) => s.activeRequests],
    ["envoy_cluster_circuit_breakers_default_rq_open", "1 while max concurrent requests is reached", (s) => (s.rqOpen ? 1 : 0)],
  ];
  // Envoy's counters: typed as counters so rate() and promtool treat them as such.
  const counters: Array<[string, string, (s: ClusterSnapshotStats) => number]> = [
    ["envoy_cluster_outlier_detection_ejections_enforced_total", "Ejections enforced since start", (s) => s.ejectionsEnforcedTotal],
    ["envoy_cluster_outlier_detection_ejections_overflow", "Ejections refused by max_ejection_percent", (s) => s.ejectionsOverflow],
  ];
  for (const [name, help, read] of counters) {
    new Counter({
      name,
      help,
      labelNames: [...c],
      registers: [registry],
      collect() {
        this.reset();
        for (const s of clusters()) this.inc(labelsOf(s.name), read(s));
      },
    });
  }
  for (const [name, help, read] of defs) {
    new Gauge({
      name,
      help,
      labelNames: [...c],
      registers: [registry],
      collect() {
        this.reset();
        for (const s of clusters()) this.set(labelsOf(s.name), read(s));
      },
    });
  }
}
