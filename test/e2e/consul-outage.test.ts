// The Consul agent goes away, comes back answering garbage, then slowly, while web → db traffic
// flows through two sidecars on the double: the proxies keep serving on their last good
// Snapshot, log and count every control-plane error, stay ready, and pick up changes again
// once the agent is healthy.
import t from "tap";
import { echoServer, roundTrip, type LogLine, type Sidecar } from "../helpers/mesh.js";
import { configDump, metric, until } from "../helpers/l7.js";
import { connectionLoad, consulSidecar, moreTraffic, readyStatus, startDouble } from "../helpers/consul-mesh.js";

const ERRORS = "meshproxy_control_plane_errors_total";
const CP_ERROR = "control plane error; serving on the last good snapshot";

/** Log lines from `mark` on that match. */
function since(p: Sidecar, mark: number, pred: (l: LogLine) => boolean): (l: LogLine) => boolean {
  return (l) => p.logs.indexOf(l) >= mark && pred(l);
}

/** Endpoints of the cluster for `service` (clusters are named by their SNI). */
function endpointCount(dump: unknown, service: string): number {
  if (typeof dump !== "object" || dump === null || !("clusters" in dump)) return 0;
  const c: unknown =
    typeof dump.clusters === "object" && dump.clusters !== null
      ? Object.values(dump.clusters).find((x: unknown) => typeof x === "object" && x !== null && "service" in x && x.service === service)
      : undefined;
  return typeof c === "object" && c !== null && "endpoints" in c && Array.isArray(c.endpoints) ? c.endpoints.length : 0;
}

t.test("agent down, then garbage, then slow: traffic flows on the last good Snapshot; changes flow again after", { timeout: 90_000 }, async (t) => {
  const d = await startDouble(t);
  const echo = await echoServer(t);
  const db = await consulSidecar(t, d, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`, "-register"]);
  const web = await consulSidecar(t, d, ["-service", "web", "-upstream", "db:0"]);
  const addr = web.upstreams["db"]!;
  const load = connectionLoad(t, addr, 40);
  await moreTraffic(load, 20);
  t.equal(await metric(web.adminAddr, ERRORS, { control_plane: "consul" }), 0, "no control-plane errors while the agent is healthy");

  // 1. The agent goes away: every connection to it is refused.
  let mark = web.logs.length;
  await d.pause();
  const refused = await web.waitForLog(since(web, mark, (l) => l["@message"] === CP_ERROR), 10_000);
  t.equal(refused["control_plane"], "consul", "web logs the error, naming the control plane");
  t.match(refused["error"], /^[a-z]+: /, `and which watch failed: ${String(refused["error"])}`);
  const econnrefused = await web.waitForLog(since(web, mark, (l) => l["@message"] === CP_ERROR && /ECONNREFUSED/.test(String(l["error"]))), 10_000);
  t.match(econnrefused["error"], /^[a-z]+: .*ECONNREFUSED/, "new calls to the agent are refused, and that is logged per watch");
  const pausedAt = Date.now();
  await moreTraffic(load, 160); // ~4 s at 40/s
  t.ok(Date.now() - pausedAt >= 3000, `traffic kept flowing for ${Date.now() - pausedAt} ms with the agent down`);
  t.equal(await readyStatus(web.adminAddr), 200, "web stays ready on its last good Snapshot");
  t.equal(await readyStatus(db.adminAddr), 200, "so does db");
  const downErrors = await metric(web.adminAddr, ERRORS, { control_plane: "consul" });
  t.ok(downErrors > 0, `${ERRORS}{control_plane="consul"} counts them on web (${downErrors})`);
  t.ok((await metric(db.adminAddr, ERRORS, { control_plane: "consul" })) > 0, "and on db");
  t.equal(endpointCount(await configDump(web.adminAddr), "db"), 1, "web's Snapshot still has db's instance");

  // 2. Back, but answering garbage with 200s.
  d.fault("/v1/", "garbage");
  mark = web.logs.length;
  await d.resume();
  const garbage = await web.waitForLog(since(web, mark, (l) => l["@message"] === CP_ERROR && /malformed JSON/.test(String(l["error"]))), 30_000);
  t.match(garbage["error"], /GET \/v1\/[^ ]+: malformed JSON from the agent/, "garbage JSON is logged as an error, naming the endpoint");
  await moreTraffic(load, 60);
  t.ok((await metric(web.adminAddr, ERRORS, { control_plane: "consul" })) > downErrors, "and counted");

  // 3. Answering, but slowly (1.5 s a response).
  const slowFrom = d.requests.length;
  d.fault("/v1/", "slow:1500");
  await until(() => d.requests.slice(slowFrom).some((r) => r.status === 200), 30_000, "a slow answer to be served");
  await moreTraffic(load, 60);
  t.pass("traffic flows while the agent answers slowly");

  d.clearFaults();
  await load.stop();
  t.same(load.failures, [], `zero failed connections through the whole outage (${load.ok()} made it)`);
  t.equal(web.logs.filter((l) => l["@message"] === "proxy ready").length, 1, "web was never restarted");

  // 4. Healthy again: a new instance and an intention change are picked up.
  const echo2 = await echoServer(t);
  const db2 = await consulSidecar(t, d, ["-service", "db", "-register-id", "2", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo2.port}`, "-register"]);
  await until(async () => endpointCount(await configDump(web.adminAddr), "db") === 2, 40_000, "web to see the second db instance");
  t.pass("web's health watch sees a new db instance");
  const isDenial = (l: LogLine) => l["@message"] === "inbound connection refused" && l["reason"] === "denied_by_intention" && l["source"] === "web";
  const denied = Promise.any([db.waitForLog(isDenial, 40_000), db2.waitForLog(isDenial, 40_000)]);
  d.setIntentions("db", [{ source: "web", action: "deny" }]);
  await until(async () => (await roundTrip(addr, "x\n", 2000).catch(() => Buffer.alloc(0))).length === 0, 40_000, "web → db to be denied");
  t.pass("the intention deny is enforced on new connections");
  t.equal((await denied)["detail"], "Matched L4 intention: web => db (deny)", "a db instance refused web by the new intention");
});
