// Two datacenters on loopback with the dev control plane: one state directory (one CA, one trust
// domain), a catalog per datacenter, and a real `meshproxy -gateway mesh` process in each. A TLS
// client holding web's dc1 leaf dials gateway dc1 with db's dc2 SNI; the bytes cross gateway dc2
// to db's sidecar in dc2, which verifies web and applies dc2's intentions. The gateways hold no
// key, and a packet capture shows the SNI in clear and never the payload.
import t, { type Test } from "tap";
import { spawnSync } from "node:child_process";
import { once } from "node:events";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { echoServer, hostPort, runMeshproxy, startSidecar, tempDir } from "../helpers/mesh.js";
import { startCapture, startGateway } from "../helpers/mesh-gateway.js";
import { leafFor, readDevCa, spiffeFor, type DevCa } from "../helpers/certs.js";
import { metric, pollUntil } from "../helpers/peers.js";
import type { IssuedLeaf } from "../../src/index.js";
import { startDouble, consulSidecar } from "../helpers/consul-mesh.js";
import { createServer as createNetServer, type AddressInfo, type Socket } from "node:net";

interface Crossing {
  /** The far side's URI SAN, or null when the handshake did not complete. */
  readonly peer: string | null;
  readonly received: string;
  readonly error: string | null;
}

/** TLS to `addr` naming `sni`, presenting `leaf`, trusting only the mesh's CA; sends, half-closes, collects. */
function cross(addr: string, sni: string | undefined, leaf: Pick<IssuedLeaf, "certPem" | "keyPem">, ca: Pick<DevCa, "certPem">, payload: string): Promise<Crossing> {
  const { host, port } = hostPort(addr);
  return new Promise((resolve) => {
    const s: TLSSocket = tlsConnect({ host, port, ...(sni ? { servername: sni } : {}), cert: leaf.certPem, key: leaf.keyPem, ca: ca.certPem, rejectUnauthorized: true, checkServerIdentity: () => undefined });
    let peer: string | null = null;
    let error: string | null = null;
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => s.destroy(new Error("timed out")), 10_000);
    s.once("secureConnect", () => {
      peer = s.getPeerCertificate().subjectaltname ?? "";
      s.end(payload);
    });
    s.on("data", (d: Buffer) => chunks.push(d));
    s.on("error", (e: Error) => (error = e.message));
    s.once("close", () => {
      clearTimeout(timer);
      resolve({ peer, received: Buffer.concat(chunks).toString("utf8"), error });
    });
  });
}

