// The concrete stage against real sockets: a cluster runtime over real endpoints (a TLS server
// with a leaf of the dev CA, and a port that refuses), opening streams as the L4 listener and
// upgrades do. Checks the books the stage keeps: per-host active counts across Snapshots, the
// MaxConnections breaker, outlier detection fed with connect results, failover.
import t from "tap";
import { once } from "node:events";
import { createServer as createTlsServer, type TLSSocket } from "node:tls";
import { createServer, type AddressInfo, type Socket } from "node:net";
import { meshTls, spiffe, TRUST_DOMAIN } from "../helpers/mesh-tls.js";
import { SessionCache } from "../../src/tls/origin.js";
import { PoolSet } from "../../src/cluster/pools.js";
import { ClusterRuntime } from "../../src/cluster/runtime.js";
import { compileCluster, type CompiledCluster } from "../../src/compile/cluster.js";
import { DEFAULT_LIMITS, DEFAULT_OUTLIER_DETECTION } from "../../src/config/http.js";
import type { Cluster, Endpoint } from "../../src/config/snapshot.js";
import { openStream, type OpenStream, type StreamFailure } from "../../src/outbound/concrete.js";
import type { Teardown } from "../helpers/mesh.js";
import { clustersJson, clustersText } from "../../src/admin/clusters.js";

const TD = TRUST_DOMAIN;
const { tls, leaf } = await meshTls();
const dbLeaf = await leaf("db");

/** A db instance: TLS with db's leaf; counts the TCP connections it accepted and keeps them open. */
async function dbInstance(t: Teardown): Promise<{ port: number; accepted: () => number }> {
  let n = 0;
  const open = new Set<TLSSocket>();
  const server = createTlsServer({ cert: dbLeaf.certPem, key: dbLeaf.keyPem }, (s) => {
    open.add(s);
    s.on("error", () => s.destroy());
    s.once("close", () => open.delete(s));
  });
  server.on("connection", () => n++);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => {
    for (const s of open) s.destroy();
    server.close();
  });
  return { port: (server.address() as AddressInfo).port, accepted: () => n };
}

async function refusingPort(): Promise<number> {
  const probe = createServer();
  probe.listen(0, "127.0.0.1");
  await once(probe, "listening");
  const port = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  return port;
}

function endpoint(port: number, meta: Record<string, string> = {}): Endpoint {
  return { host: "127.0.0.1", port, healthy: true, id: `db-${port}`, meta };
}

function cluster(name: string, endpoints: Endpoint[], over: Partial<Cluster> = {}): Cluster {
  return {
    name,
    service: "db",
    namespace: "default",
    datacenter: "dc1",
    sni: `db.default.dc1.internal.${TD}`,
    expectedSpiffeId: spiffe("db"),
    endpoints,
    limits: DEFAULT_LIMITS,
    outlierDetection: { ...DEFAULT_OUTLIER_DETECTION, maxEjectionPercent: 100 },
    connectTimeoutMs: 2000,
    ...over,
  };
}

/** The cluster as a Snapshot's compilation hands it to the runtime (TCP: no h2). */
function compiled(name: string, endpoints: Endpoint[], over: Partial<Cluster> = {}): CompiledCluster {
  return compileCluster(cluster(name, endpoints, over), false);
}

function open(runtimes: ReadonlyMap<string, ClusterRuntime>, primary: string): Promise<OpenStream | StreamFailure> {
  return new Promise((resolve) =>
    openStream(
      { primary: runtimes.get(primary)!, clusters: runtimes, tls, sessions: new SessionCache(), connectTimeoutMs: 2000, wanted: () => true, attemptFailed: () => {} },
      resolve,
    ),
  );
}

function stream(t: Teardown, r: OpenStream | StreamFailure): OpenStream {
  if ("flag" in r) throw new Error(`expected a stream, got ${r.flag}: ${r.detail}`);
  t.teardown(() => r.socket.destroy());
  return r;
}

/** Destroys the stream's socket and waits for its "close" (socket.closed turns true before that event). */
async function closed(s: { socket: Socket }): Promise<void> {
  const gone = once(s.socket, "close");
  s.socket.destroy();
  await gone;
}

