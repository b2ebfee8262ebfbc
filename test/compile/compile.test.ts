// compileSnapshot: every default filled once, from config/defaults.ts; what the data plane
// derives from a Snapshot (h2 pools, the upgrade leg, timeouts) computed here; every fault
// refused with the field it is in.
import t from "tap";
import { compileSnapshot, SnapshotError } from "../../src/compile/snapshot.js";
import { compileCluster } from "../../src/compile/cluster.js";
import { DEFAULT_LB, DEFAULT_LIMITS, DEFAULTS } from "../../src/config/defaults.js";
import { NO_HEADER_MUTATION, NO_RETRIES, type Route } from "../../src/config/http.js";
import type { Snapshot } from "../../src/config/snapshot.js";
import { cluster, tcpUpstream, webIdentity } from "../helpers/in-process.js";

const { identity, trust } = await webIdentity();

function snapshot(over: Partial<Snapshot>): Snapshot {
  return { version: 1, source: "test", identity, trust, publicListener: null, upstreams: [], clusters: {}, intentions: { defaultAction: "deny", intentions: [] }, ...over };
}

function route(splits: ReadonlyArray<[string, number]>, timeoutMs = 15_000): Route {
  return {
    match: { headers: [], queryParams: [], methods: [] },
    action: {
      splits: splits.map(([c, weight]) => ({ cluster: c, weight, requestHeaders: NO_HEADER_MUTATION, responseHeaders: NO_HEADER_MUTATION })),
      timeoutMs,
      idleTimeoutMs: 300_000,
      retry: NO_RETRIES,
      requestHeaders: NO_HEADER_MUTATION,
      responseHeaders: NO_HEADER_MUTATION,
    },
  };
}

t.test("a cluster without settings gets Envoy's and Consul's defaults, from the one table", async (t) => {
  const c = compileCluster(cluster("db", [1]), false);
  t.equal(c.lb, DEFAULT_LB, "round robin");
  t.equal(c.limits, DEFAULT_LIMITS, "Envoy's circuit breakers");
  t.equal(c.connectTimeoutMs, DEFAULTS.upstreamConnectTimeoutMs, "5 s connect timeout");
  t.equal(c.outlierDetection, null, "no outlier detection unless asked for");
  t.same(c.failover, [], "no failover");
});

t.test("h2 pools for every cluster an http2/grpc upstream can reach: its splits and their failover", async (t) => {
  const c = compileSnapshot(
    snapshot({
      upstreams: [{ ...tcpUpstream("api"), protocol: "grpc", routes: { routes: [route([["api", 9000], ["api-v2", 1000]])] } }, tcpUpstream("db")],
      clusters: { api: cluster("api", [1]), "api-v2": cluster("api-v2", [2], { failover: ["api-backup"] }), "api-backup": cluster("api-backup", [3]), db: cluster("db", [4]) },
    }),
  );
  t.same(
    [...c.clusters.values()].map((x) => [x.name, x.http2]),
    [["api", true], ["api-v2", true], ["api-backup", true], ["db", false]],
  );
  t.ok(c.speaksHttp, "undici is needed");
});

t.test("an upgrade takes the heaviest leg (the first of equals) and waits 15 s for its 101 when the route has no timeout", async (t) => {
  const r1 = route([["a", 2500], ["b", 5000], ["c", 2500]], 0);
  const r2 = route([["a", 5000], ["b", 5000]], 3000);
  const c = compileSnapshot(
    snapshot({
      upstreams: [{ ...tcpUpstream("a"), protocol: "http", routes: { routes: [r1, r2] } }],
      clusters: { a: cluster("a", [1]), b: cluster("b", [2]), c: cluster("c", [3]) },
    }),
  );
  const table = c.upstreams[0]!.routes!;
  t.equal(table.routes[0]?.upgradeLeg.cluster, "b");
  t.equal(table.routes[0]?.upgradeResponseTimeoutMs, DEFAULTS.upgradeResponseTimeoutMs);
  t.equal(table.routes[1]?.upgradeLeg.cluster, "a");
  t.equal(table.routes[1]?.upgradeResponseTimeoutMs, 3000);
});

