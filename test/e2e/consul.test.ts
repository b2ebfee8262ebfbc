// meshproxy processes on the Consul agent double (-http-addr): flags mode with -register,
// agent mode from a registration (-proxy-id, -sidecar-for) that changes live, and /ready
// gated on the first complete Snapshot.
import t from "tap";
import { randomBytes } from "node:crypto";
import { echoServer, hostPort, roundTrip, runMeshproxy, type Sidecar } from "../helpers/mesh.js";
import { configDump, until } from "../helpers/l7.js";
import { connectError, consulSidecar, freePort, mtls, namedApp, readyStatus, startDouble } from "../helpers/consul-mesh.js";
import type { AgentServiceRegistration, ConsulAgentDouble } from "../helpers/consul-agent.js";
import type { Teardown } from "../helpers/mesh.js";

/** db: a sidecar in front of an echo app that registers itself (-register). */
async function dbSidecar(t: Teardown, d: ConsulAgentDouble): Promise<Sidecar> {
  const echo = await echoServer(t);
  return consulSidecar(t, d, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`, "-register"]);
}

/** Ports of the endpoints of the cluster for `service` (clusters are named by their SNI). */
function endpointPorts(dump: unknown, service: string): number[] {
  if (typeof dump !== "object" || dump === null || !("clusters" in dump)) return [];
  const clusters: unknown = dump.clusters;
  if (typeof clusters !== "object" || clusters === null) return [];
  const c: unknown = Object.values(clusters).find((x: unknown) => typeof x === "object" && x !== null && "service" in x && x.service === service);
  if (typeof c !== "object" || c === null || !("endpoints" in c) || !Array.isArray(c.endpoints)) return [];
  return c.endpoints.flatMap((e: unknown) => (typeof e === "object" && e !== null && "port" in e && typeof e.port === "number" ? [e.port] : []));
}

t.test("flags mode: db registers itself with -register, web finds it through /v1/health/connect, bytes cross", { timeout: 60_000 }, async (t) => {
  const d = await startDouble(t);
  const db = await dbSidecar(t, d);
  const dbPort = hostPort(db.publicAddr!).port;
  const reg = d.service("db-proxy");
  t.equal(reg?.Kind, "connect-proxy", "db-proxy registered as a connect-proxy");
  t.equal(reg?.Port, dbPort, "with the public listener's real port (port 0 resolved)");
  t.equal(reg?.Address, "127.0.0.1");
  t.equal(reg?.Proxy?.DestinationServiceName, "db");
  t.equal(d.checkStatus("db-proxy-ttl"), "passing", "its TTL check is passing");

  const web = await consulSidecar(t, d, ["-service", "web", "-upstream", "db:0"]);
  t.same(endpointPorts(await configDump(web.adminAddr), "db"), [dbPort], "web's db cluster holds db's registered instance");
  const line = "hello through the Consul control plane\n";
  t.equal((await roundTrip(web.upstreams["db"]!, line)).toString(), line, "a line crosses web → db → echo and back");
  const big = randomBytes(2 << 20);
  t.ok((await roundTrip(web.upstreams["db"]!, big)).equals(big), "2 MiB cross intact");
  t.ok(d.requests.some((r) => r.path === "/v1/agent/connect/ca/leaf/web") && d.requests.some((r) => r.path === "/v1/agent/connect/ca/leaf/db"), "each sidecar fetched its leaf from the agent");

  const code = await db.stop();
  t.equal(code, 0, "db exits 0 on SIGTERM");
  t.equal(d.service("db-proxy"), undefined, "and deregistered itself on the way out");
  t.ok(d.requests.some((r) => r.method === "PUT" && r.path === "/v1/agent/service/deregister/db-proxy"), "PUT /v1/agent/service/deregister/db-proxy");
  await until(async () => endpointPorts(await configDump(web.adminAddr), "db").length === 0, 10_000, "web to drop db's instance");
  t.pass("web's Snapshot follows: no db instance left");
});

t.test("agent mode: -proxy-id reads listeners from the registration; adding an upstream starts its listener live", { timeout: 60_000 }, async (t) => {
  const d = await startDouble(t);
  await dbSidecar(t, d);
  const cacheApp = await namedApp(t, "cache");
  await consulSidecar(t, d, ["-service", "cache", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${cacheApp.port}`, "-register"]);
  const webApp = await namedApp(t, "web-app");
  const [pub, dbPort, cachePort] = [await freePort(), await freePort(), await freePort()];
  const registration = (upstreams: NonNullable<NonNullable<AgentServiceRegistration["Proxy"]>["Upstreams"]>): AgentServiceRegistration => ({
    Kind: "connect-proxy",
    ID: "web-sidecar-proxy",
    Name: "web-sidecar-proxy",
    Address: "127.0.0.1",
    Port: pub,
    Proxy: { DestinationServiceName: "web", DestinationServiceID: "web-1", LocalServiceAddress: "127.0.0.1", LocalServicePort: webApp.port, Upstreams: upstreams },
  });
  const dbUpstream = { DestinationType: "service", DestinationName: "db", LocalBindAddress: "127.0.0.1", LocalBindPort: dbPort } as const;
  d.registerProxy(registration([dbUpstream]));

  const web = await consulSidecar(t, d, ["-proxy-id", "web-sidecar-proxy"]);
  t.equal(web.publicAddr, `127.0.0.1:${pub}`, "the public listener is the registration's Address:Port");
  t.same(web.upstreams, { db: `127.0.0.1:${dbPort}` }, "the upstream listener is Proxy.Upstreams[].LocalBindAddress:LocalBindPort");
  t.equal((await roundTrip(`127.0.0.1:${dbPort}`, "via registration\n")).toString(), "via registration\n", "bytes cross web → db");

  const api = await d.leaf("api");
  const roots = d.roots().map((r) => r.ca.certPem);
  const inbound = await mtls(`127.0.0.1:${pub}`, api.certPem, api.keyPem, roots, "hi web\n");
  t.equal(inbound.received, "web-app\nhi web\n", "inbound mTLS reaches Proxy.LocalServicePort");
  t.equal(inbound.serial, (await d.leaf("web")).serial, "presenting the leaf issued for Proxy.DestinationServiceName");

  // Consul's built-in proxy never starts listeners for upstreams added after its first config
  // (§1.6); here the registration is watched and the new listener appears without a restart.
  const started = web.waitForLog((l) => l["@message"] === "upstream listener started" && l["address"] === `127.0.0.1:${cachePort}`);
  d.registerProxy(registration([dbUpstream, { DestinationName: "cache", LocalBindPort: cachePort }]));
  await started;
  t.equal((await roundTrip(`127.0.0.1:${cachePort}`, "ping\n")).toString(), "cache\nping\n", "the added upstream carries bytes to cache");
  t.equal((await roundTrip(`127.0.0.1:${dbPort}`, "still\n")).toString(), "still\n", "the existing upstream still works");
  t.equal(web.logs.filter((l) => l["@message"] === "proxy ready").length, 1, "same process, never restarted");
  t.equal(web.child.exitCode, null);

  const removed = web.waitForLog((l) => l["@message"] === "upstream listener removed" && l["upstream"] === "db");
  d.registerProxy(registration([{ DestinationName: "cache", LocalBindPort: cachePort }]));
  await removed;
  t.equal(await connectError(`127.0.0.1:${dbPort}`), "ECONNREFUSED", "an upstream removed from the registration stops listening");
  t.equal((await roundTrip(`127.0.0.1:${cachePort}`, "pong\n")).toString(), "cache\npong\n");
});

