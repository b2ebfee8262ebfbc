// A CA roots answer that cannot verify the proxy's own leaf, end to end: a meshproxy process on
// the agent double logs it as a control-plane error naming the watch, counts it
// (meshproxy_control_plane_errors_total{control_plane="consul",resource="roots"}), and keeps
// serving mTLS traffic on its last good roots.
import t from "tap";
import { X509Certificate } from "node:crypto";
import { echoServer, roundTrip } from "../helpers/mesh.js";
import { metric, until } from "../helpers/l7.js";
import { consulSidecar, readyStatus, startDouble } from "../helpers/consul-mesh.js";
import { createRootCa } from "../../src/identity/ca.js";

t.test("roots from another CA: refused, logged, counted; web → db keeps flowing on the last good roots", { timeout: 60_000 }, async (t) => {
  const d = await startDouble(t);
  const echo = await echoServer(t);
  await consulSidecar(t, d, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`, "-register"]);
  const web = await consulSidecar(t, d, ["-service", "web", "-upstream", "db:0"]);
  const addr = web.upstreams["db"]!;
  t.equal((await roundTrip(addr, "before\n")).toString(), "before\n", "traffic flows");

  const stranger = await createRootCa(d.trustDomain, { commonName: "Stranger CA" });
  const id = new X509Certificate(stranger.certPem).fingerprint.toLowerCase();
  const body = { ActiveRootID: id, TrustDomain: d.trustDomain, Roots: [{ ID: id, Name: "Stranger", RootCert: stranger.certPem, IntermediateCerts: null, Active: true }] };
  d.fault("/v1/agent/connect/ca/roots", `body:${JSON.stringify(body)}`);
  // The roots watch is blocked on the agent for minutes: an index reset sends it back for the answer now.
  d.resetIndex();

  const logged = await web.waitForLog((l) => l["@message"] === "control plane error; serving on the last good snapshot" && /verifies this proxy's leaf/.test(String(l["error"])), 15_000);
  t.match(logged["error"], /^roots: \/v1\/agent\/connect\/ca\/roots: \$\.Roots: none of the roots listed \(IDs "[0-9a-f:]+"\) verifies this proxy's leaf for "web"/, "the error names the watch, the field and the leaf");
  await until(async () => ((await metric(web.adminAddr, "meshproxy_control_plane_errors_total", { control_plane: "consul", resource: "roots" })) ?? 0) >= 1, 10_000, "the refusal counted under resource=roots");
  t.pass("counted");
  t.equal((await roundTrip(addr, "after\n")).toString(), "after\n", "traffic still flows: db's leaf is verified against the last good roots");
  t.equal(await readyStatus(web.adminAddr), 200, "web stays ready");
});
