// Retries, timeouts, circuit-breaker limits and load-balancing policies end to end: real
// sidecars on the dev control plane, configured with Consul config entries through
// `meshproxy config write`. Every setting is checked by what the apps saw (attempts, hosts,
// concurrency) or by what the client got (status, response flags), so a setting that were not
// honoured would fail its test. One mesh serves the whole file:
//
//   client ─▶ web ─┬─▶ api   (1 instance; retries, timeouts, retry budget)
//                  ├─▶ solo  (1 instance, no LocalRequestTimeoutMs: circuit-breaker limits, with
//                  │          requests the app holds until the test releases them)
//                  ├─▶ lb    (3 instances; retry host selection, connect failures, LB policies)
//                  └─▶ ghost (no instance: 503 UH)
import t from "tap";
import { createServer, type AddressInfo } from "node:net";
import { once } from "node:events";
import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { startSidecar, tempDir, type Sidecar } from "../helpers/mesh.js";
import { configDump, configWrite, metric, until } from "../helpers/l7.js";
import { client, clusterOf, routeCount, scriptedApp, tally, type Reply, type ScriptedApp } from "../helpers/l7-apps.js";

const dir = await tempDir(t);
const get = client(t);

await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http", LocalRequestTimeoutMs: 1000 });
await configWrite(t, dir, { Kind: "service-defaults", Name: "lb", Protocol: "http" });
await configWrite(t, dir, { Kind: "service-defaults", Name: "ghost", Protocol: "http" });
await configWrite(t, dir, { Kind: "service-defaults", Name: "solo", Protocol: "http" });
await configWrite(t, dir, {
  Kind: "service-router",
  Name: "api",
  Routes: [
    { Match: { HTTP: { PathPrefix: "/retry2" } }, Destination: { NumRetries: 2, RetryOn: ["5xx"] } },
    { Match: { HTTP: { PathPrefix: "/retry0" } }, Destination: { NumRetries: 0, RetryOn: ["5xx"] } },
    { Match: { HTTP: { PathPrefix: "/codes" } }, Destination: { NumRetries: 2, RetryOnStatusCodes: [503] } },
    { Match: { HTTP: { PathPrefix: "/timeout" } }, Destination: { RequestTimeout: "300ms" } },
    { Match: { HTTP: { PathPrefix: "/budget" } }, Destination: { NumRetries: 1, RetryOn: ["5xx"] } },
  ],
});
await configWrite(t, dir, {
  Kind: "service-router",
  Name: "lb",
  Routes: [
    { Match: { HTTP: { PathPrefix: "/retry-hosts" } }, Destination: { NumRetries: 2, RetryOn: ["5xx"] } },
    { Match: { HTTP: { PathPrefix: "/cf" } }, Destination: { NumRetries: 2, RetryOnConnectFailure: true } },
    { Match: { HTTP: { PathPrefix: "/nocf" } }, Destination: { NumRetries: 0 } },
  ],
});

