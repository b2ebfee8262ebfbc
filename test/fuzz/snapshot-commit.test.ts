// Snapshots applied to a running proxy, valid ones and ones with a single fault anywhere (often in
// the last cluster or upstream): after each, either the whole new Snapshot is visible (what
// /config_dump serves, every cluster runtime's hosts and limits, the upstream listeners) or none
// of it is, and a refusal is counted and logged with the very field the fault is in.
import t from "tap";
import { isDeepStrictEqual } from "node:util";
import fc from "fast-check";
import { fuzzParams } from "./params.js";
import type { Cluster, Snapshot, UpstreamListener } from "../../src/config/snapshot.js";
import { DEFAULT_LIMITS, NO_HEADER_MUTATION, NO_RETRIES, type LoadBalancer, type Route } from "../../src/config/http.js";
import { redactedSnapshot } from "../../src/admin/server.js";
import { cluster, startInProcess, tcpUpstream, webIdentity } from "../helpers/in-process.js";

const { identity, trust } = await webIdentity();
const NAMES = ["a", "b", "c", "d"] as const;

function snapshot(version: number, clusters: Record<string, Cluster>, upstreams: UpstreamListener[]): Snapshot {
  return { version, source: "test", identity, trust, publicListener: null, upstreams, clusters, intentions: { defaultAction: "deny", intentions: [] } };
}

function route(to: readonly string[], path: Route["match"]["path"]): Route {
  return {
    match: { ...(path ? { path } : {}), headers: [], queryParams: [], methods: [] },
    action: {
      splits: to.map((c, i) => ({ cluster: c, weight: i === 0 ? 10_000 - (to.length - 1) * 100 : 100, requestHeaders: NO_HEADER_MUTATION, responseHeaders: NO_HEADER_MUTATION })),
      timeoutMs: 15_000,
      idleTimeoutMs: 300_000,
      retry: NO_RETRIES,
      requestHeaders: NO_HEADER_MUTATION,
      responseHeaders: NO_HEADER_MUTATION,
    },
  };
}

const lb: fc.Arbitrary<LoadBalancer | undefined> = fc.option(
  fc.record({
    policy: fc.constantFrom("round_robin", "least_request", "random", "ring_hash", "maglev", "peak_ewma" as const),
    choiceCount: fc.integer({ min: 1, max: 5 }),
    ringSize: fc.integer({ min: 1, max: 4096 }).map((min) => ({ min, max: min * 2 })),
    hashPolicies: fc.constant([]),
  }),
  { nil: undefined },
);

/** A valid Snapshot: 1..4 clusters, upstreams to some of them, tcp or HTTP with routes. */
const valid = fc
  .record({
    clusters: fc.subarray([...NAMES], { minLength: 1 }),
    ports: fc.array(fc.array(fc.integer({ min: 20_000, max: 20_009 }), { maxLength: 3 }), { minLength: 4, maxLength: 4 }),
    lbs: fc.array(lb, { minLength: 4, maxLength: 4 }),
    maxRequests: fc.array(fc.option(fc.integer({ min: 0, max: 2000 }), { nil: undefined }), { minLength: 4, maxLength: 4 }),
    outlier: fc.array(fc.boolean(), { minLength: 4, maxLength: 4 }),
    upstreams: fc.array(fc.record({ protocol: fc.constantFrom("tcp", "http", "http2" as const), regex: fc.boolean() }), { maxLength: 4 }),
  })
  .map(({ clusters: names, ports, lbs, maxRequests, outlier, upstreams }) => {
    const clusters: Record<string, Cluster> = {};
    names.forEach((n, i) => {
      const l = lbs[i];
      const mr = maxRequests[i];
      clusters[n] = cluster(n, [...new Set(ports[i])], {
        ...(l ? { lb: l } : {}),
        ...(mr !== undefined ? { limits: { ...DEFAULT_LIMITS, maxRequests: mr } } : {}),
        ...(outlier[i] ? { outlierDetection: { intervalMs: 10_000, consecutive5xx: 5, enforcingConsecutive5xx: 100, consecutiveGatewayFailure: 5, enforcingConsecutiveGatewayFailure: 0, baseEjectionTimeMs: 30_000, maxEjectionTimeMs: 300_000, maxEjectionPercent: 10, panicThresholdPercent: 0 } } : {}),
        ...(i > 0 ? { failover: [names[0]!] } : {}),
      });
    });
    const ups: UpstreamListener[] = upstreams.slice(0, names.length).map((u, i) => {
      const target = names[i]!;
      if (u.protocol === "tcp") return tcpUpstream(target);
      return { ...tcpUpstream(target), protocol: u.protocol, routes: { routes: [route(names, u.regex ? { kind: "regex", value: "/v[0-9]+/.*" } : { kind: "prefix", value: "/api/" }), route([target], undefined)] } };
    });
    return { clusters, upstreams: ups };
  });

