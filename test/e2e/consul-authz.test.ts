// Authorization from the Consul control plane, end to end: real meshproxy processes on the
// agent double, callers presenting leafs the double issues (in this namespace, another one, or
// another partition). The default action is the agent's (default_intention_policy with ACLs
// off), intentions scoped to a peer or another namespace never let a local caller in, L7
// permissions are enforced per request, and a malformed intentions answer at start leaves the
// proxy not ready with nothing listening.
//
//   api, ns2/api, db ─mTLS─▶ web (tcp, named app)      web ─mTLS─▶ shop (http, scripted app)
import t from "tap";
import { runMeshproxy } from "../helpers/mesh.js";
import { configDump, until } from "../helpers/l7.js";
import { scriptedApp } from "../helpers/l7-apps.js";
import { connectError, consulSidecar, freePort, mtls, namedApp, readyStatus, startDouble } from "../helpers/consul-mesh.js";
import { exchange, hasResponses, parseResponses, tlsTo } from "../helpers/raw-http.js";
import type { ConsulAgentDouble, IntentionSpec } from "../helpers/consul-agent.js";

/** What a caller with this leaf gets back through web's public listener: the app's answer, or "" when refused. */
async function reach(d: ConsulAgentDouble, addr: string, leaf: { certPem: string; keyPem: string }): Promise<string> {
  const roots = d.roots().map((r) => r.ca.certPem);
  return mtls(addr, leaf.certPem, leaf.keyPem, roots, "hi\n").then(
    (r) => r.received,
    () => "",
  );
}

/** Sources of the intentions in a sidecar's applied Snapshot. */
async function appliedSources(adminAddr: string): Promise<string[]> {
  const dump = await configDump(adminAddr);
  if (typeof dump !== "object" || dump === null || !("intentions" in dump)) return [];
  const p: unknown = dump.intentions;
  if (typeof p !== "object" || p === null || !("intentions" in p) || !Array.isArray(p.intentions)) return [];
  return p.intentions.flatMap((i: unknown) => (typeof i === "object" && i !== null && "source" in i && typeof i.source === "string" ? [i.source] : []));
}

/** Sets web's intentions plus a marker, and waits until the sidecar has applied them. */
async function setAndApply(d: ConsulAgentDouble, adminAddr: string, destination: string, list: IntentionSpec[], marker: string): Promise<void> {
  d.setIntentions(destination, [...list, { source: marker, action: "deny" }]);
  await until(async () => (await appliedSources(adminAddr)).includes(marker), 15_000, `intentions with ${marker} to be applied`);
}

