// /clusters under -concurrency N: one view of every worker's clusters that hides no worker's state.
import t from "tap";
import { mergeClusterStatus } from "../../src/workers/clusters.js";
import type { ClusterStatus, HostStatus } from "../../src/cluster/runtime.js";

function host(id: string, over: Partial<HostStatus> = {}): HostStatus {
  return { id, host: "127.0.0.1", port: Number(id), healthy: true, ejected: false, ejectionTimeMs: 0, connectBackoffMs: 0, activeRequests: 0, meta: {}, ...over };
}

function cluster(name: string, hosts: HostStatus[], over: Partial<ClusterStatus> = {}): ClusterStatus {
  return {
    name,
    service: name,
    sni: `${name}.sni`,
    outlierDetection: true,
    panic: false,
    limits: { maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024, maxRetries: 3, retryBudget: null },
    activeRequests: hosts.reduce((n, h) => n + h.activeRequests, 0),
    hosts,
    ...over,
  };
}

t.test("requests summed, an ejection or panic in any worker shows, order kept", async (t) => {
  const w0 = [cluster("db", [host("1", { activeRequests: 2 }), host("2", { activeRequests: 1 })]), cluster("api", [host("3")])];
  const w1 = [cluster("db", [host("1", { activeRequests: 3, ejected: true, ejectionTimeMs: 30_000 }), host("2", { healthy: false })], { panic: true }), cluster("cache", [host("4")])];
  const merged = mergeClusterStatus([w0, w1]);
  t.same(merged.map((c) => c.name), ["db", "api", "cache"], "the first worker's order, then clusters only a later worker has");
  const db = merged[0]!;
  t.equal(db.activeRequests, 6, "cluster requests in flight summed over workers");
  t.equal(db.panic, true, "in panic when any worker is");
  const [h1, h2] = db.hosts;
  t.equal(h1!.activeRequests, 5, "host requests summed");
  t.equal(h1!.ejected, true, "ejected by one worker shows as ejected");
  t.equal(h1!.ejectionTimeMs, 30_000, "with the longest ejection");
  t.equal(h2!.healthy, false, "unhealthy in any worker's view shows unhealthy");
  t.same(mergeClusterStatus([]), [], "no worker answered: no clusters");
  t.same(mergeClusterStatus([w0]), w0, "one worker: its view unchanged");
});