const api = await scriptedApp(t, "api");
const solo = await scriptedApp(t, "solo");
const lbApps: ScriptedApp[] = [];
for (const n of ["lb-a", "lb-b", "lb-c"]) lbApps.push(await scriptedApp(t, n));
await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${api.port}`]);
await startSidecar(t, dir, ["-service", "solo", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${solo.port}`]);
for (const a of lbApps) await startSidecar(t, dir, ["-service", "lb", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${a.port}`]);
const web: Sidecar = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0", "-upstream", "solo:0", "-upstream", "lb:0", "-upstream", "ghost:0"]);
const API = web.upstreams["api"]!;
const SOLO = web.upstreams["solo"]!;
const LB = web.upstreams["lb"]!;
await until(async () => {
  const d = await configDump(web.adminAddr);
  return clusterOf(d, "lb")?.endpoints.length === 3 && clusterOf(d, "api")?.endpoints.length === 1 && clusterOf(d, "solo")?.endpoints.length === 1 && routeCount(d, "api") === 6 && routeCount(d, "lb") === 4;
}, 15_000, "web to see api, solo, the three lb instances and both routers");

let seq = 0;
const rid = () => `r${++seq}`;
const attemptsOf = (app: ScriptedApp, id: string) => app.seen.filter((s) => s.id === id);
const allLbSeen = () => lbApps.flatMap((a) => a.seen);
/** How many requests for exactly `url` reached `app`. */
const arrived = (app: ScriptedApp, url: string) => app.seen.filter((s) => s.url === url).length;
/** web's rq_active summed over `service`'s hosts: requests on a connection or waiting for one. */
const rqActive = async (service: string): Promise<number> => {
  const res = await fetch(`http://${web.adminAddr}/clusters`);
  let sum = 0;
  for (const line of (await res.text()).split("\n")) {
    if (line.startsWith(`${service}.default.`) && /::127\.0\.0\.1:\d+::rq_active::/.test(line)) sum += Number(line.split("::").pop());
  }
  return sum;
};
/** Requests whose replies are collected as they come, so a test can wait on some while the app holds others. */
const track = (ps: Array<Promise<Reply>>) => {
  const settled: Reply[] = [];
  return { settled, all: Promise.all(ps.map((p) => p.then((r) => (settled.push(r), r)))) };
};
/** Answers whatever `apps` hold, again as held requests reach them, until all `n` requests are answered. */
const drain = async (apps: ScriptedApp[], settled: readonly Reply[], n: number): Promise<void> => {
  await until(() => {
    for (const a of apps) a.release();
    return settled.length === n;
  }, 15_000, `all ${n} requests to be answered`);
};

t.test("retries: NumRetries, RetryOn, RetryOnStatusCodes, URX and backoff", async (t) => {
  let id = rid();
  let r = await get(API, "/retry2?status=500", { headers: { "x-req-id": id } });
  t.equal(r.status, 500, "NumRetries 2 on an always-500 app: the client gets the app's 500");
  t.equal(r.flags, "URX", "flagged URX: the retries were used up");
  t.same(attemptsOf(api, id).map((s) => s.attempt), [1, 2, 3], "the app saw exactly 3 attempts, x-envoy-attempt-count 1, 2, 3");

  id = rid();
  r = await get(API, "/retry0?status=500", { headers: { "x-req-id": id } });
  t.equal(r.status, 500, "NumRetries 0: the 500 comes straight back");
  t.equal(r.flags, "", "with no flag (nothing was retried)");
  t.equal(attemptsOf(api, id).length, 1, "the app saw one attempt");

  id = rid();
  r = await get(API, "/codes?status=503", { headers: { "x-req-id": id } });
  t.equal(r.status, 503, "RetryOnStatusCodes [503]: a 503 is retried…");
  t.equal(attemptsOf(api, id).length, 3, "…twice (3 attempts)");
  t.equal(r.flags, "URX", "and flagged URX");
  id = rid();
  r = await get(API, "/codes?status=500", { headers: { "x-req-id": id } });
  t.equal(r.status, 500, "a 500 is not in RetryOnStatusCodes…");
  t.equal(attemptsOf(api, id).length, 1, "…so it is not retried");

  id = rid();
  r = await get(API, "/retry2?status=200", { headers: { "x-req-id": id } });
  t.equal(r.status, 200, "a success is not retried");
  t.equal(attemptsOf(api, id).length, 1, "one attempt");

  // Backoff is fully jittered ([0, 25) ms before the first retry, [0, 75) ms before the second),
  // so single gaps prove nothing; the mean over 20 requests does. Without backoff the gaps are
  // the ~1–3 ms a retry takes through two sidecars.
  const gaps1: number[] = [];
  const gaps2: number[] = [];
  for (let i = 0; i < 20; i++) {
    id = rid();
    await get(API, "/retry2?status=500", { headers: { "x-req-id": id } });
    const at = attemptsOf(api, id).map((s) => s.at);
    gaps1.push(at[1]! - at[0]!);
    gaps2.push(at[2]! - at[1]!);
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  t.ok(mean(gaps1) >= 4, `mean gap before the first retry ${mean(gaps1).toFixed(1)} ms (backoff 0–25 ms, mean 12.5)`);
  t.ok(mean(gaps2) >= 12, `mean gap before the second retry ${mean(gaps2).toFixed(1)} ms (backoff 0–75 ms, mean 37.5)`);
  t.ok(Math.max(...gaps1, ...gaps2) < 1000, `no gap near a second (max ${Math.max(...gaps1, ...gaps2).toFixed(0)} ms; the cap is 250 ms)`);
});

t.test("a retry goes to a host not tried yet", async (t) => {
  for (let i = 0; i < 6; i++) {
    const id = rid();
    const r = await get(LB, "/retry-hosts?status=500", { headers: { "x-req-id": id } });
    t.equal(r.status, 500, `request ${i + 1}: 500 after the retries`);
    const attempts = allLbSeen()
      .filter((s) => s.id === id)
      .sort((a, b) => a.attempt - b.attempt);
    t.same(attempts.map((s) => s.attempt), [1, 2, 3], `request ${i + 1}: attempts 1, 2, 3`);
    t.equal(new Set(attempts.map((s) => s.app)).size, 3, `request ${i + 1}: on three different instances (${attempts.map((s) => s.app).join(", ")})`);
  }
});

t.test("connect failures: RetryOnConnectFailure retries on another host; without a retry policy the client sees UF", async (t) => {
  // An instance whose address refuses connections: registered (by a live pid, so it stays
  // healthy in the catalog) on a port nobody listens on.
  const probe = createServer();
  probe.listen(0, "127.0.0.1");
  await once(probe, "listening");
  const deadPort = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const file = join(dir, "catalog", "lb-dead.json");
  await writeFile(file, JSON.stringify({ id: "lb-dead", service: "lb", address: "127.0.0.1", port: deadPort, protocol: "http", pid: process.pid, meta: {} }));
  t.teardown(() => rm(file, { force: true }));
  await until(async () => clusterOf(await configDump(web.adminAddr), "lb")?.endpoints.length === 4, 10_000, "web to see the dead instance");
  const deadBackoffMs = async (): Promise<number> => {
    const text = await (await fetch(`http://${web.adminAddr}/clusters`)).text();
    const line = text.split("\n").find((l) => l.startsWith("lb.default.") && l.includes(`::127.0.0.1:${deadPort}::connect_backoff_ms::`));
    if (line === undefined) throw new Error(`/clusters lists no connect_backoff_ms for 127.0.0.1:${deadPort}`);
    return Number(line.split("::").pop());
  };
  const before = await metric(web.adminAddr, "envoy_cluster_upstream_rq_retry");
  const connectFailBefore = await metric(web.adminAddr, "envoy_cluster_upstream_cx_connect_fail");

  const cf: Reply[] = [];
  for (let i = 0; i < 12; i++) cf.push(await get(LB, "/cf"));
  t.same(tally(cf, (r) => String(r.status)), { "200": 12 }, "RetryOnConnectFailure: all 12 requests succeed although round robin sends some of them to the dead instance first");
  const retried = (await metric(web.adminAddr, "envoy_cluster_upstream_rq_retry")) - before;
  t.ok(retried >= 1, `by retrying them (envoy_cluster_upstream_rq_retry went up by ${retried})`);

  // Round robin would send 10 of 40 to the dead instance. After its first refusal it is passed
  // over while it backs off (100 ms, doubling), so only a request that comes when a back-off is
  // over tries it: at most one per doubling.
  await until(async () => (await deadBackoffMs()) === 0, 5_000, "the dead instance's back-off to end");
  const nocf: Reply[] = [];
  const started = performance.now();
  for (let i = 0; i < 40; i++) nocf.push(await get(LB, "/nocf"));
  const took = performance.now() - started;
  const failed = nocf.filter((r) => r.status === 503);
  // Back-offs of 100 ms doubling, each up to 10 % shorter by jitter.
  const doublings = Math.ceil(Math.log2(took / 90 + 1)) + 1;
  t.ok(failed.length >= 1, `NumRetries 0 and no RetryOn: a request sent to the dead instance fails (${failed.length})`);
  t.ok(failed.length <= doublings && failed.length < 10, `but only ${failed.length} of 40 in ${took.toFixed(0)} ms (at most ${doublings} back-offs ended; round robin alone would fail 10)`);
  t.same([...new Set(failed.map((r) => r.flags))], ["UF"], "with 503 UF");
  // Each attempt on the dead instance (one per retry above, and the ones not retried) is a
  // connection that could not be made, counted as the L4 path counts one: what a dashboard of a
  // flapping peer looks at.
  const connectFailed = (await metric(web.adminAddr, "envoy_cluster_upstream_cx_connect_fail")) - connectFailBefore;
  t.equal(connectFailed, retried + failed.length, `envoy_cluster_upstream_cx_connect_fail counts every pooled connection refused (${connectFailed})`);

  await rm(file, { force: true });
  await until(async () => clusterOf(await configDump(web.adminAddr), "lb")?.endpoints.length === 3, 10_000, "the dead instance to leave");
});

t.test("timeouts: a route's RequestTimeout and the destination's LocalRequestTimeoutMs give 504 UT", async (t) => {
  const timeouts = await metric(web.adminAddr, "envoy_cluster_upstream_rq_timeout");
  let r = await get(API, "/timeout?delay=3000");
  t.equal(r.status, 504, "RequestTimeout 300ms with an app taking 3 s: 504");
  t.equal(r.flags, "UT", "flagged UT");
  // Which timeout fired is told by who answered, not by a clock window: api's sidecar would give
  // up at its LocalRequestTimeoutMs (1000 ms) with its own body, and web's counter would not move.
  t.match(r.body, /upstream request timeout/, "by web's route timeout (Envoy's body)…");
  t.notMatch(r.body, /local app did not answer/, "…not api's 1000 ms local timeout");
  t.equal((await metric(web.adminAddr, "envoy_cluster_upstream_rq_timeout")) - timeouts, 1, "envoy_cluster_upstream_rq_timeout went up by one");
  t.ok(r.ms >= 280, `answered after ${r.ms.toFixed(0)} ms: not before the 300 ms timeout`);
  t.ok(r.ms < 3000, `and before the app's 3 s answer (${r.ms.toFixed(0)} ms)`);
  r = await get(API, "/timeout?delay=100");
  t.equal(r.status, 200, "an answer within the route timeout passes");

  // api's service-defaults set LocalRequestTimeoutMs 1000: api's sidecar gives up on its app.
  r = await get(API, "/slow?delay=3000");
  t.equal(r.status, 504, "LocalRequestTimeoutMs 1000 with an app taking 3 s: 504 (the route's own timeout is the default 15 s)");
  t.equal(r.flags, "UT", "flagged UT");
  t.match(r.body, /local app did not answer within 1000 ms/, "by api's sidecar, which says so");
  t.ok(r.ms >= 950, `after ${r.ms.toFixed(0)} ms: not before the 1000 ms timeout`);
  t.ok(r.ms < 3000, `and before the app's 3 s answer (${r.ms.toFixed(0)} ms)`);
  t.equal((await metric(web.adminAddr, "envoy_cluster_upstream_rq_timeout")) - timeouts, 1, "web did not time out itself");
});

t.test("limits: MaxConcurrentRequests overflows with 503 UO, MaxConnections queues", async (t) => {
  const setLimits = async (limits: Record<string, number> | null, check: (l: NonNullable<ReturnType<typeof clusterOf>>["limits"]) => boolean) => {
    await configWrite(t, dir, { Kind: "service-defaults", Name: "web", Protocol: "http", UpstreamConfig: limits ? { Overrides: [{ Name: "solo", Limits: limits }] } : {} });
    await until(async () => check(clusterOf(await configDump(web.adminAddr), "solo")?.limits), 10_000, `solo's limits to become ${JSON.stringify(limits)}`);
  };

  await setLimits({ MaxConcurrentRequests: 2 }, (l) => l?.maxRequests === 2);
  const overflow = await metric(web.adminAddr, "envoy_cluster_upstream_rq_pending_overflow");
  // The app holds what reaches it until release(): the refusals have to come back while the two
  // admitted requests still hold their slots, so none of them waited for a slot to free up.
  const five = track(Array.from({ length: 5 }, () => get(SOLO, "/limit?hold")));
  let early: Reply[] | undefined;
  try {
    // Both events, in either order: a refusal comes straight back from web, before an admitted
    // request has even crossed solo's sidecar to the app.
    await until(() => five.settled.length >= 3 && arrived(solo, "/limit?hold") >= 2, 15_000, "three answers while the app holds the other two");
    early = [...five.settled];
    t.equal(arrived(solo, "/limit?hold"), 2, "MaxConcurrentRequests 2 with 5 concurrent requests: 2 reach the app (held there)");
  } finally {
    await drain([solo], five.settled, 5);
  }
  const rs = await five.all;
  const ok = rs.filter((r) => r.status === 200);
  const refused = rs.filter((r) => r.status === 503);
  t.equal(ok.length, 2, "the 2 are served once the app answers");
  t.equal(refused.length, 3, "3 are refused with 503");
  t.ok(refused.every((r) => r.flags === "UO" && r.headers["x-envoy-overloaded"] === "true"), "each refusal has flag UO and x-envoy-overloaded: true");
  t.same(early?.map((r) => r.status), [503, 503, 503], "refused at once: all three refusals came back while the two admitted requests were still held");
  t.ok(refused.every((r) => r.ms < 5000), `not after a queue's wait (slowest refusal ${Math.max(...refused.map((r) => r.ms)).toFixed(0)} ms)`);
  t.equal((await metric(web.adminAddr, "envoy_cluster_upstream_rq_pending_overflow")) - overflow, 3, "envoy_cluster_upstream_rq_pending_overflow went up by 3");
  const after = await Promise.all(Array.from({ length: 2 }, () => get(SOLO, "/limit?delay=100")));
  t.same(after.map((r) => r.status), [200, 200], "the slots are released: 2 concurrent requests pass afterwards");

  // MaxConnections 1: HTTP/1.1 requests queue for the one connection instead of failing, so
  // the app never sees two at once. The control (default limits) shows it would.
  await setLimits(null, (l) => l?.maxRequests === 1024);
  // Held by the app until all four are there (or some answer comes back without them).
  const control = track(Array.from({ length: 4 }, () => get(SOLO, "/conn-control?hold")));
  try {
    await until(() => arrived(solo, "/conn-control?hold") === 4 || control.settled.length > 0, 15_000, "the four control requests to reach the app");
  } finally {
    await drain([solo], control.settled, 4);
  }
  let par = await control.all;
  t.same(par.map((r) => r.status), [200, 200, 200, 200], "control: 4 concurrent requests with default limits pass");
  t.equal(arrived(solo, "/conn-control?hold"), 4, "control: and reach the app together (all four held there at once)");
  await setLimits({ MaxConnections: 1 }, (l) => l?.maxConnections === 1);
  solo.load.maxInflight = 0;
  const t0 = performance.now();
  par = await Promise.all(Array.from({ length: 4 }, () => get(SOLO, "/conn?delay=300")));
  t.same(par.map((r) => r.status), [200, 200, 200, 200], "MaxConnections 1: 4 concurrent requests all pass (queued, as Envoy's HTTP/1 pool does)");
  t.equal(solo.load.maxInflight, 1, "one at a time: the app never had two in flight");
  t.ok(performance.now() - t0 >= 1100, `taking about 4 × 300 ms (${(performance.now() - t0).toFixed(0)} ms)`);
  await setLimits(null, (l) => l?.maxConnections === 1024);
});

t.test("limits: MaxPendingRequests refuses requests queued beyond it", async (t) => {
  await configWrite(t, dir, { Kind: "service-defaults", Name: "web", Protocol: "http", UpstreamConfig: { Overrides: [{ Name: "solo", Limits: { MaxConnections: 1, MaxPendingRequests: 1 } }] } });
  await until(async () => clusterOf(await configDump(web.adminAddr), "solo")?.limits?.maxConnections === 1, 10_000, "the limits to apply");
  // The app holds the request on the connection until release(), so the one pending stays pending
  // while the others arrive, however slowly a loaded machine sends them.
  const four = track(Array.from({ length: 4 }, () => get(SOLO, "/pending?hold")));
  try {
    await until(() => four.settled.length >= 2 && arrived(solo, "/pending?hold") >= 1, 15_000, "two answers while the app holds the request on the connection");
    t.equal(arrived(solo, "/pending?hold"), 1, "one request on the one connection (held by the app)");
  } finally {
    await drain([solo], four.settled, 4);
  }
  const rs = await four.all;
  // Envoy: one request on the connection, one pending, two refused.
  t.equal(rs.filter((r) => r.status === 503 && r.flags === "UO").length, 2, `two of four concurrent requests overflow the pending queue (${rs.map((r) => `${r.status} ${r.flags}`).join(", ")})`);
  t.equal(rs.filter((r) => r.status === 200).length, 2, "the one on the connection and the one pending are served");
  await configWrite(t, dir, { Kind: "service-defaults", Name: "web", Protocol: "http" });
  await until(async () => clusterOf(await configDump(web.adminAddr), "solo")?.limits?.maxConnections === 1024, 10_000, "the limits to go back");
});

// Envoy's max_pending_requests: the cluster's requests waiting for a connection, whichever host
// they wait on, and a request stops being pending once a connection takes it.
t.test("limits: MaxPendingRequests counts requests waiting for a connection, until one is assigned", async (t) => {
  await configWrite(t, dir, {
    Kind: "service-defaults",
    Name: "web",
    Protocol: "http",
    UpstreamConfig: { Overrides: [{ Name: "solo", Limits: { MaxConnections: 1, MaxPendingRequests: 1 } }, { Name: "lb", Limits: { MaxConnections: 1, MaxPendingRequests: 1 } }] },
  });
  await until(async () => {
    const d = await configDump(web.adminAddr);
    return clusterOf(d, "solo")?.limits?.maxConnections === 1 && clusterOf(d, "lb")?.limits?.maxConnections === 1;
  }, 10_000, "the limits to apply");
  // One request per lb instance at once (round robin): each has its instance's one connection,
  // so none waits, whatever the cluster-wide count of requests.
  // Each instance holds its request until all three are held at once.
  const spreadReq = track(Array.from({ length: 3 }, () => get(LB, "/spread?hold")));
  try {
    await until(() => lbApps.every((x) => arrived(x, "/spread?hold") === 1) || spreadReq.settled.length > 0, 15_000, "each lb instance to hold one request");
  } finally {
    await drain(lbApps, spreadReq.settled, 3);
  }
  const spread = await spreadReq.all;
  t.same(spread.map((r) => r.status), [200, 200, 200], "three concurrent requests on three instances with a free connection each: none pending, none refused");
  t.same(lbApps.map((x) => arrived(x, "/spread?hold")), [1, 1, 1], "all three were held at once, one on each instance");

  // solo has one instance and one connection. A holds it, B waits (pending) until A is done and
  // then runs; C arrives while B runs and may wait in the slot B gave back. Each step waits on
  // what web reports (rq_active counts a request on the connection or waiting for one) and on
  // what reached the app, which holds every request until release().
  const settled: Reply[] = [];
  const sent: Array<Promise<Reply>> = [];
  const send = (path: string) => sent.push(get(SOLO, path).then((r) => (settled.push(r), r)));
  try {
    send("/pa?hold");
    await until(() => arrived(solo, "/pa?hold") === 1, 15_000, "A to reach the app");
    send("/pb?hold");
    await until(async () => (await rqActive("solo")) === 2 || settled.length > 0, 15_000, "B to wait for the connection A holds");
    t.same(settled, [], "B waits for the connection (pending), not refused");
    solo.release();
    await until(() => arrived(solo, "/pb?hold") === 1 || settled.length > 1, 15_000, "B to get the connection once A is answered");
    send("/pc?hold");
    await until(async () => (await rqActive("solo")) === 2 || settled.length > 1, 15_000, "C to wait for the connection B runs on");
  } finally {
    await drain([solo], settled, sent.length);
  }
  t.equal(sent.length, 3, "A, B and C were sent");
  const [ra, rb, rc] = await Promise.all(sent);
  t.same([ra?.status, rb?.status], [200, 200], "A runs, B waits for the connection and runs");
  if (rc === undefined) return;
  t.equal(rc.status, 200, "C, sent while B runs, waits in the pending slot B released when it got the connection");
  t.equal(rc.flags, "", "and is not flagged UO");

  await configWrite(t, dir, { Kind: "service-defaults", Name: "web", Protocol: "http" });
  await until(async () => {
    const d = await configDump(web.adminAddr);
    return clusterOf(d, "solo")?.limits?.maxConnections === 1024 && clusterOf(d, "lb")?.limits?.maxConnections === 1024;
  }, 10_000, "the limits to go back");
});

// A Snapshot that changes the cluster while requests are in flight: the hosts the requests hold
// must be the ones /clusters reads, or their counts stay inflated for good (least_request and
// peak_ewma then steer away from a host that is idle).
t.test("requests in flight across a Snapshot update: rq_active returns to 0 once they finish", async (t) => {
  // lb: no LocalRequestTimeoutMs on its side, so the requests can be held across the config write
  // (a 5 s delay raced it: a loaded machine's write and apply can take longer).
  const inFlight = Promise.all(Array.from({ length: 4 }, () => get(LB, "/inflight?hold")));
  await until(async () => (await rqActive("lb")) === 4, 15_000, "four requests in flight");
  await configWrite(t, dir, { Kind: "service-defaults", Name: "web", Protocol: "http", UpstreamConfig: { Overrides: [{ Name: "lb", Limits: { MaxConcurrentRequests: 500 } }] } });
  await until(async () => clusterOf(await configDump(web.adminAddr), "lb")?.limits?.maxRequests === 500, 10_000, "the update to apply");
  t.equal(await rqActive("lb"), 4, "the four are still counted after the update");
  for (const a of lbApps) a.release();
  const rs = await inFlight;
  t.same(rs.map((r) => r.status), [200, 200, 200, 200], "all four are answered");
  // A count that stayed inflated would never come back: a deadline of seconds, not a window.
  await until(async () => (await rqActive("lb")) === 0, 10_000, "rq_active to return to 0").then(
    () => t.pass("rq_active is back at 0"),
    (e: unknown) => t.fail(String(e)),
  );
  await configWrite(t, dir, { Kind: "service-defaults", Name: "web", Protocol: "http" });
  await until(async () => clusterOf(await configDump(web.adminAddr), "lb")?.limits?.maxRequests === 1024, 10_000, "the limits to go back");
});

t.test("retry budget: many failing requests at once overflow the default budget", async (t) => {
  // Consul's entries cannot set a retry budget; the default applies (20% of active requests,
  // at least 10 concurrent retries, linkerd's floor). 40 concurrent requests failing after
  // 300 ms all want a retry at once: 10 get one, the others pass their 500 on untouched.
  const before = await metric(web.adminAddr, "envoy_cluster_upstream_rq_retry_overflow");
  const rs = await Promise.all(Array.from({ length: 40 }, () => get(API, "/budget?status=500&delay=300")));
  const overflowed = (await metric(web.adminAddr, "envoy_cluster_upstream_rq_retry_overflow")) - before;
  t.ok(rs.every((r) => r.status === 500), "every client gets the app's 500");
  const retried = rs.filter((r) => r.flags === "URX").length;
  const notRetried = rs.filter((r) => r.flags === "").length;
  t.ok(overflowed > 0, `envoy_cluster_upstream_rq_retry_overflow went up (${overflowed})`);
  t.equal(notRetried, overflowed, `the ${notRetried} responses passed on without a retry are exactly the overflows`);
  t.ok(retried >= 10, `at least the budget's floor of 10 were retried (${retried}, flagged URX)`);
});

t.test("load-balancing policies from the service-resolver", async (t) => {
  const setLb = async (lb: Record<string, unknown>) => {
    await configWrite(t, dir, { Kind: "service-resolver", Name: "lb", LoadBalancer: lb });
    await until(async () => {
      const c = clusterOf(await configDump(web.adminAddr), "lb");
      return c?.lb !== undefined && c.lb.policy === lb["Policy"] && (c.lb.hashPolicies.length > 0) === ("HashPolicies" in lb);
    }, 10_000, `the ${String(lb["Policy"])} policy to apply`);
  };
  const served = async (n: number, path = "/lbtest", headers: Record<string, string> = {}) => {
    const order: string[] = [];
    for (let i = 0; i < n; i++) order.push(String((await get(LB, path, { headers })).headers["x-app"]));
    return order;
  };

  await t.test("round_robin: exactly even over three instances", async (t) => {
    await setLb({ Policy: "round_robin" });
    const order = await served(30);
    t.same(tally(order, (x) => x), { "lb-a": 10, "lb-b": 10, "lb-c": 10 }, "30 sequential requests: 10 each");
    t.ok(order.every((x, i) => i === 0 || x !== order[i - 1]), "never the same instance twice in a row");
  });

  await t.test("random: roughly even, and not a rotation", async (t) => {
    await setLb({ Policy: "random" });
    const order = await served(150);
    const counts = tally(order, (x) => x);
    // Binomial(150, 1/3): mean 50, sd 5.8; ±5 sd.
    for (const a of ["lb-a", "lb-b", "lb-c"]) t.ok((counts[a] ?? 0) >= 21 && (counts[a] ?? 0) <= 79, `${a} served ${counts[a] ?? 0} of 150`);
    t.ok(order.some((x, i) => i > 0 && x === order[i - 1]), "some instance served two requests in a row (round robin never does)");
  });

  await t.test("least_request: a slow instance gets fewer requests", async (t) => {
    await setLb({ Policy: "least_request" });
    // lb-a takes 1 s per request, the others answer at once; 8 workers, 15 requests each. Two
    // samples with replacement pick lb-a twice 1 time in 9 whatever it holds (~11 %); beyond that
    // it wins only while idle, as random would. At 300 ms a loaded machine's fast requests took
    // long enough that lb-a was idle often (22.5 % in one CI run); at 1 s it is busy nearly throughout.
    const order: string[] = [];
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        for (let i = 0; i < 15; i++) order.push(String((await get(LB, "/lr?slow=lb-a&delay=1000")).headers["x-app"]));
      }),
    );
    const share = (tally(order, (x) => x)["lb-a"] ?? 0) / order.length;
    t.equal(order.length, 120, "120 requests served");
    t.ok(share < 0.22, `the slow instance got ${(share * 100).toFixed(1)}% (random or round robin: 33%)`);
  });

  for (const policy of ["ring_hash", "maglev"]) {
    await t.test(`${policy} on header x-user: a user sticks to one instance, users spread`, async (t) => {
      await setLb({ Policy: policy, HashPolicies: [{ Field: "header", FieldValue: "x-user" }] });
      const home: Record<string, string> = {};
      for (let u = 0; u < 12; u++) {
        const user = `user-${u}`;
        const order = await served(4, "/hash", { "x-user": user });
        t.equal(new Set(order).size, 1, `${user}: all 4 requests on ${order[0]}`);
        home[user] = order[0]!;
      }
      t.ok(new Set(Object.values(home)).size >= 2, `12 users spread over ${new Set(Object.values(home)).size} instances`);
      const again = await served(1, "/hash", { "x-user": "user-3" });
      t.equal(again[0], home["user-3"], "user-3 comes back to the same instance later");
    });
  }
  await setLb({ Policy: "round_robin" });
});