t.test("L4: default deny from default_intention_policy (ACLs off); SourcePeer and SourceNS intentions never match a local caller", { timeout: 90_000 }, async (t) => {
  const d = await startDouble(t, { defaultIntentionPolicy: "deny" });
  const app = await namedApp(t, "web-app");
  d.setIntentions("web", [{ source: "db", action: "allow" }]);
  const web = await consulSidecar(t, d, ["-service", "web", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  const addr = web.publicAddr!;
  const api = await d.leaf("api");
  const db = await d.leaf("db");

  t.equal(await reach(d, addr, db), "web-app\nhi\n", "db has an allow intention: it reaches the app");
  t.equal(await reach(d, addr, api), "", "api has none: the agent's default (default_intention_policy deny) refuses it, ACLs or not");
  const refused = await web.waitForLog((l) => l["@message"] === "inbound connection refused" && l["source"] === "api");
  t.equal(refused["detail"], "No intention matched; default policy is deny", "and says why");

  await setAndApply(d, web.adminAddr, "web", [{ source: "api", sourcePeer: "other", action: "allow" }], "marker-peer");
  t.equal(await reach(d, addr, api), "", "an allow for api from peer `other` does not let the local api in");

  await setAndApply(d, web.adminAddr, "web", [{ source: "api", sourceNamespace: "ns2", action: "allow" }], "marker-ns");
  t.equal(await reach(d, addr, api), "", "an allow for ns2/api does not let default/api in");
  const ns2api = await d.foreignLeaf("api", { namespace: "ns2" });
  t.equal(await reach(d, addr, ns2api), "web-app\nhi\n", "it lets ns2/api in: its SPIFFE ID carries its namespace");

  await setAndApply(d, web.adminAddr, "web", [{ source: "api", action: "allow" }], "marker-local");
  t.equal(await reach(d, addr, api), "web-app\nhi\n", "an unscoped allow for api lets default/api in");
  t.equal(await reach(d, addr, ns2api), "", "but not ns2/api, which is another service");
  const part2api = await d.foreignLeaf("api", { partition: "part2" });
  t.equal(await reach(d, addr, part2api), "", "nor part2/default/api");
});

t.test("L7: a Consul intention's permissions are enforced per request on an http service", { timeout: 90_000 }, async (t) => {
  const d = await startDouble(t, { defaultIntentionPolicy: "deny" });
  const app = await scriptedApp(t, "shop");
  const pub = await freePort();
  d.setIntentions("shop", [
    {
      source: "web",
      permissions: [
        { Action: "deny", HTTP: { PathPrefix: "/admin" } },
        { Action: "allow", HTTP: { PathPrefix: "/", Methods: ["GET"] } },
      ],
    },
  ]);
  d.registerProxy({
    Kind: "connect-proxy",
    ID: "shop-sidecar-proxy",
    Name: "shop-sidecar-proxy",
    Address: "127.0.0.1",
    Port: pub,
    Proxy: { DestinationServiceName: "shop", DestinationServiceID: "shop-1", LocalServiceAddress: "127.0.0.1", LocalServicePort: app.port, Config: { protocol: "http" } },
  });
  await consulSidecar(t, d, ["-proxy-id", "shop-sidecar-proxy"]);
  const addr = `127.0.0.1:${pub}`;
  const web = await d.leaf("web");
  const ops = await d.leaf("ops");
  const ask = async (leaf: { certPem: string; keyPem: string }, method: string, path: string): Promise<number> => {
    const x = await exchange(tlsTo(addr, leaf), `${method} ${path} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n`, { done: hasResponses(1) });
    return parseResponses(x.data, { closed: x.closed })[0]?.status ?? 0;
  };
  t.equal(await ask(web, "GET", "/items/7"), 200, "GET /items/7: the allow permission");
  t.equal(await ask(web, "GET", "/admin/users"), 403, "GET /admin/users: the deny permission, first match");
  t.equal(await ask(web, "POST", "/items"), 403, "POST /items: no permission matches, so the default (deny)");
  t.equal(await ask(ops, "GET", "/items/7"), 403, "ops: no intention, the default (deny)");
  t.same(
    app.seen.map((s) => `${s.method} ${s.url}`),
    ["GET /items/7"],
    "only the allowed request reached the app",
  );
});

t.test("a malformed intentions answer at start: not ready, nothing listening; ready once the answer is good", { timeout: 60_000 }, async (t) => {
  const d = await startDouble(t, { defaultIntentionPolicy: "deny" });
  const app = await namedApp(t, "web-app");
  d.setIntentions("web", [{ source: "db", action: "allow" }]);
  d.fault("/v1/connect/intentions/match", "body:{}");
  const pub = await freePort();
  const web = runMeshproxy(t, ["-http-addr", d.url, "-service", "web", "-listen", `127.0.0.1:${pub}`, "-service-addr", `127.0.0.1:${app.port}`, "-log-json", "-admin-addr", "127.0.0.1:0"]);
  const admin = String((await web.waitForLog((l) => l["@message"] === "admin API listening"))["address"]);
  const err = await web.waitForLog((l) => l["@message"] === "control plane error; not serving (not ready, no listeners) until the configuration is fixed" && /^intentions: /.test(String(l["error"])));
  t.match(err["error"], /\$\.web: missing/, "the answer without the service is an error, naming the field");
  t.equal(await readyStatus(admin), 503, "/ready: 503");
  t.equal(await connectError(`127.0.0.1:${pub}`), "ECONNREFUSED", "the public listener is not bound: every caller is refused");

  d.fault("/v1/connect/intentions/match", "none");
  await web.waitForLog((l) => l["@message"] === "proxy ready");
  t.equal(await readyStatus(admin), 200, "/ready: 200 once the answer is good");
  t.equal(await reach(d, `127.0.0.1:${pub}`, await d.leaf("db")), "web-app\nhi\n", "and db gets through");
});