type Parts = { clusters: Record<string, Cluster>; upstreams: UpstreamListener[] };
/** One fault: where it is (the field the refusal must name) and the Snapshot with it. */
type Fault = (p: Parts) => { field: string; parts: Parts } | null;

function lastCluster(p: Parts): Cluster {
  const names = Object.keys(p.clusters);
  return p.clusters[names[names.length - 1]!]!;
}

function withCluster(p: Parts, c: Cluster): Parts {
  return { ...p, clusters: { ...p.clusters, [c.name]: c } };
}

const FAULTS: ReadonlyArray<Fault> = [
  (p) => {
    const c = lastCluster(p);
    return { field: `clusters[${c.name}].lb.policy`, parts: withCluster(p, { ...c, lb: { ...(c.lb ?? { choiceCount: 2, ringSize: { min: 1, max: 2 }, hashPolicies: [] }), policy: "fastest" as LoadBalancer["policy"] } }) };
  },
  (p) => {
    const c = lastCluster(p);
    return { field: `clusters[${c.name}].lb.choiceCount`, parts: withCluster(p, { ...c, lb: { policy: "least_request", choiceCount: 0, ringSize: { min: 1, max: 2 }, hashPolicies: [] } }) };
  },
  (p) => {
    const c = lastCluster(p);
    return { field: `clusters[${c.name}].lb.ringSize.max`, parts: withCluster(p, { ...c, lb: { policy: "ring_hash", choiceCount: 2, ringSize: { min: 1024, max: 2 ** 33 }, hashPolicies: [] } }) };
  },
  (p) => {
    const c = lastCluster(p);
    return { field: `clusters[${c.name}].limits.maxRequests`, parts: withCluster(p, { ...c, limits: { ...DEFAULT_LIMITS, maxRequests: -1 } }) };
  },
  (p) => {
    const c = lastCluster(p);
    return { field: `clusters[${c.name}].outlierDetection.intervalMs`, parts: withCluster(p, { ...c, outlierDetection: { intervalMs: 0, consecutive5xx: 5, enforcingConsecutive5xx: 100, consecutiveGatewayFailure: 5, enforcingConsecutiveGatewayFailure: 0, baseEjectionTimeMs: 30_000, maxEjectionTimeMs: 300_000, maxEjectionPercent: 10, panicThresholdPercent: 0 } }) };
  },
  (p) => {
    const c = lastCluster(p);
    return { field: `clusters[${c.name}].connectTimeoutMs`, parts: withCluster(p, { ...c, connectTimeoutMs: Number.NaN }) };
  },
  (p) => {
    const c = lastCluster(p);
    return { field: `clusters[${c.name}].failover[0]`, parts: withCluster(p, { ...c, failover: ["elsewhere"] }) };
  },
  (p) => {
    const c = lastCluster(p);
    return { field: `clusters[${c.name}].endpoints[0].port`, parts: withCluster(p, { ...c, endpoints: [{ host: "127.0.0.1", port: 0, healthy: true, id: "x", meta: {} }] }) };
  },
  (p) => {
    const u = p.upstreams[p.upstreams.length - 1];
    if (!u?.routes) return null;
    const routes = [...u.routes.routes, route(["nowhere"], { kind: "prefix", value: "/x/" })];
    return { field: `upstreams[${u.name}].routes[${routes.length - 1}].action.splits[0].cluster`, parts: { ...p, upstreams: [...p.upstreams.slice(0, -1), { ...u, routes: { routes } }] } };
  },
  (p) => {
    const u = p.upstreams[p.upstreams.length - 1];
    if (!u?.routes) return null;
    const routes = [...u.routes.routes, route([u.cluster], { kind: "regex", value: "/a(?=b)" })];
    return { field: `upstreams[${u.name}].routes[${routes.length - 1}].match.path.regex`, parts: { ...p, upstreams: [...p.upstreams.slice(0, -1), { ...u, routes: { routes } }] } };
  },
  (p) => {
    const u = p.upstreams[p.upstreams.length - 1];
    if (!u?.routes) return null;
    const bad = route([u.cluster], undefined);
    const routes = [{ ...bad, action: { ...bad.action, retry: { ...NO_RETRIES, numRetries: -1 } } }, ...u.routes.routes];
    return { field: `upstreams[${u.name}].routes[0].action.retry.numRetries`, parts: { ...p, upstreams: [...p.upstreams.slice(0, -1), { ...u, routes: { routes } }] } };
  },
  (p) => {
    const u = p.upstreams[p.upstreams.length - 1];
    if (!u) return null;
    return { field: `upstreams[${u.name}].name`, parts: { ...p, upstreams: [...p.upstreams, { ...u, bind: { host: "127.0.0.1", port: 0 } }] } };
  },
  (p) => {
    const u = p.upstreams[p.upstreams.length - 1];
    if (!u) return null;
    return { field: `upstreams[${u.name}].protocol`, parts: { ...p, upstreams: [...p.upstreams.slice(0, -1), { ...u, protocol: "http3" as UpstreamListener["protocol"] }] } };
  },
];

