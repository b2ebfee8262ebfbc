// The gateway's clusters as the concrete stage sees them: one ClusterRuntime per route, kept
// across route tables by cluster name, so ejections, active counts and the MaxConnections
// breaker survive a catalog change as a sidecar's do across Snapshots.
import { createSecureContext } from "node:tls";
import { ClusterRuntime, type ClusterStatus } from "../cluster/runtime.js";
import { PoolSet } from "../cluster/pools.js";
import { SessionCache } from "../tls/origin.js";
import type { TlsMaterial } from "../tls/contexts.js";
import type { CompiledCluster } from "../compile/cluster.js";
import type { ClusterSnapshotStats } from "../telemetry/cluster-gauges.js";

/**
 * A gateway never originates TLS: its streams are plain pipes, so a runtime here never builds a
 * pool and never uses this material. ClusterRuntime keys its (unused) pool targets by it.
 */
const PASSTHROUGH: TlsMaterial = { key: "passthrough", identityKey: "passthrough", options: {}, clientContext: createSecureContext() };

export class GatewayClusters {
  private readonly runtimes = new Map<string, ClusterRuntime>();
  private readonly pools = new PoolSet(new SessionCache());

  /** Every runtime by name: the concrete stage's view (a gateway cluster has no failover). */
  get all(): ReadonlyMap<string, ClusterRuntime> {
    return this.runtimes;
  }

  get(name: string): ClusterRuntime | undefined {
    return this.runtimes.get(name);
  }

  /** Follows a new table's clusters: kept ones updated in place, gone ones closed. */
  apply(clusters: readonly CompiledCluster[]): void {
    const keep = new Set<string>();
    for (const c of clusters) {
      keep.add(c.name);
      const rt = this.runtimes.get(c.name);
      if (rt) rt.update(c, PASSTHROUGH);
      else this.runtimes.set(c.name, new ClusterRuntime(c, PASSTHROUGH, this.pools));
    }
    for (const [name, rt] of this.runtimes) {
      if (keep.has(name)) continue;
      rt.close();
      this.runtimes.delete(name);
    }
  }

  /** For /clusters. */
  statuses(): ClusterStatus[] {
    return [...this.runtimes.values()].map((rt) => rt.hostsSnapshot());
  }

  /** For the scrape-time cluster gauges. */
  stats(): ClusterSnapshotStats[] {
    return [...this.runtimes.values()].map((rt) => rt.statsSnapshot());
  }

  close(): void {
    for (const rt of this.runtimes.values()) rt.close();
    this.runtimes.clear();
  }
}
