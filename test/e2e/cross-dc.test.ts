// Sidecars reaching an upstream in another datacenter through mesh gateways, with real processes
// on loopback and the dev control plane: web's sidecar in dc1 has `-upstream db.service.dc2:0`;
// db's sidecar and app live in dc2. In mode local the bytes go web → gateway dc1 → gateway dc2 →
// db's sidecar; in mode remote web → gateway dc2 → db's sidecar. mTLS is end to end (the gateways
// hold no key), web expects db's dc2 identity, and db's sidecar applies the intentions.
import t, { type Test } from "tap";
import { spawnSync } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { echoServer, hostPort, roundTrip, runMeshproxy, startSidecar, tcpApp, tempDir, type Sidecar } from "../helpers/mesh.js";
import { startCapture, startGateway } from "../helpers/mesh-gateway.js";
import { readDevCa } from "../helpers/certs.js";
import { metric, pollUntil } from "../helpers/peers.js";

async function twoDatacenters(t: Test) {
  const dir = await tempDir(t);
  const app = await echoServer(t);
  // db's sidecar makes the CA and registers in dc2's catalog (catalog/dc2/).
  const db = await startSidecar(t, dir, ["-service", "db", "-datacenter", "dc2", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`, "-access-log", "stdout"]);
  const gw2 = await startGateway(t, dir, "dc2");
  const gw1 = await startGateway(t, dir, "dc1");
  const ca = await readDevCa(dir);
  const sni = `db.default.dc2.internal.${ca.trustDomain}`;
  return { dir, app, db, gw1, gw2, ca, sni };
}

/** web's sidecar in dc1 with db in dc2 as its upstream, in `mode`. */
async function web(t: Test, dir: string, mode: string, upstream = "db.service.dc2:0"): Promise<Sidecar & { upstream: string }> {
  const s = await startSidecar(t, dir, ["-service", "web", "-datacenter", "dc1", "-upstream", upstream, "-mesh-gateway-mode", mode]);
  return Object.assign(s, { upstream: s.upstreams["db"]! });
}

const forwarded = (adminAddr: string, cluster: string) => metric(adminAddr, "meshproxy_gateway_forwarded_total", { envoy_cluster_name: cluster }).then((v) => v ?? 0);

t.test("mode local: web (dc1) → gateway dc1 → gateway dc2 → db (dc2); mode remote: web → gateway dc2 → db; a deny in dc2 holds", { timeout: 120_000 }, async (t) => {
  const { dir, app, db, gw1, gw2, ca, sni } = await twoDatacenters(t);
  const dc2Gateways = `dc2.internal.${ca.trustDomain}`;
  const local = await web(t, dir, "local");
  const marker = `through-dc1-and-dc2-gateways-${"x".repeat(100_000)}`;
  t.equal((await roundTrip(local.upstream, marker)).toString(), marker, "local: 100 KB intact both ways");
  t.equal(app.connections(), 1, "db's app saw it");
  t.equal(await forwarded(gw1.adminAddr, dc2Gateways), 1, "gateway dc1 passed it to dc2's gateways");
  t.equal(await forwarded(gw2.adminAddr, sni), 1, "gateway dc2 passed it to db's sidecar");
  // db's sidecar verified web's dc1 leaf and names it in its access log.
  const logged = await pollUntil(async () => db.stdoutText().includes(`"source_identity":"web"`), 5_000);
  t.not(logged, null, "db's sidecar verified web's certificate itself (its access log names the caller)");
  t.equal(await metric(local.adminAddr, "envoy_cluster_upstream_cx_total", { envoy_cluster_name: sni }), 1, "web's sidecar counts the connection under db's dc2 cluster");

  const remote = await web(t, dir, "remote");
  const m2 = "straight-to-dc2s-gateway";
  t.equal((await roundTrip(remote.upstream, m2)).toString(), m2, "remote: intact");
  t.equal(await forwarded(gw1.adminAddr, dc2Gateways), 1, "gateway dc1 was not on the way");
  t.equal(await forwarded(gw2.adminAddr, sni), 2, "gateway dc2 was");
  t.equal(app.connections(), 2);

  const cli = runMeshproxy(t, ["intention", "create", "-deny", "web", "db", "-data-dir", dir]);
  t.equal(await cli.exited, 0, "intention create -deny web db");
  for (const [name, s] of [["local", local], ["remote", remote]] as const) {
    const deniedWithin = await pollUntil(async () => (await roundTrip(s.upstream, "after the deny").catch(() => Buffer.alloc(0))).length === 0, 10_000);
    t.not(deniedWithin, null, `${name}: after the deny, nothing comes back`);
  }
  // Attempts made while db's sidecar was still reading the change may have reached the app.
  const before = app.connections();
  for (const s of [local, remote]) t.equal((await roundTrip(s.upstream, "denied").catch(() => Buffer.alloc(0))).length, 0, "denied");
  t.equal(app.connections(), before, "db's app saw no denied connection: dc2's sidecar refused them");
});

t.test("no mesh gateway for the mode: refused at web's sidecar with a message saying so, never dialled directly", { timeout: 120_000 }, async (t) => {
  const dir = await tempDir(t);
  const app = await echoServer(t);
  await startSidecar(t, dir, ["-service", "db", "-datacenter", "dc2", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  // No gateway anywhere: db in dc2 is reachable directly, but mode local must not do that.
  const local = await web(t, dir, "local");
  const warned = await local.waitForLog((l) => l["@message"] === "upstream cannot carry traffic");
  t.match(String(warned["error"]), /^upstream "db": no mesh gateway in dc1 for mode local/, "the control plane says which upstream and why");
  t.equal((await roundTrip(local.upstream, "hello").catch(() => Buffer.alloc(0))).length, 0, "the connection is closed");
  const refused = await local.waitForLog((l) => l["@message"] === "connection refused");
  t.match(String(refused["error"]), /no mesh gateway in dc1 for mode local/, "and the refusal says so");
  t.equal(app.connections(), 0, "db was never dialled directly");
  const none = await web(t, dir, "none");
  t.equal((await roundTrip(none.upstream, "direct")).toString(), "direct", "mode none dials dc2's instance directly (Consul's default)");
  // A gateway appearing later is picked up without a restart.
  await startGateway(t, dir, "dc1");
  await startGateway(t, dir, "dc2");
  const through = await pollUntil(async () => (await roundTrip(local.upstream, "late").catch(() => Buffer.alloc(0))).toString() === "late", 10_000);
  t.not(through, null, "once gateways register, mode local carries traffic");
});

t.test("attacker: a rogue 'gateway' in dc1 that delivers to db in dc1 instead is refused by web's sidecar, which expects db's dc2 identity", { timeout: 120_000 }, async (t) => {
  const dir = await tempDir(t);
  let dc1Bytes = 0;
  const dc1App = await tcpApp(t, (sock) => sock.on("data", (d: Buffer) => (dc1Bytes += d.length)));
  // A real db in dc1, and a catalog entry in dc1 claiming to be a mesh gateway at db-dc1's public
  // listener: whoever can write a catalog can only misdirect, never impersonate.
  const dbDc1 = await startSidecar(t, dir, ["-service", "db", "-datacenter", "dc1", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${dc1App.port}`]);
  const { port } = hostPort(dbDc1.publicAddr!);
  await writeFile(join(dir, "catalog", "rogue-gateway.json"), JSON.stringify({ id: "rogue-gateway", service: "mesh-gateway", address: "127.0.0.1", port, protocol: "tcp", pid: process.pid, meta: {}, kind: "mesh-gateway" }));
  const ca = await readDevCa(dir);
  const sni = `db.default.dc2.internal.${ca.trustDomain}`;
  const db2App = await echoServer(t);
  await startSidecar(t, dir, ["-service", "db", "-datacenter", "dc2", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${db2App.port}`]);
  const local = await web(t, dir, "local");
  t.equal((await roundTrip(local.upstream, "for dc2 only").catch(() => Buffer.alloc(0))).length, 0, "nothing comes back");
  t.equal(dc1Bytes, 0, "db's dc1 app never got a byte meant for dc2 (web's sidecar sends nothing before the identity check)");
  const rejected = await pollUntil(async () => ((await metric(local.adminAddr, "meshproxy_upstream_identity_rejected_total", { envoy_cluster_name: sni })) ?? 0) >= 1, 5_000);
  t.not(rejected, null, "counted as an identity rejection on db's dc2 cluster");
});

const haveTshark = spawnSync("sh", ["-c", "command -v tshark"]).status === 0;

t.test("a capture between web's sidecar and gateway dc1 shows db's SNI in clear and never the payload", { timeout: 120_000, skip: haveTshark ? false : "tshark is not installed (.ci/run installs it)" }, async (t) => {
  const { dir, gw1, sni } = await twoDatacenters(t);
  const local = await web(t, dir, "local");
  const capture = await startCapture(t, hostPort(gw1.listen).port);
  const marker = "PLAINTEXT-MARKER-c0ffee";
  t.equal((await roundTrip(local.upstream, marker.repeat(20))).toString(), marker.repeat(20), "the payload crossed");
  const raw = await capture.finish();
  t.ok(raw.includes(Buffer.from(sni)), "db's dc2 SNI is in the capture, in clear");
  t.notOk(raw.includes(Buffer.from(marker)), "the plaintext marker is not");
  t.match(await capture.serverNames(), sni, "tshark decodes the sidecar's ClientHello server_name");
});