/** Waits until `probe` holds: the server side of a TLS connection may accept after the client is done. */
async function until(probe: () => boolean, what: string): Promise<void> {
  const end = Date.now() + 5000;
  while (!probe()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const pools = new PoolSet(new SessionCache());
t.teardown(() => pools.closeAll());

t.test("a host's active count survives a Snapshot: streams open across an update end at 0", async (t) => {
  const a = await dbInstance(t);
  const b = await dbInstance(t);
  const rt = new ClusterRuntime(compiled("db", [endpoint(a.port), endpoint(b.port)]), tls, pools);
  t.teardown(() => rt.close());
  const runtimes = new Map([["db", rt]]);
  const streams = [stream(t, await open(runtimes, "db")), stream(t, await open(runtimes, "db")), stream(t, await open(runtimes, "db"))];
  t.equal(rt.hostsSnapshot().hosts.reduce((n, h) => n + h.activeRequests, 0), 3, "three streams in flight");
  // A Snapshot that changes something about every host (its metadata) while they are in flight.
  rt.update(compiled("db", [endpoint(a.port, { version: "2" }), endpoint(b.port, { version: "2" })]), tls);
  t.equal(rt.hostsSnapshot().hosts.reduce((n, h) => n + h.activeRequests, 0), 3, "still three after the update");
  for (const s of streams) await closed(s);
  t.same(
    rt.hostsSnapshot().hosts.map((h) => h.activeRequests),
    [0, 0],
    "every host back at 0 once they finished (a copied count would stay inflated for good)",
  );
  t.same(rt.hostsSnapshot().hosts.map((h) => h.meta["version"]), ["2", "2"], "and the hosts carry the new Snapshot's view");
  t.equal(rt.breaker.state.connections, 0, "every connection slot released");
});

t.test("MaxConnections: the next stream is refused (UO) while the cluster is at its limit", async (t) => {
  const a = await dbInstance(t);
  const rt = new ClusterRuntime(compiled("db", [endpoint(a.port)], { limits: { ...DEFAULT_LIMITS, maxConnections: 2 } }), tls, pools);
  t.teardown(() => rt.close());
  const runtimes = new Map([["db", rt]]);
  const first = stream(t, await open(runtimes, "db"));
  stream(t, await open(runtimes, "db"));
  const third = await open(runtimes, "db");
  t.equal("flag" in third ? third.flag : "open", "UO", "the third stream overflows");
  t.equal(rt.breaker.state.cxOverflow, 1, "counted as a connection overflow");
  await until(() => a.accepted() === 2, "the two streams to be accepted");
  await new Promise((r) => setTimeout(r, 50));
  t.equal(a.accepted(), 2, "without dialling the host");
  await closed(first);
  const fourth = await open(runtimes, "db");
  t.notOk("flag" in fourth, "a closed stream makes room for the next");
  if (!("flag" in fourth)) fourth.socket.destroy();
});

t.test("connect failures: tried on another host, then passed over while backing off; five in a row eject it", async (t) => {
  const live = await dbInstance(t);
  const dead = await refusingPort();
  const rt = new ClusterRuntime(compiled("db", [endpoint(dead), endpoint(live.port)]), tls, pools);
  t.teardown(() => rt.close());
  const runtimes = new Map([["db", rt]]);
  const deadStatus = () => rt.hostsSnapshot().hosts.find((h) => h.port === dead)!;
  let refused = 0;
  const openCounting = (): Promise<OpenStream | StreamFailure> =>
    new Promise((resolve) =>
      openStream(
        { primary: rt, clusters: runtimes, tls, sessions: new SessionCache(), connectTimeoutMs: 2000, wanted: () => true, attemptFailed: () => refused++ },
        resolve,
      ),
    );
  // Until the first refusal, round robin sends every other stream to the dead host.
  while (refused === 0) {
    const r = await openCounting();
    t.notOk("flag" in r, "the stream opens (on the live host)", { diagnostic: false });
    if (!("flag" in r)) await closed(r);
  }
  t.equal(refused, 1, "one refusal");
  // While the dead host backs off, no stream tries it: each goes straight to the live host. The
  // host is picked when openStream is called, so eight opened at once are all picked within the
  // back-off. On a machine slow enough that the 100 ms were over before we got here, the next
  // refusal (200 ms, then 400 ms) gives a longer one.
  while (deadStatus().connectBackoffMs === 0 && !deadStatus().ejected) {
    const before = refused;
    while (refused === before) {
      const r = await openCounting();
      if (!("flag" in r)) await closed(r);
    }
  }
  const refusedBefore = refused;
  t.ok(deadStatus().connectBackoffMs > 0, `backing off after ${refused} refusal(s)`);
  const burst = await Promise.all(Array.from({ length: 8 }, () => openCounting()));
  t.same(burst.filter((r) => "flag" in r), [], "all 8 streams opened within the back-off open");
  for (const r of burst) if (!("flag" in r)) await closed(r);
  t.equal(refused, refusedBefore, "and none of them tried the host that is backing off");

  // Each back-off over, a real stream tries the host again; outlier detection counts each refusal.
  const deadline = Date.now() + 10_000;
  while (rt.ejectedCount === 0 && Date.now() < deadline) {
    await until(() => deadStatus().connectBackoffMs === 0 || rt.ejectedCount > 0, "the back-off to end");
    const r = await openCounting();
    t.notOk("flag" in r, "the stream opens", { diagnostic: false });
    if (!("flag" in r)) await closed(r);
  }
  t.equal(rt.ejectedCount, 1, "the refusing host is ejected");
  t.equal(refused, 5, "after 5 consecutive connect failures");
  t.ok(deadStatus().ejected, "the refusing host shows as ejected");
  await until(() => rt.hostsSnapshot().hosts.reduce((n, h) => n + h.activeRequests, 0) === 0, "no count left behind by the failed attempts");
  t.pass("no count left behind by the failed attempts");
});

t.test("a host backing off takes streams again once the control plane reports it healthy after down", async (t) => {
  const live = await dbInstance(t);
  const dead = await refusingPort();
  const rt = new ClusterRuntime(compiled("db", [endpoint(dead), endpoint(live.port)]), tls, pools);
  t.teardown(() => rt.close());
  const deadHost = () => rt.hostsSnapshot().hosts.find((h) => h.port === dead)!;
  while (deadHost().connectBackoffMs === 0) {
    const r = await open(new Map([["db", rt]]), "db");
    if (!("flag" in r)) await closed(r);
  }
  t.ok(deadHost().connectBackoffMs > 0, "backing off after a refusal");
  rt.update(compiled("db", [endpoint(dead), endpoint(live.port)]), tls);
  t.ok(deadHost().connectBackoffMs > 0, "a Snapshot that says nothing new keeps the back-off");
  rt.update(compiled("db", [{ ...endpoint(dead), healthy: false }, endpoint(live.port)]), tls);
  rt.update(compiled("db", [endpoint(dead), endpoint(live.port)]), tls);
  t.equal(deadHost().connectBackoffMs, 0, "unhealthy then healthy again (a restarted instance): the back-off is over");
});

t.test("two instances at one address (restarted under a new id, the dead one's registration still listed critical): one host, healthy, in every Snapshot", async (t) => {
  const live = await dbInstance(t);
  const restarted = { ...endpoint(live.port), id: "db-new" };
  const stale = { ...endpoint(live.port), id: "db-old", healthy: false };
  const rt = new ClusterRuntime(compiled("db", [endpoint(live.port)]), tls, pools);
  t.teardown(() => rt.close());
  const runtimes = new Map([["db", rt]]);
  for (const endpoints of [
    [restarted, stale],
    [stale, restarted],
    [stale, restarted, { ...endpoint(live.port), id: "db-third", healthy: false }],
  ]) {
    rt.update(compiled("db", endpoints), tls);
    const hosts = rt.hostsSnapshot().hosts;
    t.same(hosts.map((h) => [h.port, h.healthy]), [[live.port, true]], `${endpoints.map((e) => e.id).join(", ")}: one host, healthy`);
    await closed(stream(t, await open(runtimes, "db")));
  }
  rt.update(compiled("db", [stale]), tls);
  t.same(rt.hostsSnapshot().hosts.map((h) => h.healthy), [false], "only the critical one left: unhealthy");
});

t.test("failover: a cluster with nothing available hands the stream to its failover cluster", async (t) => {
  const live = await dbInstance(t);
  const primary = new ClusterRuntime(compiled("db-primary", [{ ...endpoint(await refusingPort()), healthy: false }], { failover: ["db-backup"] }), tls, pools);
  const backup = new ClusterRuntime(compiled("db-backup", [endpoint(live.port)]), tls, pools);
  t.teardown(() => {
    primary.close();
    backup.close();
  });
  const runtimes = new Map([
    ["db-primary", primary],
    ["db-backup", backup],
  ]);
  const s = stream(t, await open(runtimes, "db-primary"));
  t.equal(s.cluster.name, "db-backup", "the stream went to the failover cluster");
  await until(() => live.accepted() === 1, "the backup host to accept the stream");
  t.pass("whose host accepted it");
  const none = await open(new Map([["db-primary", primary]]), "db-primary");
  t.equal("flag" in none ? none.flag : "open", "UH", "without a failover cluster: no healthy upstream");
});

// Consul sets neither max_retries nor a retry budget; meshproxy's default is a budget (README:
// 20 %, at least 10 at once), and in Envoy a budget overrides max_retries. /clusters shows the
// limit that applies, not only a max_retries of 3 that nothing enforces.
t.test("retries are limited by the retry budget, and /clusters says so", async (t) => {
  const rt = new ClusterRuntime(compiled("db", [endpoint(await refusingPort())]), tls, pools);
  t.teardown(() => rt.close());
  let granted = 0;
  while (granted < 100 && rt.breaker.tryAcquireRetry()) granted++;
  t.equal(granted, DEFAULT_LIMITS.minRetryConcurrency, `an idle cluster allows the budget's floor of ${DEFAULT_LIMITS.minRetryConcurrency} concurrent retries, not max_retries ${DEFAULT_LIMITS.maxRetries}`);
  t.match(
    clustersJson([rt.hostsSnapshot()]),
    { cluster_statuses: [{ circuit_breakers: { thresholds: [{ max_retries: 3, retry_budget: { budget_percent: { value: 20 }, min_retry_concurrency: 10 } }] } }] },
    "JSON: the budget next to max_retries, in Envoy's shape",
  );
  t.match(clustersText([rt.hostsSnapshot()]), /^db::default_priority::retry_budget::budget_percent::20$/m, "text: the budget percent");
  t.match(clustersText([rt.hostsSnapshot()]), /^db::default_priority::retry_budget::min_retry_concurrency::10$/m, "text: its floor");
});