t.test("an HTTP public listener without a request timeout gets Envoy's 15 s", async (t) => {
  const c = compileSnapshot(
    snapshot({
      publicListener: { bind: { host: "127.0.0.1", port: 0 }, localApp: { host: "127.0.0.1", port: 8080 }, protocol: "http", handshakeTimeoutMs: 10_000, localConnectTimeoutMs: 1_000, idleTimeoutMs: 60_000 },
    }),
  );
  t.equal(c.inbound?.http?.requestTimeoutMs, 15_000);
  t.not(c.inbound?.l7, null, "L7 intentions compiled for an HTTP service");
});

t.test("each fault is refused with its field", async (t) => {
  const ok = { a: cluster("a", [1]) };
  const cases: Array<[string, Partial<Snapshot>, string, RegExp]> = [
    ["unknown policy", { clusters: { a: cluster("a", [1], { lb: { ...DEFAULT_LB, policy: "fastest" as "random" } }) } }, "clusters[a].lb.policy", /not a load-balancing policy/],
    ["a ring past Envoy's 8M", { clusters: { a: cluster("a", [1], { lb: { ...DEFAULT_LB, policy: "ring_hash", ringSize: { min: 1024, max: 8_388_609 } } }) } }, "clusters[a].lb.ringSize.max", /8388608/],
    ["hash policy without a name", { clusters: { a: cluster("a", [1], { lb: { ...DEFAULT_LB, policy: "maglev", hashPolicies: [{ field: "header", name: "", terminal: false }] } }) } }, "clusters[a].lb.hashPolicies[0].name", /needs the header's name/],
    ["fractional limit", { clusters: { a: cluster("a", [1], { limits: { ...DEFAULT_LIMITS, maxPendingRequests: 1.5 } }) } }, "clusters[a].limits.maxPendingRequests", /integer >= 0/],
    ["retry budget over 100%", { clusters: { a: cluster("a", [1], { limits: { ...DEFAULT_LIMITS, retryBudgetPercent: 101 } }) } }, "clusters[a].limits.retryBudgetPercent", /percentage/],
    ["a connect timeout past node's timers", { clusters: { a: cluster("a", [1], { connectTimeoutMs: 2 ** 31 }) } }, "clusters[a].connectTimeoutMs", /longer than a timer can wait/],
    ["failover to itself", { clusters: { a: cluster("a", [1], { failover: ["a"] }) } }, "clusters[a].failover[0]", /itself/],
    ["split weights of 0", { clusters: ok, upstreams: [{ ...tcpUpstream("a"), protocol: "http", routes: { routes: [route([["a", 0]])] } }] }, "upstreams[a].routes[0].action.splits", /add up to 0/],
    ["a route without a cluster", { clusters: ok, upstreams: [{ ...tcpUpstream("a"), protocol: "http", routes: { routes: [route([])] } }] }, "upstreams[a].routes[0].action.splits", /at least one cluster/],
    ["a negative route timeout", { clusters: ok, upstreams: [{ ...tcpUpstream("a"), protocol: "http", routes: { routes: [route([["a", 10_000]], -1)] } }] }, "upstreams[a].routes[0].action.timeoutMs", /0 \(none\) or a positive/],
    ["an unnamed upstream", { clusters: ok, upstreams: [tcpUpstream("")] }, "upstreams[0].name", /non-empty/],
    ["an upstream to an unknown cluster", { clusters: ok, upstreams: [{ ...tcpUpstream("a"), cluster: "b" }] }, "upstreams[a].cluster", /not a known cluster/],
  ];
  for (const [name, over, field, reason] of cases) {
    const err = (() => {
      try {
        compileSnapshot(snapshot(over));
        return null;
      } catch (e) {
        return e;
      }
    })();
    t.ok(err instanceof SnapshotError, `${name}: a SnapshotError`);
    if (err instanceof SnapshotError) {
      t.equal(err.field, field, `${name}: ${field}`);
      t.match(err.reason, reason, `${name}: ${err.reason}`);
    }
  }
});
