// Choosing endpoints of a cluster for one new connection: healthy ones, round robin, with the
// rest of the healthy set behind the first choice so a connect failure can try another host.
import type { Cluster, Endpoint } from "../config/snapshot.js";

export class NoHealthyEndpointError extends Error {
  constructor(cluster: Cluster) {
    const total = cluster.endpoints.length;
    const unhealthy = cluster.endpoints.filter((e) => !e.healthy).length;
    const detail = total === 0 ? "none registered; is its sidecar running with -listen?" : `${unhealthy} of ${total} unhealthy`;
    super(`upstream "${cluster.name}": no healthy instances (${detail})`);
    this.name = "NoHealthyEndpointError";
  }
}

/** Per-cluster state that outlives Snapshots (the round-robin cursor). */
export class EndpointPicker {
  private cursor = 0;
  private healthy: readonly Endpoint[] = [];
  private cluster: Cluster | null = null;

  /** Called when a Snapshot is applied: filtering happens here, not per connection. */
  update(cluster: Cluster): void {
    this.cluster = cluster;
    this.healthy = cluster.endpoints.filter((e) => e.healthy);
  }

  /** Up to `max` distinct healthy endpoints, first choice first. */
  pick(max: number): readonly Endpoint[] {
    const h = this.healthy;
    if (h.length === 0) throw new NoHealthyEndpointError(this.cluster!);
    const start = this.cursor++ % h.length;
    if (this.cursor > 1e9) this.cursor = 0;
    const n = Math.min(max, h.length);
    const out: Endpoint[] = [];
    for (let i = 0; i < n; i++) out.push(h[(start + i) % h.length]!);
    return out;
  }
}
