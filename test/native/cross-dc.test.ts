// A native client calling a service in another datacenter by name (`db.service.dc2.consul`), on
// the dev control plane with real mesh gateway processes on loopback, as the sidecars in
// test/e2e/cross-dc.test.ts do: mode local goes web → gateway dc1 → gateway dc2 → db, mode remote
// web → gateway dc2 → db; web expects db's dc2 identity whatever the path.
import t, { type Test } from "tap";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fetch } from "undici";
import { tempDir } from "../helpers/mesh.js";
import { startGateway } from "../helpers/mesh-gateway.js";
import { readDevCa } from "../helpers/certs.js";
import { metric, pollUntil, sample } from "../helpers/peers.js";
import { DialError } from "../../src/index.js";
import { fetchUntil, serve, service } from "../helpers/native.js";
import type { MeshGatewayMode } from "../../src/controlplane/chain/entries.js";

async function twoDatacenters(t: Test) {
  const dir = await tempDir(t);
  // db in dc2 makes the CA and registers in dc2's catalog.
  const db2 = await service(t, { name: "db", dataDir: dir, datacenter: "dc2" });
  const served2 = await serve(t, db2);
  const gw2 = await startGateway(t, dir, "dc2");
  const gw1 = await startGateway(t, dir, "dc1");
  const ca = await readDevCa(dir);
  return { dir, served2, gw1, gw2, sni: `db.default.dc2.internal.${ca.trustDomain}`, trustDomain: ca.trustDomain };
}

const forwarded = (adminAddr: string, cluster: string) => metric(adminAddr, "meshproxy_gateway_forwarded_total", { envoy_cluster_name: cluster }).then((v) => v ?? 0);
const web = (t: Test, dir: string, meshGatewayMode: MeshGatewayMode) => service(t, { name: "web", dataDir: dir, datacenter: "dc1", meshGatewayMode });

t.test("https://db.service.dc2.consul through the mesh gateways (local, remote); db.service.consul stays in dc1", { timeout: 120_000 }, async (t) => {
  const { dir, served2, gw1, gw2, sni, trustDomain } = await twoDatacenters(t);
  const db1 = await service(t, { name: "db", dataDir: dir, datacenter: "dc1" });
  const served1 = await serve(t, db1);

  const local = await web(t, dir, "local");
  const res = await fetchUntil(local, "https://db.service.dc2.consul/where");
  t.equal(await res.text(), "db /where from web", "db in dc2 answered, seeing web as the caller");
  t.equal(served2.seen.at(-1)?.host, "db.service.dc2.consul", "the Host is the name the client wrote");
  t.equal(await forwarded(gw1.adminAddr, `dc2.internal.${trustDomain}`), 1, "gateway dc1 passed it to dc2's gateways");
  t.equal(await forwarded(gw2.adminAddr, sni), 1, "gateway dc2 passed it to db");
  const cluster = local.snapshot.clusters[sni];
  t.equal(cluster?.expectedSpiffeId, `spiffe://${trustDomain}/ns/default/dc/dc2/svc/db`, "web expects db's dc2 identity");
  t.same(cluster?.meshGateway, { mode: "local", datacenter: "dc1" }, "through dc1's gateways");

  // The canonical form names the same upstream; this datacenter named explicitly is the plain name.
  t.equal(await (await fetch("https://db.service.dc2.dc.consul/canonical", { dispatcher: local.dispatcher() })).text(), "db /canonical from web", "<svc>.service.<dc>.dc.consul");
  const here = await fetchUntil(local, "https://db.service.consul/here");
  t.equal(await here.text(), "db /here from web", "db.service.consul answers from dc1");
  t.equal(served1.seen.length, 1, "dc1's db saw only that one");
  t.equal(await (await fetch("https://db.service.dc1.consul/here-too", { dispatcher: local.dispatcher() })).text(), "db /here-too from web", "db.service.dc1.consul is dc1's db too");
  t.equal(served1.seen.length, 2);
  t.same(local.snapshot.upstreams.map((u) => u.name).sort(), ["db", "db.service.dc2"], "two upstreams, one per datacenter, named as -upstream writes them");

  const sock = await local.dial("db.service.dc2.consul");
  sock.end("GET /dialled HTTP/1.1\r\nhost: db\r\nconnection: close\r\n\r\n");
  let raw = "";
  for await (const chunk of sock) raw += String(chunk);
  t.match(raw, /^HTTP\/1\.1 200[^]*\r\ndb \/dialled from web\r\n/, "dial() reached db in dc2 (whose identity the connection checked) as web");
  t.equal(served2.seen.at(-1)?.url, "/dialled");

  const before = { gw1: await forwarded(gw1.adminAddr, `dc2.internal.${trustDomain}`), gw2: await forwarded(gw2.adminAddr, sni) };
  const remote = await web(t, dir, "remote");
  t.equal(await (await fetchUntil(remote, "https://db.service.dc2.consul/remote")).text(), "db /remote from web", "mode remote");
  t.equal(await forwarded(gw1.adminAddr, `dc2.internal.${trustDomain}`), before.gw1, "gateway dc1 was not on the way");
  t.equal(await forwarded(gw2.adminAddr, sni), before.gw2 + 1, "gateway dc2 was");
});

t.test("attacker: a rogue 'gateway' in dc1 that delivers to db in dc1 is refused: web expects db's dc2 identity", { timeout: 120_000 }, async (t) => {
  const dir = await tempDir(t);
  const db1 = await service(t, { name: "db", dataDir: dir, datacenter: "dc1" });
  const served1 = await serve(t, db1);
  // Whoever can write the catalog can misdirect, never impersonate.
  await writeFile(join(dir, "catalog", "rogue-gateway.json"), JSON.stringify({ id: "rogue-gateway", service: "mesh-gateway", address: "127.0.0.1", port: served1.port, protocol: "tcp", pid: process.pid, meta: {}, kind: "mesh-gateway" }));
  const db2 = await service(t, { name: "db", dataDir: dir, datacenter: "dc2" });
  await serve(t, db2);
  const local = await web(t, dir, "local");
  const answered = await pollUntil(async () => (await fetch("https://db.service.dc2.consul/secret", { dispatcher: local.dispatcher() })).status === 503, 10_000);
  t.not(answered, null, "answered 503");
  t.equal(served1.seen.length, 0, "dc1's db never saw a request meant for dc2");
  const ca = await readDevCa(dir);
  const rejected = async () => sample(await local.metrics.registry.metrics(), "meshproxy_upstream_identity_rejected_total", { envoy_cluster_name: `db.default.dc2.internal.${ca.trustDomain}` }) ?? 0;
  const byRequests = await rejected();
  t.ok(byRequests >= 1, `the requests' attempts counted as identity rejections too (${byRequests})`);
  const dialled = await local.dial("db.service.dc2.consul").then(
    (s) => (s.destroy(), null),
    (e: unknown) => e,
  );
  t.type(dialled, DialError, "dial() refuses the rogue gateway's server too");
  t.match(String(dialled), /spiffe:\/\/[^/]+\/ns\/default\/dc\/dc2\/svc\/db/, "saying which identity it expected");
  t.equal((await rejected()) - byRequests, 1, "dial()'s one attempt counted as an identity rejection on db's dc2 cluster");
});
