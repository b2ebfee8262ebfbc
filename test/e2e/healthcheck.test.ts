// Envoy's POST /healthcheck/fail and /healthcheck/ok on real meshproxy processes: a failed health
// check makes /ready 503 (DRAINING) and the server state DRAINING while every listener keeps
// serving and nothing exits; with Consul -register the proxy's TTL check turns critical, so
// callers' /v1/health/connect?passing watches drop the instance before a shutdown.
import t, { type Test } from "tap";
import { request } from "undici";
import { echoServer, roundTrip, startSidecar, tempDir, type Sidecar } from "../helpers/mesh.js";
import { metric, until } from "../helpers/l7.js";
import { consulSidecar, startDouble } from "../helpers/consul-mesh.js";

async function admin(adminAddr: string, method: "GET" | "POST", path: string): Promise<{ status: number; body: string }> {
  const res = await request(`http://${adminAddr}${path}`, { method });
  return { status: res.statusCode, body: await res.body.text() };
}

async function failOkCycle(t: Test, db: Sidecar, web: Sidecar): Promise<void> {
  const up = web.upstreams["db"]!;
  t.equal((await admin(db.adminAddr, "GET", "/ready")).status, 200, "db is ready");
  t.equal(await metric(db.adminAddr, "envoy_server_state"), 0, "envoy_server_state 0 (LIVE)");

  const get = await admin(db.adminAddr, "GET", "/healthcheck/fail");
  t.equal(get.status, 405, "GET /healthcheck/fail → 405, as every mutation");
  t.equal((await admin(db.adminAddr, "GET", "/ready")).status, 200, "and changes nothing");

  const fail = await admin(db.adminAddr, "POST", "/healthcheck/fail");
  t.equal(fail.status, 200, "POST /healthcheck/fail → 200");
  t.same(await admin(db.adminAddr, "GET", "/ready"), { status: 503, body: "DRAINING\n" }, "/ready → 503 DRAINING");
  t.equal(await metric(db.adminAddr, "envoy_server_state"), 1, "envoy_server_state 1 (DRAINING)");
  t.equal(await metric(db.adminAddr, "envoy_server_live"), 0, "envoy_server_live 0");
  await db.waitForLog((l) => l["@level"] === "warn" && /health check failed through the admin API/.test(l["@message"]));
  t.equal((await roundTrip(up, "still served\n")).toString(), "still served\n", "traffic still flows through db's public listener");
  t.equal(db.child.exitCode, null, "db keeps running");

  const ok = await admin(db.adminAddr, "POST", "/healthcheck/ok");
  t.equal(ok.status, 200, "POST /healthcheck/ok → 200");
  t.same(await admin(db.adminAddr, "GET", "/ready"), { status: 200, body: "LIVE\n" }, "/ready → 200 LIVE again");
  t.equal(await metric(db.adminAddr, "envoy_server_state"), 0, "envoy_server_state 0 again");
  t.equal((await roundTrip(up, "and after\n")).toString(), "and after\n", "traffic flows after");
}

t.test("POST /healthcheck/fail: /ready 503 and DRAINING, traffic still flows; /healthcheck/ok undoes it", { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  await failOkCycle(t, db, web);
  t.equal(await db.stop(), 0, "db still drains and exits 0 on SIGTERM");
});

t.test("-concurrency 2: every worker follows the primary's failed health check", { timeout: 90_000 }, async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`], {}, { concurrency: 2 });
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  await failOkCycle(t, db, web);
});

t.test("Consul -register: /healthcheck/fail turns the TTL check critical, /healthcheck/ok passing", { timeout: 60_000 }, async (t) => {
  const d = await startDouble(t);
  const echo = await echoServer(t);
  const db = await consulSidecar(t, d, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`, "-register"]);
  t.equal(d.checkStatus("db-proxy-ttl"), "passing", "the TTL check passes");
  t.equal((await admin(db.adminAddr, "POST", "/healthcheck/fail")).status, 200);
  t.equal(d.checkStatus("db-proxy-ttl"), "critical", "critical as soon as /healthcheck/fail answers");
  t.match(d.heartbeats.at(-1), { checkId: "db-proxy-ttl", status: "critical", note: /POST \/healthcheck\/fail/ }, "with a note saying why");
  t.ok(d.service("db-proxy"), "the instance stays registered (it only stops passing)");
  t.equal((await admin(db.adminAddr, "GET", "/ready")).status, 503);
  t.equal((await admin(db.adminAddr, "POST", "/healthcheck/ok")).status, 200);
  t.equal(d.checkStatus("db-proxy-ttl"), "passing", "passing again after /healthcheck/ok");
  await until(async () => (await admin(db.adminAddr, "GET", "/ready")).status === 200, 5_000, "/ready 200");
  t.equal(await db.stop(), 0);
});
