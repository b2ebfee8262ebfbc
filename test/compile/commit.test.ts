// A Snapshot is compiled whole before any of it is applied: one whose last cluster or last
// upstream is bad is refused with the field named, counted and logged, and every cluster runtime
// and listener keeps exactly what the previous Snapshot gave it (nothing half applied).
import t from "tap";
import { connect } from "node:net";
import { once } from "node:events";
import type { Snapshot } from "../../src/config/snapshot.js";
import { NO_HEADER_MUTATION, NO_RETRIES, type Route } from "../../src/config/http.js";
import { cluster, startInProcess, tcpUpstream, webIdentity } from "../helpers/in-process.js";

const { identity, trust } = await webIdentity();

function snapshot(version: number, over: Partial<Snapshot>): Snapshot {
  return {
    version,
    source: "test",
    identity,
    trust,
    publicListener: null,
    upstreams: [],
    clusters: {},
    intentions: { defaultAction: "deny", intentions: [] },
    ...over,
  };
}

function route(clusterName: string, path?: string): Route {
  return {
    match: { ...(path !== undefined ? { path: { kind: "regex" as const, value: path } } : {}), headers: [], queryParams: [], methods: [] },
    action: {
      splits: [{ cluster: clusterName, weight: 10_000, requestHeaders: NO_HEADER_MUTATION, responseHeaders: NO_HEADER_MUTATION }],
      timeoutMs: 15_000,
      idleTimeoutMs: 300_000,
      retry: NO_RETRIES,
      requestHeaders: NO_HEADER_MUTATION,
      responseHeaders: NO_HEADER_MUTATION,
    },
  };
}

const v1 = snapshot(1, {
  upstreams: [tcpUpstream("a"), tcpUpstream("b")],
  clusters: { a: cluster("a", [20001]), b: cluster("b", [20002]), z: cluster("z", [20003]) },
});

async function rejectedWith(p: Awaited<ReturnType<typeof startInProcess>>, field: string): Promise<number> {
  const m = await p.proxy.metrics.snapshotsRejected.get();
  return m.values.find((v) => v.labels.field === field)?.value ?? 0;
}