const delivery = fc.record({ parts: valid, fault: fc.option(fc.integer({ min: 0, max: FAULTS.length - 1 }), { nil: undefined, freq: 2 }) });

function byName(a: { name: string }, b: { name: string }): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

type Proxied = Awaited<ReturnType<typeof startInProcess>>;

/** What a Snapshot makes visible: the dump, every cluster runtime, the upstream listeners. */
function observe(p: Proxied): unknown {
  const s = p.proxy.snapshot;
  return { dump: s ? redactedSnapshot(s) : null, clusters: p.proxy.clusters(), upstreams: Object.keys(p.proxy.addresses.upstreams).sort() };
}

async function rejectedTotal(p: Proxied, field: string): Promise<number> {
  const m = await p.proxy.metrics.snapshotsRejected.get();
  return m.values.find((v) => v.labels.field === field)?.value ?? 0;
}

t.test("each Snapshot is visible whole or not at all, and a refusal names the faulty field", async (t) => {
  const first = snapshot(1, { a: cluster("a", [20_000]) }, [tcpUpstream("a")]);
  const p = await startInProcess(t, first);
  let version = 1;
  let applied = 0;
  let rejected = 0;
  await fc.assert(
    fc.asyncProperty(delivery, async ({ parts, fault }) => {
      const injected = fault === undefined ? null : FAULTS[fault]!(parts);
      const s = snapshot(++version, (injected?.parts ?? parts).clusters, (injected?.parts ?? parts).upstreams);
      const before = observe(p);
      const countedBefore = injected ? await rejectedTotal(p, injected.field) : 0;
      const outcome = await p.deliver(s);
      if (injected === null) {
        applied++;
        if (outcome !== "applied") throw new Error(`a valid Snapshot was refused: ${JSON.stringify(p.logs[p.logs.length - 1])}`);
        if (p.proxy.snapshot !== s) throw new Error("applied, but /config_dump does not show it");
        const runtimes = p.proxy.clusters();
        const want = Object.values(s.clusters).map((c) => ({ name: c.name, ports: c.endpoints.map((e) => e.port), maxRequests: (c.limits ?? DEFAULT_LIMITS).maxRequests, od: c.outlierDetection !== undefined })).sort(byName);
        const got = runtimes.map((c) => ({ name: c.name, ports: c.hosts.map((h) => h.port), maxRequests: c.limits.maxRequests, od: c.outlierDetection })).sort(byName);
        if (!isDeepStrictEqual(got, want)) throw new Error(`cluster runtimes ${JSON.stringify(got)} do not follow the Snapshot's ${JSON.stringify(want)}`);
        const listeners = Object.keys(p.proxy.addresses.upstreams).sort();
        if (!isDeepStrictEqual(listeners, s.upstreams.map((u) => u.name).sort())) throw new Error(`listeners ${listeners.join(",")} for upstreams ${s.upstreams.map((u) => u.name).join(",")}`);
        return;
      }
      rejected++;
      if (outcome !== "rejected") throw new Error(`a Snapshot with a fault at ${injected.field} was applied`);
      if (!isDeepStrictEqual(observe(p), before)) throw new Error(`part of a Snapshot refused at ${injected.field} became visible`);
      if ((await rejectedTotal(p, injected.field)) !== countedBefore + 1) throw new Error(`the refusal was not counted with field="${injected.field}"`);
      const line = p.logs.find((l) => l["version"] === s.version && l["@message"] === "snapshot rejected; keeping the last good one");
      if (line?.["field"] !== injected.field) throw new Error(`logged with field ${String(line?.["field"])}, the fault is at ${injected.field}`);
    }),
    fuzzParams(),
  );
  t.ok(applied > 0 && rejected > 0, `${applied} applied, ${rejected} refused`);
});
