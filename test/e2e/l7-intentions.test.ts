// L7 intentions end to end: permissions with path, method and header matches in the dev control
// plane's intentions.json (Consul's snake_case and PascalCase), enforced per request by the
// destination's sidecar with Consul's precedence; a denied request gets 403 UAEX and the
// connection stays usable; paths are normalized before they are authorized; on a tcp service an
// L7 intention denies the connection.
//
//   web, ops ─▶ api (http, echo app) and db (tcp, echo server)
import t from "tap";
import { rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import { Client } from "undici";
import { echoServer, hostPort, roundTrip, runMeshproxy, startSidecar, tempDir, type LogLine } from "../helpers/mesh.js";
import { configDump, configWrite, metric, until } from "../helpers/l7.js";
import { scriptedApp } from "../helpers/l7-apps.js";
import { leafFor, readDevCa } from "../helpers/certs.js";
import { exchange, hasResponses, parseResponses, plainTo, tlsTo, type Opener } from "../helpers/raw-http.js";

const POLICY = {
  default_action: "deny",
  intentions: [
    {
      source: "web",
      destination: "api",
      description: "web reads invoices and reports",
      permissions: [
        { action: "deny", http: { path_exact: "/invoices/secret" } },
        { action: "allow", http: { path_prefix: "/invoices", methods: ["GET", "PUT"] } },
        { action: "allow", http: { path_prefix: "/reports", header: [{ name: "x-role", exact: "auditor" }] } },
        { action: "allow", http: { path_regex: "/public/[a-z]+" } },
        { action: "deny", http: { path_prefix: "/api/admin" } },
        { action: "allow", http: { path_prefix: "/api/" } },
      ],
    },
    // Consul's PascalCase works too: anyone else may do anything on api.
    { source: "*", destination: "api", Permissions: [{ Action: "allow", HTTP: { PathPrefix: "/" } }] },
    { source: "web", destination: "db", permissions: [{ action: "allow", http: {} }] },
    { source: "ops", destination: "db", action: "allow" },
  ],
};

const dir = await tempDir(t);
await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
const app = await scriptedApp(t, "api", { echo: true });
const echo = await echoServer(t);
const api = await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`]);
const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0", "-upstream", "db:0"]);
const ops = await startSidecar(t, dir, ["-service", "ops", "-upstream", "api:0", "-upstream", "db:0"]);
// A hand edit, saved the way editors do (write a temp file, rename it over).
const file = join(dir, "intentions.json");
await writeFile(`${file}.tmp`, JSON.stringify(POLICY, null, 2));
await rename(`${file}.tmp`, file);
interface AppliedIntention {
  source: string;
  destination: string;
  action: string;
  permissions?: unknown[];
}
function isAppliedIntention(v: unknown): v is AppliedIntention {
  return (
    typeof v === "object" &&
    v !== null &&
    "source" in v &&
    typeof v.source === "string" &&
    "destination" in v &&
    typeof v.destination === "string" &&
    "action" in v &&
    typeof v.action === "string" &&
    (!("permissions" in v) || v.permissions === undefined || Array.isArray(v.permissions))
  );
}
/** The intentions in a sidecar's applied Snapshot. */
async function applied(adminAddr: string): Promise<AppliedIntention[]> {
  const d = await configDump(adminAddr);
  if (typeof d !== "object" || d === null || !("intentions" in d)) return [];
  const p = d.intentions;
  if (typeof p !== "object" || p === null || !("intentions" in p) || !Array.isArray(p.intentions)) return [];
  const list: unknown[] = p.intentions;
  if (!list.every(isAppliedIntention)) throw new Error(`${adminAddr}: malformed intentions in the config dump: ${JSON.stringify(list)}`);
  return list;
}
for (const s of [api, db]) await until(async () => (await applied(s.adminAddr)).length === POLICY.intentions.length, 10_000, "the sidecars to apply the L7 intentions");
const ca = await readDevCa(dir);
const webLeaf = await leafFor(ca, "web");

/** One keep-alive connection (undici Client) that counts how often it had to connect. */
function oneConnection(t: { teardown(fn: () => unknown): void }, origin: string, tls?: { certPem: string; keyPem: string }): { client: Client; connects: () => number } {
  let n = 0;
  const { host, port } = hostPort(origin);
  const client = new Client(`${tls ? "https" : "http"}://${origin}`, {
    pipelining: 1,
    ...(tls
      ? {
          connect: (_opts, cb) => {
            n++;
            const s = tlsConnect({ host, port, cert: tls.certPem, key: tls.keyPem, rejectUnauthorized: false, ALPNProtocols: ["http/1.1"] });
            s.once("secureConnect", () => cb(null, s));
            s.once("error", (e: Error) => cb(e, null));
          },
        }
      : {}),
  });
  if (!tls) client.on("connect", () => n++);
  t.teardown(() => client.close());
  return { client, connects: () => n };
}