t.test("the last cluster cannot be built: the Snapshot is refused whole, earlier clusters keep their hosts and limits", async (t) => {
  const p = await startInProcess(t, v1);
  const clustersBefore = p.proxy.clusters();
  const addressesBefore = structuredClone(p.proxy.addresses);
  // Every change an applied Snapshot would make visible, then a ring Envoy would refuse to build
  // (maximum_ring_size is at most 8M): building it used to throw after a and b were updated.
  const v2 = snapshot(2, {
    upstreams: [tcpUpstream("a", { idleTimeoutMs: 5_000 }), tcpUpstream("b")],
    clusters: {
      a: cluster("a", [20001, 20004], { limits: { maxConnections: 7, maxPendingRequests: 7, maxRequests: 7, maxRetries: 1, retryBudgetPercent: 0, minRetryConcurrency: 1 } }),
      b: cluster("b", [20005]),
      z: cluster("z", [20003], { lb: { policy: "ring_hash", choiceCount: 2, ringSize: { min: 2 ** 33, max: 2 ** 33 }, hashPolicies: [] } }),
    },
  });
  t.equal(await p.deliver(v2), "rejected", "refused");
  t.equal(p.proxy.snapshot, v1, "the proxy still serves the first Snapshot");
  t.same(p.proxy.clusters(), clustersBefore, "every cluster runtime is exactly as it was: same hosts, same limits");
  t.same(p.proxy.addresses, addressesBefore, "same listeners");
  const field = "clusters[z].lb.ringSize.max";
  t.equal(await rejectedWith(p, field), 1, `meshproxy_snapshots_rejected_total{field="${field}"} counts it`);
  const line = p.logs.find((l) => l["@message"] === "snapshot rejected; keeping the last good one" && l["version"] === 2);
  t.equal(line?.["field"], field, "the log line names the field");
  t.match(String(line?.["error"]), /larger than Envoy's limit of 8388608/, "and says why");

  // The same Snapshot with the ring fixed is applied whole.
  const v3 = { ...v2, version: 3, clusters: { ...v2.clusters, z: cluster("z", [20003], { lb: { policy: "ring_hash", choiceCount: 2, ringSize: { min: 1024, max: 4096 }, hashPolicies: [] } }) } };
  t.equal(await p.deliver(v3), "applied", "the fixed Snapshot is applied");
  const a = p.proxy.clusters().find((c) => c.name === "a");
  t.same(a?.hosts.map((h) => h.port), [20001, 20004], "a has its new hosts");
  t.equal(a?.limits.maxConnections, 7, "and its new limits");
});

t.test("the last upstream routes to a cluster that does not exist: refused whole, nothing of it applied", async (t) => {
  const p = await startInProcess(t, v1);
  const clustersBefore = p.proxy.clusters();
  const v2 = snapshot(2, {
    upstreams: [tcpUpstream("a"), tcpUpstream("b"), { ...tcpUpstream("c"), protocol: "http", routes: { routes: [route("c"), route("nowhere")] } }],
    clusters: { a: cluster("a", [20011]), b: cluster("b", [20002]), c: cluster("c", [20012]), z: cluster("z", [20003]) },
  });
  t.equal(await p.deliver(v2), "rejected", "refused, not served as a route answering 503 to every request");
  t.equal(p.proxy.snapshot, v1, "the proxy still serves the first Snapshot");
  t.same(p.proxy.clusters(), clustersBefore, "no cluster was added or changed");
  t.same(Object.keys(p.proxy.addresses.upstreams).sort(), ["a", "b"], "no listener was added");
  const field = "upstreams[c].routes[1].action.splits[0].cluster";
  t.equal(await rejectedWith(p, field), 1, `counted with field="${field}"`);
});

t.test("the last upstream has a route regex RE2 refuses: refused whole with the route's field", async (t) => {
  const p = await startInProcess(t, v1);
  const clustersBefore = p.proxy.clusters();
  const v2 = snapshot(2, {
    upstreams: [tcpUpstream("a"), { ...tcpUpstream("c"), protocol: "http", routes: { routes: [route("c", "/ok/.*"), route("c", "/a(?=b)")] } }],
    clusters: { a: cluster("a", [20021]), c: cluster("c", [20022]) },
  });
  t.equal(await p.deliver(v2), "rejected", "refused");
  t.same(p.proxy.clusters(), clustersBefore, "clusters untouched (z and b are still there, a has its old host)");
  const field = "upstreams[c].routes[1].match.path.regex";
  t.equal(await rejectedWith(p, field), 1, `counted with field="${field}"`);
});

// On main such a Snapshot was applied, and the first connection to the upstream threw
// "Cannot read properties of undefined (reading 'pick')" out of the accept handler: a crash.
t.test("an unknown load-balancing policy is refused, and connections go on through the last good balancer", async (t) => {
  const p = await startInProcess(t, v1);
  const fastest = { policy: "fastest" as "random", choiceCount: 2, ringSize: { min: 1, max: 2 }, hashPolicies: [] };
  const v2 = snapshot(2, { upstreams: v1.upstreams, clusters: { ...v1.clusters, a: cluster("a", [20001], { lb: fastest }) } });
  t.equal(await p.deliver(v2), "rejected", "refused");
  t.equal(await rejectedWith(p, "clusters[a].lb.policy"), 1, 'counted with field="clusters[a].lb.policy"');
  const [host, port] = p.proxy.addresses.upstreams["a"]!.split(":");
  const s = connect(Number(port), host);
  s.on("error", () => s.destroy());
  await once(s, "close");
  t.ok(p.logs.some((l) => l["@message"] === "connection failed" && String(l["error"]).includes("20001")), "the connection was tried on a's endpoint (nothing listens there) and refused cleanly");
});