async function twoDatacenters(t: Test, gw2Flags: string[] = []) {
  const dir = await tempDir(t);
  const app = await echoServer(t);
  // db's sidecar makes the CA and registers in dc2's catalog (catalog/dc2/).
  const db = await startSidecar(t, dir, ["-service", "db", "-datacenter", "dc2", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  const gw2 = await startGateway(t, dir, "dc2", gw2Flags);
  const gw1 = await startGateway(t, dir, "dc1");
  const ca = await readDevCa(dir);
  const web = await leafFor(ca, "web");
  const sni = `db.default.dc2.internal.${ca.trustDomain}`;
  return { dir, app, db, gw1, gw2, ca, web, sni };
}

t.test("web (dc1) → gateway dc1 → gateway dc2 → db's sidecar (dc2): identities end to end, dc2's intentions apply", { timeout: 90_000 }, async (t) => {
  const { dir, app, gw1, gw2, ca, web, sni } = await twoDatacenters(t, ["-access-log", "stdout"]);
  const marker = `across-two-datacenters-${"x".repeat(5000)}`;
  const ok = await cross(gw1.listen, sni, web, ca, marker);
  t.equal(ok.error, null, "no error on the way");
  t.equal(ok.peer, `URI:${spiffeFor(ca.trustDomain, "db", "dc2")}`, "the far end is db in dc2, verified against the dev CA through two gateways");
  t.equal(ok.received, marker, "data intact both ways");
  t.equal(app.connections(), 1, "the db app saw the connection");
  t.equal(await metric(gw1.adminAddr, "meshproxy_gateway_forwarded_total", { envoy_cluster_name: `dc2.internal.${ca.trustDomain}` }), 1, "gateway dc1 forwarded to dc2's gateways");
  t.equal(await metric(gw2.adminAddr, "meshproxy_gateway_forwarded_total", { envoy_cluster_name: sni }), 1, "gateway dc2 forwarded to db's local cluster");
  t.ok((await metric(gw2.adminAddr, "envoy_cluster_upstream_cx_tx_bytes_total", { envoy_cluster_name: sni }))! > marker.length, "bytes counted per route");
  t.ok(gw2.logs.some((l) => l["@message"] === "gateway connection forwarded" && l["sni"] === sni), "forwarded connection logged with its SNI");
  const accessLine = async () => gw2.stdoutText().split("\n").find((l) => l.includes(`"listener":"gateway:${sni}"`));
  t.not(await pollUntil(async () => (await accessLine()) !== undefined, 5_000), null, "an access log line for the forwarded connection");
  t.match(JSON.parse((await accessLine())!), { upstream_cluster: sni, protocol: "tcp" }, "naming its route");
  for (const g of [gw1, gw2]) t.notOk(g.logs.some((l) => /leaf|certificate/i.test(l["@message"])), "a gateway issues and loads no certificate");

  // A deny in the (shared) intentions is enforced by db's sidecar in dc2, not by the gateways.
  const cli = runMeshproxy(t, ["intention", "create", "-deny", "web", "db", "-data-dir", dir]);
  t.equal(await cli.exited, 0, "intention create -deny web db");
  const deniedWithin = await pollUntil(async () => (await cross(gw1.listen, sni, web, ca, marker)).received !== marker, 10_000);
  t.not(deniedWithin, null, "after the deny, web's connection across the gateways no longer reaches db");
  // Attempts made while the sidecar was still reading the change may have reached the app.
  const before = app.connections();
  const denied = await cross(gw1.listen, sni, web, ca, marker);
  t.equal(denied.received, "", "nothing of the app's comes back");
  t.equal(app.connections(), before, "the db app saw no denied connection");
});

t.test("unknown SNI, no SNI, another trust domain: closed and counted at the gateway", { timeout: 90_000 }, async (t) => {
  const { gw1, gw2, ca, web } = await twoDatacenters(t);
  // All dialled at gateway dc1; the last is a dc2 name, so dc1 passes it on and dc2 refuses it.
  const cases: Array<[string, string]> = [
    [`nosuch.default.dc1.internal.${ca.trustDomain}`, "no such service in dc1"],
    [`db.default.dc9.internal.${ca.trustDomain}`, "a datacenter with no gateway"],
    ["db.default.dc2.internal.other.consul", "another trust domain"],
    ["example.com", "not a mesh name"],
    [`nosuch.default.dc2.internal.${ca.trustDomain}`, "no such service in dc2 (refused by dc2's gateway)"],
  ];
  for (const [sni, why] of cases) {
    const r = await cross(gw1.listen, sni, web, ca, "secret");
    t.equal(r.peer, null, `${why}: no handshake completes`);
    t.equal(r.received, "", `${why}: nothing comes back`);
  }
  t.equal(await metric(gw1.adminAddr, "meshproxy_gateway_rejected_total", { reason: "unknown_sni" }), 4, "gateway dc1 counted its four unknown names");
  t.equal(await metric(gw2.adminAddr, "meshproxy_gateway_rejected_total", { reason: "unknown_sni" }), 1, "gateway dc2 counted the unknown dc2 service");
  const none = await cross(gw1.listen, undefined, web, ca, "secret");
  t.equal(none.peer, null, "no SNI: refused");
  t.equal(await metric(gw1.adminAddr, "meshproxy_gateway_rejected_total", { reason: "no_sni" }), 1, "counted as no_sni");
});

t.test("registered as a mesh-gateway in its own datacenter's catalog; /ready; drains and deregisters on SIGTERM", { timeout: 90_000 }, async (t) => {
  const { dir, gw1, gw2 } = await twoDatacenters(t);
  const entries = async (sub: string) => {
    const d = join(dir, "catalog", sub);
    const out: Array<Record<string, unknown>> = [];
    for (const f of await readdir(d)) if (f.endsWith(".json")) out.push(JSON.parse(await readFile(join(d, f), "utf8")) as Record<string, unknown>);
    return out;
  };
  t.ok((await entries("dc2")).some((e) => e["kind"] === "mesh-gateway" && e["port"] === hostPort(gw2.listen).port), "gateway dc2 in catalog/dc2/");
  t.ok((await entries("")).some((e) => e["kind"] === "mesh-gateway" && e["port"] === hostPort(gw1.listen).port), "gateway dc1 in the home catalog");
  t.ok((await entries("dc2")).some((e) => e["service"] === "db" && e["kind"] === undefined), "db's sidecar in catalog/dc2/");
  t.equal((await fetch(`http://${gw1.adminAddr}/ready`)).status, 200, "/ready is 200");
  t.equal(await gw2.stop(), 0, "SIGTERM: exit 0");
  t.notOk((await entries("dc2")).some((e) => e["kind"] === "mesh-gateway"), "deregistered on the way out");
});

t.test("SIGTERM lets a connection already crossing finish, then exits", { timeout: 90_000 }, async (t) => {
  const { gw1, ca, web, sni } = await twoDatacenters(t);
  const { host, port } = hostPort(gw1.listen);
  const s: TLSSocket = tlsConnect({ host, port, servername: sni, cert: web.certPem, key: web.keyPem, ca: ca.certPem, checkServerIdentity: () => undefined });
  await once(s, "secureConnect");
  s.write("first ");
  await once(s, "data");
  const exited = gw1.stop();
  await gw1.waitForLog((l) => l["@message"] === "draining");
  const chunks: Buffer[] = [];
  s.on("data", (d: Buffer) => chunks.push(d));
  s.end("second");
  await once(s, "close");
  t.equal(Buffer.concat(chunks).toString(), "second", "the open connection still crossed after SIGTERM");
  t.equal(await exited, 0, "then the gateway exits 0");
});

t.test("usage: -gateway takes mesh, needs -listen, refuses sidecar flags, -register without an agent, a bad -wan-address", async (t) => {
  const run = async (args: string[]) => {
    const p = runMeshproxy(t, args);
    return { code: await p.exited, err: p.stderrText() };
  };
  const bad = await run(["-gateway", "ingress", "-listen", "127.0.0.1:0"]);
  t.equal(bad.code, 2);
  t.match(bad.err, /the only gateway kind is mesh/);
  const noListen = await run(["-gateway", "mesh"]);
  t.equal(noListen.code, 2);
  t.match(noListen.err, /needs -listen/);
  const sidecarFlags = await run(["-gateway", "mesh", "-listen", "127.0.0.1:0", "-upstream", "db:9191"]);
  t.equal(sidecarFlags.code, 2);
  t.match(sidecarFlags.err, /cannot be combined with -upstream/);
  const register = await run(["-gateway", "mesh", "-listen", "127.0.0.1:0", "-register"]);
  t.equal(register.code, 2);
  t.match(register.err, /-register registers the gateway in a Consul agent/);
  const badWan = await run(["-gateway", "mesh", "-listen", "127.0.0.1:0", "-wan-address", "nowhere"]);
  t.equal(badWan.code, 2);
  t.match(badWan.err, /-wan-address "nowhere": want host:port/);
  const sidecarAddress = await run(["-service", "web", "-wan-address", "127.0.0.1:1"]);
  t.equal(sidecarAddress.code, 2);
  t.match(sidecarAddress.err, /-wan-address is a mesh gateway's registered address/);
  const badDc = await run(["-service", "web", "-datacenter", "dc 2"]);
  t.equal(badDc.code, 2);
  t.match(badDc.err, /-datacenter "dc 2"/);
});

t.test("subset SNIs route to the resolver's subsets; a resolver change reaches the running gateway; /clusters", { timeout: 90_000 }, async (t) => {
  const dir = await tempDir(t);
  const v1app = await echoServer(t);
  const v2app = await echoServer(t);
  // Sequential: the first sidecar makes the CA.
  await startSidecar(t, dir, ["-service", "db", "-datacenter", "dc2", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${v1app.port}`, "-meta", "version=v1"]);
  await startSidecar(t, dir, ["-service", "db", "-datacenter", "dc2", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${v2app.port}`, "-meta", "version=v2"]);
  const writeResolver = async (v1Filter: string) => {
    const file = join(dir, "resolver.json");
    await writeFile(file, JSON.stringify({ Kind: "service-resolver", Name: "db", Subsets: { v1: { Filter: v1Filter }, v2: { Filter: 'Service.Meta.version == "v2"' } } }));
    t.equal(await runMeshproxy(t, ["config", "write", file, "-data-dir", dir]).exited, 0, "config write");
  };
  await writeResolver('Service.Meta.version == "v1"');
  const gw = await startGateway(t, dir, "dc2");
  const ca = await readDevCa(dir);
  const web = await leafFor(ca, "web");
  const v1 = `v1.db.default.dc2.internal.${ca.trustDomain}`;
  const v2 = `v2.db.default.dc2.internal.${ca.trustDomain}`;
  for (let i = 0; i < 3; i++) t.equal((await cross(gw.listen, v1, web, ca, "to v1")).received, "to v1");
  t.same([v1app.connections(), v2app.connections()], [3, 0], "v1's SNI reached only v1's instance");
  t.equal((await cross(gw.listen, v2, web, ca, "to v2")).received, "to v2");
  t.same([v1app.connections(), v2app.connections()], [3, 1], "v2's SNI reached only v2's instance");
  t.equal((await cross(gw.listen, `v9.db.default.dc2.internal.${ca.trustDomain}`, web, ca, "x")).peer, null, "an unknown subset is refused");

  const text = await (await fetch(`http://${gw.adminAddr}/clusters`)).text();
  t.match(text, `${v1}::outlier_detection::enabled`, "/clusters lists the subset's cluster");
  t.equal(text.split("\n").filter((l) => l.startsWith(`${v1}::`) && l.endsWith("::health_flags::healthy")).length, 1, "with its one instance");
  const json = (await (await fetch(`http://${gw.adminAddr}/clusters?format=json`)).json()) as { cluster_statuses: Array<{ name: string }> };
  t.ok(json.cluster_statuses.some((c) => c.name === `db.default.dc2.internal.${ca.trustDomain}`), "?format=json too");

  // The resolver now points v1 at the v2 instances: the running gateway follows.
  await writeResolver('Service.Meta.version == "v2"');
  const moved = await pollUntil(async () => {
    const before = v2app.connections();
    await cross(gw.listen, v1, web, ca, "moved");
    return v2app.connections() > before;
  }, 10_000);
  t.not(moved, null, "v1's SNI follows the new filter without a restart");
  t.equal(await gw.stop(), 0);
});

t.test("a second SIGTERM while draining exits 1 at once", { timeout: 90_000 }, async (t) => {
  const { gw1, ca, web, sni } = await twoDatacenters(t);
  const { host, port } = hostPort(gw1.listen);
  const s: TLSSocket = tlsConnect({ host, port, servername: sni, cert: web.certPem, key: web.keyPem, ca: ca.certPem, checkServerIdentity: () => undefined });
  s.on("error", () => undefined);
  t.teardown(() => s.destroy());
  await once(s, "secureConnect");
  gw1.child.kill("SIGTERM");
  await gw1.waitForLog((l) => l["@message"] === "draining");
  gw1.child.kill("SIGTERM");
  t.equal(await gw1.exited, 1, "exit 1 without waiting for the open connection");
  t.ok(gw1.logs.some((l) => l["@message"] === "second signal; exiting without draining"), "and says why");
});

t.test("Consul: -gateway mesh -http-addr -register: a mesh-gateway registration with LAN and WAN addresses, routes from the agent, the last table kept while it is down, deregistered on SIGTERM", { timeout: 90_000 }, async (t) => {
  const d = await startDouble(t);
  const echo = await echoServer(t);
  // The app is in the catalog as well as its sidecar (Consul's mesh gateway lists the catalog's
  // services, then each one's connect instances).
  d.registerService({ Name: "db", Port: echo.port, Address: "127.0.0.1" });
  await consulSidecar(t, d, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`, "-register", "-meta", "version=v1"]);
  // dc2's gateway: registered on a LAN address no one here can reach, and a WAN address that is a
  // plain TCP server recording what arrives.
  const arrived: Buffer[] = [];
  const open = new Set<Socket>();
  const remote = createNetServer((s) => {
    open.add(s);
    s.on("data", (b: Buffer) => arrived.push(b));
    s.on("error", () => undefined);
    s.once("close", () => open.delete(s));
  });
  remote.listen(0, "127.0.0.1");
  await once(remote, "listening");
  t.teardown(() => {
    for (const s of open) s.destroy();
    remote.close();
  });
  d.setRemoteGateways("dc2", [{ id: "gw-dc2", address: "192.0.2.1", port: 8443, wan: { Address: "127.0.0.1", Port: (remote.address() as AddressInfo).port } }]);

  const p = runMeshproxy(t, ["-gateway", "mesh", "-http-addr", d.url, "-register", "-listen", "127.0.0.1:0", "-wan-address", "192.0.2.10:8443", "-log-json", "-admin-addr", "127.0.0.1:0", "-log-level", "debug"]);
  const ready = await p.waitForLog((l) => l["@message"] === "gateway ready");
  const admin = String((await p.waitForLog((l) => l["@message"] === "admin API listening"))["address"]);
  const listen = String(ready["listen"]);
  const port = hostPort(listen).port;

  const reg = d.service("mesh-gateway");
  t.equal(reg?.Kind, "mesh-gateway", "registered with Kind mesh-gateway, ID and name mesh-gateway");
  t.same([reg?.Address, reg?.Port], ["127.0.0.1", port], "at its LAN address");
  t.same(reg?.TaggedAddresses, { lan: { Address: "127.0.0.1", Port: port }, wan: { Address: "192.0.2.10", Port: 8443 } }, "LAN and WAN in TaggedAddresses, as Consul's -register");
  const body = JSON.parse(d.requests.find((r) => r.method === "PUT" && r.path === "/v1/agent/service/register" && r.body.includes("mesh-gateway"))!.body) as Record<string, unknown>;
  t.match(body["Check"], { TCP: `127.0.0.1:${port}`, Interval: "10s", DeregisterCriticalServiceAfter: "6h" }, "with Consul's TCP check");

  const root = { certPem: d.activeRoot.certPem };
  const web = await d.leaf("web");
  const sni = `db.default.dc1.internal.${d.trustDomain}`;
  const ok = await cross(listen, sni, web, root, "through a Consul-fed gateway");
  t.equal(ok.received, "through a Consul-fed gateway", "a local service from /v1/health/connect: its sidecar's public listener");
  t.match(ok.peer, /\/svc\/db$/, "mTLS end to end with db's sidecar");
  t.ok(d.requests.some((r) => r.path === "/v1/health/connect/db" && r.query["index"] !== undefined), "watched with blocking queries");

  const far = await cross(listen, `db.default.dc2.internal.${d.trustDomain}`, web, root, "x");
  t.equal(far.peer, null, "(the recording server speaks no TLS)");
  t.ok(Buffer.concat(arrived).includes(Buffer.from(`db.default.dc2.internal.${d.trustDomain}`)), "a dc2 name went to dc2's gateway at its WAN address, ClientHello intact");

  const v1 = `v1.db.default.dc1.internal.${d.trustDomain}`;
  t.equal((await cross(listen, v1, web, root, "x")).peer, null, "no subset before a resolver defines it");
  d.setConfigEntry({ Kind: "service-resolver", Name: "db", Subsets: { v1: { Filter: "Service.Meta.version == v1" } } });
  t.not(await pollUntil(async () => (await cross(listen, v1, web, root, "v1")).received === "v1", 10_000), null, "a service-resolver subset from the agent routes once written");

  // The agent goes away: the gateway says so, counts it, and keeps routing on its last table.
  const mark = p.logs.length;
  await d.pause();
  await p.waitForLog((l) => p.logs.indexOf(l) >= mark && l["@message"] === "gateway configuration problem" && /previous routes stay in force/.test(String(l["error"])), 15_000);
  t.ok((await metric(admin, "meshproxy_control_plane_errors_total", { control_plane: "consul", resource: "gateway-routes" }))! > 0, "counted");
  t.equal((await cross(listen, v1, web, root, "agent down")).received, "agent down", "routes stay while the agent is down");
  await d.resume();

  t.equal(await p.stop(), 0, "SIGTERM: exit 0");
  t.equal(d.service("mesh-gateway"), undefined, "deregistered from the agent");
});

const haveTshark = spawnSync("sh", ["-c", "command -v tshark"]).status === 0;

t.test("a capture of the gateway's traffic shows the SNI in clear and never the payload", { timeout: 90_000, skip: haveTshark ? false : "tshark is not installed (.ci/run installs it)" }, async (t) => {
  const { gw1, ca, web, sni } = await twoDatacenters(t);
  const capture = await startCapture(t, hostPort(gw1.listen).port);
  const marker = "PLAINTEXT-MARKER-5f3a9c";
  const r = await cross(gw1.listen, sni, web, ca, marker.repeat(20));
  t.equal(r.received, marker.repeat(20), "the payload crossed");
  const raw = await capture.finish();
  t.ok(raw.length > 0, "something was captured");
  t.ok(raw.includes(Buffer.from(sni)), "the SNI is in the capture, in clear");
  t.notOk(raw.includes(Buffer.from(marker)), "the plaintext marker is not");
  const names = await capture.serverNames();
  t.match(names, sni, "tshark decodes the ClientHello's server_name");
});