async function status(c: Client, method: "GET" | "POST" | "PUT" | "DELETE", path: string, headers: Record<string, string> = {}): Promise<{ status: number; flags: string; body: string }> {
  const r = await c.request({ method, path, headers });
  const body = await r.body.text();
  return { status: r.statusCode, flags: String(r.headers["x-meshproxy-response-flags"] ?? ""), body };
}

const CASES: Array<{ method: "GET" | "POST" | "PUT" | "DELETE"; path: string; headers?: Record<string, string>; allowed: boolean; why: string }> = [
  { method: "GET", path: "/invoices/1", allowed: true, why: "GET under /invoices (permission 2)" },
  { method: "PUT", path: "/invoices", allowed: true, why: "PUT is in its methods too" },
  { method: "POST", path: "/invoices/1", allowed: false, why: "POST is not in permission 2's methods; nothing else matches: default deny" },
  { method: "GET", path: "/invoices/secret", allowed: false, why: "the exact deny (permission 1) comes before the prefix allow" },
  { method: "GET", path: "/invoices/secret/x", allowed: true, why: "path_exact is exact: /invoices/secret/x falls to permission 2" },
  { method: "GET", path: "/reports/q1", headers: { "x-role": "auditor" }, allowed: true, why: "the header matches (permission 3)" },
  { method: "GET", path: "/reports/q1", headers: { "x-role": "intern" }, allowed: false, why: "another header value" },
  { method: "GET", path: "/reports/q1", allowed: false, why: "no header" },
  { method: "GET", path: "/public/abc", allowed: true, why: "the regex (permission 4)" },
  { method: "GET", path: "/public/abc1", allowed: false, why: "the regex is a full match" },
  { method: "GET", path: "/api/users", allowed: true, why: "/api/ is allowed (permission 6)" },
  { method: "GET", path: "/api/admin/x", allowed: false, why: "/api/admin is denied first (permission 5)" },
  { method: "DELETE", path: "/other", allowed: false, why: "web's own intention is terminal: the wildcard's allow-all does not apply to web" },
];

t.test("permissions decide per request; a 403 leaves the keep-alive connection usable", async (t) => {
  const denied0 = await metric(api.adminAddr, "meshproxy_inbound_rejected_total", { reason: "denied_by_intention" });
  const targets: Array<{ name: string; origin: string; tls?: { certPem: string; keyPem: string }; cxMetric?: boolean }> = [
    { name: "through web's sidecar", origin: web.upstreams["api"]! },
    { name: "straight to api's public listener as web", origin: api.publicAddr!, tls: webLeaf },
  ];
  let denials = 0;
  for (const target of targets) {
    const { client, connects } = oneConnection(t, target.origin, target.tls);
    const apiCx = await metric(api.adminAddr, "envoy_listener_downstream_cx_total", { envoy_listener_address: api.publicAddr! });
    const seen0 = app.seen.length;
    let allowedN = 0;
    for (const c of CASES) {
      const r = await status(client, c.method, c.path, c.headers);
      if (c.allowed) {
        allowedN++;
        t.equal(r.status, 200, `${target.name}: ${c.method} ${c.path} allowed: ${c.why}`);
      } else {
        denials++;
        t.equal(r.status, 403, `${target.name}: ${c.method} ${c.path} denied with 403: ${c.why}`);
        t.equal(r.flags, "UAEX", "flagged UAEX");
      }
    }
    t.equal(connects(), 1, `${target.name}: every request, denied or not, went over one connection`);
    if (!target.tls) t.equal(await metric(api.adminAddr, "envoy_listener_downstream_cx_total", { envoy_listener_address: api.publicAddr! }), apiCx, "and web's pooled connection to api was not replaced after a 403");
    t.equal(app.seen.length - seen0, allowedN, `${target.name}: the app saw only the ${allowedN} allowed requests`);
  }
  t.equal((await metric(api.adminAddr, "meshproxy_inbound_rejected_total", { reason: "denied_by_intention" })) - denied0, denials, `meshproxy_inbound_rejected_total{reason="denied_by_intention"} counted the ${denials} denials`);
  const line = api.logs.find((l: LogLine) => l["@message"] === "request denied by intention" && l["path"] === "/invoices/secret");
  t.equal(line?.["reason"], "Matched L7 intention: web => api (permission 1: deny)", "the log names the intention and the permission");
});

t.test("precedence: ops falls to the wildcard intention, web to its own", async (t) => {
  const { client } = oneConnection(t, ops.upstreams["api"]!);
  for (const c of CASES) t.equal((await status(client, c.method, c.path, c.headers)).status, 200, `ops: ${c.method} ${c.path} allowed by * => api`);
});

