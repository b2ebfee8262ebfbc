// Cluster runtimes follow a compiled Snapshot's clusters: kept (and updated in place) while a
// cluster stays, so per-host counts and ejections survive; created when one appears or its
// pools' protocol changes; closed when one leaves; pools no cluster uses any more are closed.
// Shared by everything that reaches endpoints through the concrete stage (the proxy's
// listeners and the native library).
import type { CompiledCluster } from "../compile/cluster.js";
import type { TlsMaterial } from "../tls/contexts.js";
import { ClusterRuntime } from "./runtime.js";
import type { PoolSet } from "./pools.js";

export function syncClusterRuntimes(runtimes: Map<string, ClusterRuntime>, pools: PoolSet, clusters: ReadonlyMap<string, CompiledCluster>, tls: TlsMaterial): void {
  pools.useMaterial(tls);
  for (const [name, rt] of runtimes) {
    if (clusters.has(name)) continue;
    rt.close();
    runtimes.delete(name);
  }
  for (const cluster of clusters.values()) {
    const rt = runtimes.get(cluster.name);
    if (rt && rt.http2 === cluster.http2) rt.update(cluster, tls);
    else {
      rt?.close();
      runtimes.set(cluster.name, new ClusterRuntime(cluster, tls, pools));
    }
  }
  pools.retain(new Set([...runtimes.values()].flatMap((rt) => rt.poolKeys())));
}
