// Admin partitions (Consul Enterprise), end to end on the agent double answering as an agent in
// partition ap1: its leafs carry spiffe://<td>/ap/ap1/ns/default/dc/dc1/svc/<svc>, its chains'
// targets Partition ap1, its intentions DestinationPartition ap1. web's upstream to db must expect
// db's partitioned identity (a cluster expecting the plain /ns/default/... form refuses every
// connection), and db's public listener reads callers' partitions from their SPIFFE IDs.
//
//   web ─mTLS─▶ db (echo)        part2/api, part3/api ─mTLS─▶ db
import t from "tap";
import { echoServer, roundTrip } from "../helpers/mesh.js";
import { configDump } from "../helpers/l7.js";
import { consulSidecar, mtls, startDouble } from "../helpers/consul-mesh.js";

/** The db cluster's SNI and expected SPIFFE ID in a config dump. */
function dbCluster(dump: unknown): { sni: unknown; expectedSpiffeId: unknown } | null {
  if (typeof dump !== "object" || dump === null || !("clusters" in dump)) return null;
  const clusters: unknown = dump.clusters;
  if (typeof clusters !== "object" || clusters === null) return null;
  const c: unknown = Object.values(clusters).find((x: unknown) => typeof x === "object" && x !== null && "service" in x && x.service === "db");
  if (typeof c !== "object" || c === null || !("sni" in c) || !("expectedSpiffeId" in c)) return null;
  return { sni: c.sni, expectedSpiffeId: c.expectedSpiffeId };
}

t.test("partition ap1: web → db crosses with db's /ap/ap1/ identity expected; intentions from another partition match on it", { timeout: 60_000 }, async (t) => {
  const d = await startDouble(t, { partition: "ap1", defaultIntentionPolicy: "deny" });
  d.setIntentions("db", [
    { source: "web", action: "allow" },
    { source: "api", sourcePartition: "part2", action: "allow" },
  ]);
  const echo = await echoServer(t);
  const db = await consulSidecar(t, d, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`, "-register"]);
  const web = await consulSidecar(t, d, ["-service", "web", "-upstream", "db:0"]);

  t.same(dbCluster(await configDump(web.adminAddr)), {
    sni: `db.default.ap1.dc1.internal-v1.${d.trustDomain}`,
    expectedSpiffeId: `spiffe://${d.trustDomain}/ap/ap1/ns/default/dc/dc1/svc/db`,
  }, "web's db cluster: ap1's SNI and identity");
  const line = "across partition ap1\n";
  t.equal((await roundTrip(web.upstreams["db"]!, line)).toString(), line, "a line crosses web → db → echo: db's /ap/ap1/ leaf is the identity web expects");

  const roots = d.roots().map((r) => r.ca.certPem);
  const part2 = await d.foreignLeaf("api", { partition: "part2" });
  t.equal((await mtls(db.publicAddr!, part2.certPem, part2.keyPem, roots, "from part2\n")).received, "from part2\n", "part2/api has an allow intention scoped to part2: it reaches db");
  const part3 = await d.foreignLeaf("api", { partition: "part3" });
  const refused = await mtls(db.publicAddr!, part3.certPem, part3.keyPem, roots, "from part3\n").then(
    (r) => r.received,
    () => "",
  );
  t.equal(refused, "", "part3/api matches no intention: the default (deny) refuses it");
  const log = await db.waitForLog((l) => l["@message"] === "inbound connection refused" && l["source"] === "api");
  t.equal(log["detail"], "No intention matched; default policy is deny", "and db says why");
});