// A Snapshot is checked whole before any part is applied: a load balancer the cluster could
// not build (least_request with ChoiceCount 0, which the config entry accepts) is refused with
// the field named, and every cluster keeps the last good configuration, instead of some
// clusters being updated before building that one failed.
t.test("a Snapshot with a load balancer that cannot be built is rejected whole", async (t) => {
  const rejected = async () => metric(web.adminAddr, "meshproxy_snapshots_rejected_total");
  const before = await rejected();
  const policyBefore = clusterOf(await configDump(web.adminAddr), "lb")?.lb?.policy;
  await configWrite(t, dir, { Kind: "service-resolver", Name: "lb", LoadBalancer: { Policy: "least_request", LeastRequestConfig: { ChoiceCount: 0 } } });
  const line = await web.waitForLog((l) => l["@message"] === "snapshot rejected; keeping the last good one" && String(l["error"]).includes("choiceCount"));
  t.match(String(line["error"]), /must be an integer >= 1/, `logged with the reason: ${String(line["error"])}`);
  t.ok((await rejected()) > before, "meshproxy_snapshots_rejected_total counts it");
  t.equal(clusterOf(await configDump(web.adminAddr), "lb")?.lb?.policy, policyBefore, "lb keeps its last good policy");
  const rs = await Promise.all(Array.from({ length: 3 }, () => get(LB, "/after-reject")));
  t.same(rs.map((r) => r.status), [200, 200, 200], "and serves");
  await configWrite(t, dir, { Kind: "service-resolver", Name: "lb" });
  await until(async () => clusterOf(await configDump(web.adminAddr), "lb")?.lb?.policy === "round_robin", 10_000, "lb back to round robin");
});

t.test("no instance at all: 503 UH", async (t) => {
  const r = await get(web.upstreams["ghost"]!, "/");
  t.equal(r.status, 503, "an upstream with no instances answers 503");
  t.equal(r.flags, "UH", "flagged UH");
  t.match(r.body, /no healthy upstream/, "no healthy upstream");
  t.ok((await metric(web.adminAddr, "envoy_cluster_upstream_rq_none_healthy")) >= 1, "envoy_cluster_upstream_rq_none_healthy counted it");
});