t.test("paths are normalized before they are authorized", async (t) => {
  const seen0 = app.seen.length;
  const targets: Array<[string, Opener]> = [
    ["through web's sidecar", plainTo(web.upstreams["api"]!)],
    ["straight to api's public listener", tlsTo(api.publicAddr!, webLeaf)],
  ];
  for (const [name, open] of targets) {
    // The last two are absolute-form targets (as clients send to a proxy): their path is what counts.
    for (const path of ["/api/./admin", "/api/%61dmin", "/api/users/../admin", "/api/%61dmin/x", "http://api/api/admin", "http://api/api/./admin?x=1"]) {
      const x = await exchange(open, `GET ${path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n`, { done: hasResponses(1) });
      const [r] = parseResponses(x.data, { closed: x.closed });
      t.equal(r?.status, 403, `${name}: GET ${path} is /api/admin… and denied by the rule on /api/admin`);
    }
    for (const [target, seenAs] of [
      ["/api/./users/%61", "/api/users/a"],
      ["http://api/api/users?q=1", "/api/users?q=1"],
    ]) {
      const x = await exchange(open, `GET ${target} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n`, { done: hasResponses(1) });
      const [r] = parseResponses(x.data, { closed: x.closed });
      t.equal(r?.status, 200, `${name}: control: GET ${target} is allowed`);
      const echoed: unknown = JSON.parse(r?.body.toString() ?? "{}");
      t.match(echoed, { url: seenAs }, `${name}: and the app gets the origin-form, normalized path it was authorized for: ${seenAs}`);
    }
  }
  t.equal(app.seen.length - seen0, 4, "the app saw only the four allowed requests");
});

t.test("an L7 intention on a tcp service denies connections", async (t) => {
  const refused = db.waitForLog((l) => l["@message"] === "inbound connection refused" && l["source"] === "web");
  const fromWeb = await roundTrip(web.upstreams["db"]!, "ping\n", 5000).catch(() => Buffer.alloc(0));
  t.equal(fromWeb.length, 0, "web's connection to db gets nothing back");
  t.match(String((await refused)["detail"]), /^Matched L7 intention: web => db \(L4 connections are denied/, "db refused it because of the L7 intention");
  const fromOps = await roundTrip(ops.upstreams["db"]!, "ping\n", 5000);
  t.equal(fromOps.toString(), "ping\n", "control: ops (an L4 allow) reaches db");
});

t.test("a bad permission is reported and the previous intentions stay in force", async (t) => {
  const broken = { ...POLICY, intentions: [{ source: "web", destination: "api", permissions: [{ action: "allow", http: { path_regex: "(?=lookahead)" } }] }] };
  const logged = api.waitForLog((l) => l["@message"] === "control plane error; serving on the last good snapshot" && String(l["error"]).includes("permissions[0].path.regex"));
  await writeFile(`${file}.tmp`, JSON.stringify(broken));
  await rename(`${file}.tmp`, file);
  t.match(String((await logged)["error"]), /intentions\[0\]\.permissions\[0\]\.path\.regex: invalid regular expression/, "the error names the field");
  const { client } = oneConnection(t, web.upstreams["api"]!);
  t.equal((await status(client, "GET", "/invoices/secret")).status, 403, "the previous policy still denies /invoices/secret");
  t.equal((await status(client, "GET", "/invoices/1")).status, 200, "and allows /invoices/1");
});

t.test("the intention CLI keeps L7 intentions when it edits the file", async (t) => {
  await writeFile(`${file}.tmp`, JSON.stringify(POLICY));
  await rename(`${file}.tmp`, file);
  const create = runMeshproxy(t, ["intention", "create", "-deny", "ops", "api", "-data-dir", dir]);
  t.equal(await create.exited, 0, "intention create -deny ops api");
  const list = runMeshproxy(t, ["intention", "list", "-data-dir", dir]);
  t.equal(await list.exited, 0, "intention list");
  t.match(list.stdoutText(), /^web\s+=>\s+api\s+L7\s+9\s+web reads invoices and reports$/m, "the L7 intention is still there, listed as L7");
  await until(async () => (await applied(api.adminAddr)).some((it) => it.source === "ops" && it.destination === "api"), 10_000, "api to apply the edit");
  const { client } = oneConnection(t, web.upstreams["api"]!);
  t.equal((await status(client, "GET", "/invoices/secret")).status, 403, "web's permissions still apply: /invoices/secret denied");
  t.equal((await status(client, "GET", "/invoices/1")).status, 200, "/invoices/1 allowed");
  const opsClient = oneConnection(t, ops.upstreams["api"]!).client;
  t.equal((await status(opsClient, "GET", "/invoices/1")).status, 403, "and the new L4 deny for ops applies to its next request, over the pooled connection ops's sidecar already had");
});