t.test("agent mode via -sidecar-for: one sidecar registered for the app id; none is a clear startup error", { timeout: 60_000 }, async (t) => {
  const d = await startDouble(t);
  await dbSidecar(t, d);
  const app = await namedApp(t, "web-app");
  const [pub, dbPort] = [await freePort(), await freePort()];
  d.registerService({
    ID: "web-2",
    Name: "web",
    Address: "127.0.0.1",
    Port: app.port,
    Connect: { SidecarService: { Port: pub, Proxy: { Upstreams: [{ DestinationName: "db", LocalBindPort: dbPort }] } } },
  });
  const web = await consulSidecar(t, d, ["-sidecar-for", "web-2"]);
  t.ok(d.requests.some((r) => r.path === "/v1/agent/services"), "resolved through /v1/agent/services");
  t.ok(d.requests.some((r) => r.path === "/v1/agent/service/web-2-sidecar-proxy"), "then watches web-2-sidecar-proxy");
  t.equal(web.publicAddr, `127.0.0.1:${pub}`);
  t.equal((await roundTrip(`127.0.0.1:${dbPort}`, "sidecar-for\n")).toString(), "sidecar-for\n", "the sidecar's upstream carries bytes");

  const none = runMeshproxy(t, ["-http-addr", d.url, "-sidecar-for", "nope", "-log-json", "-admin-addr", ""]);
  t.equal(await none.exited, 1, "no sidecar for the id: exit 1");
  t.match(none.stderrText(), /^meshproxy: sidecar-for: no sidecar proxy registered for service id "nope"\n$/m, "and says which id had none");
});

t.test("/ready is 503 until the first complete Snapshot (leaf stalled: no upstream listener), 200 after", { timeout: 60_000 }, async (t) => {
  const d = await startDouble(t);
  await dbSidecar(t, d);
  d.fault("/v1/agent/connect/ca/leaf/web", "stall");
  const up = await freePort();
  const web = runMeshproxy(t, ["-http-addr", d.url, "-service", "web", "-upstream", `db:${up}`, "-log-json", "-admin-addr", "127.0.0.1:0"]);
  const admin = String((await web.waitForLog((l) => l["@message"] === "admin API listening"))["address"]);
  await d.waitForHeld("/v1/agent/connect/ca/leaf/web");
  await d.waitForHeld("/v1/health/connect/db");
  t.equal(await readyStatus(admin), 503, "/ready: 503 while the leaf has not arrived");
  t.equal(await connectError(`127.0.0.1:${up}`), "ECONNREFUSED", "and the upstream listener is not bound: no connection accepted without a certificate");
  t.notOk(web.logs.some((l) => l["@message"] === "proxy ready"), "not ready");

  d.fault("/v1/agent/connect/ca/leaf/web", "none");
  await web.waitForLog((l) => l["@message"] === "proxy ready");
  t.equal(await readyStatus(admin), 200, "/ready: 200 after the first complete Snapshot");
  t.equal((await roundTrip(`127.0.0.1:${up}`, "ready\n")).toString(), "ready\n", "and the upstream carries bytes");
});
