// /clusters under -concurrency N: each worker balances and runs outlier detection on its own
// (Envoy ejects for the whole process; here a worker's ejection covers the connections that worker
// holds), so the primary asks every worker and shows one view that hides no worker's state:
// requests in flight are summed, a host ejected by any worker shows as ejected (for the longest
// ejection), and a cluster any worker has in panic shows in panic.
import type { ClusterStatus, HostStatus } from "../cluster/runtime.js";

function mergeHost(a: HostStatus, b: HostStatus): HostStatus {
  return {
    ...a,
    healthy: a.healthy && b.healthy,
    ejected: a.ejected || b.ejected,
    ejectionTimeMs: Math.max(a.ejectionTimeMs, b.ejectionTimeMs),
    connectBackoffMs: Math.max(a.connectBackoffMs, b.connectBackoffMs),
    activeRequests: a.activeRequests + b.activeRequests,
  };
}

function mergeCluster(a: ClusterStatus, b: ClusterStatus): ClusterStatus {
  const hosts = new Map(a.hosts.map((h) => [h.id, h]));
  for (const h of b.hosts) {
    const seen = hosts.get(h.id);
    hosts.set(h.id, seen ? mergeHost(seen, h) : h);
  }
  return { ...a, panic: a.panic || b.panic, activeRequests: a.activeRequests + b.activeRequests, hosts: [...hosts.values()] };
}

/** One list from every worker's, in the first worker's order (a cluster only a later worker has comes after). */
export function mergeClusterStatus(perWorker: ReadonlyArray<readonly ClusterStatus[]>): ClusterStatus[] {
  const byName = new Map<string, ClusterStatus>();
  for (const list of perWorker) {
    for (const c of list) {
      const seen = byName.get(c.name);
      byName.set(c.name, seen ? mergeCluster(seen, c) : c);
    }
  }
  return [...byName.values()];
}
