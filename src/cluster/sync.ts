// Cluster runtimes follow a Snapshot's clusters: kept (and updated in place) while a cluster
// stays, created when one appears, closed when one leaves; pools no cluster uses any more are
// closed. Shared by everything that reaches endpoints through the concrete stage (the proxy's
// listeners and the native library).
import type { Snapshot } from "../config/snapshot.js";
import type { TlsMaterial } from "../tls/contexts.js";
import { ClusterRuntime } from "./runtime.js";
import type { PoolSet } from "./pools.js";

export function syncClusterRuntimes(runtimes: Map<string, ClusterRuntime>, pools: PoolSet, s: Pick<Snapshot, "clusters" | "upstreams">, tls: TlsMaterial): void {
  for (const [name, rt] of runtimes) {
    if (s.clusters[name]) continue;
    rt.close();
    runtimes.delete(name);
  }
  const h2 = http2Clusters(s);
  for (const c of Object.values(s.clusters)) {
    const rt = runtimes.get(c.name);
    const wantH2 = h2.has(c.name);
    if (rt && rt.http2 === wantH2) rt.update(c, tls);
    else {
      rt?.close();
      runtimes.set(c.name, new ClusterRuntime(c, tls, pools, wantH2));
    }
  }
  pools.retain(new Set([...runtimes.values()].flatMap((rt) => rt.poolKeys())));
}

/** Clusters reached from http2/grpc upstreams: their pooled connections offer h2. */
export function http2Clusters(s: Pick<Snapshot, "clusters" | "upstreams">): Set<string> {
  const out = new Set<string>();
  for (const u of s.upstreams) {
    if (u.protocol !== "http2" && u.protocol !== "grpc") continue;
    const names = [u.cluster, ...(u.routes?.routes ?? []).flatMap((r) => r.action.splits.map((x) => x.cluster))];
    for (const n of names) {
      out.add(n);
      for (const f of s.clusters[n]?.failover ?? []) out.add(f);
    }
  }
  return out;
}
