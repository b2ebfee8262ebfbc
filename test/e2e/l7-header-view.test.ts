// What a header permission reads, end to end, as an attacker holding web's certificate would try
// it: Envoy's RBAC reads `host` as `:authority` and the pseudo-headers `:authority`, `:path` (the
// normalized target) and `:method` whatever the caller's protocol. So a deny on any of them must
// hold for an HTTP/2 caller that sends only `:authority` (the app gets it as its host), for a raw
// `:path` that normalizes into the denied path, and for HTTP/1.1 callers, which send no
// pseudo-headers at all. Both HTTP/1.1 engines and the HTTP/2 public listener are checked.
import t from "tap";
import { once } from "node:events";
import { rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createServer } from "node:http";
import { connect as h2connect, createServer as createH2Server, type OutgoingHttpHeaders } from "node:http2";
import { connect as tlsConnect } from "node:tls";
import type { AddressInfo, Socket } from "node:net";
import { startSidecar, tempDir, hostPort, type Sidecar } from "../helpers/mesh.js";
import { configDump, configWrite, until } from "../helpers/l7.js";
import { leafFor, readDevCa } from "../helpers/certs.js";
import { exchange, hasResponses, parseResponses, tlsTo } from "../helpers/raw-http.js";

const DENY_ALL_BUT = [
  { action: "deny", http: { header: [{ name: "host", exact: "admin.internal" }] } },
  { action: "deny", http: { header: [{ name: ":authority", exact: "admin2.internal" }] } },
  { action: "deny", http: { header: [{ name: ":path", prefix: "/secret" }] } },
  { action: "deny", http: { header: [{ name: ":method", exact: "DELETE" }] } },
  // Every caller arrives over mTLS: `:scheme` is https, whatever (or if ever) the caller says so.
  { action: "deny", http: { path_prefix: "/tls-denied", header: [{ name: ":scheme", exact: "https" }] } },
  // Only requests that carry a tenant reach /tenant.
  { action: "deny", http: { path_prefix: "/tenant", header: [{ name: "x-tenant", present: true, invert: true }] } },
  // An app may read one line of a repeated field (Go's Get: the first): x-role must be judged on each.
  { action: "deny", http: { path_prefix: "/role", header: [{ name: "x-role", exact: "admin" }] } },
  // Two repeated fields: an app may read the first line of one and the last of the other.
  { action: "deny", http: { path_prefix: "/acme", header: [{ name: "x-role", exact: "admin" }, { name: "x-tenant", exact: "acme" }] } },
  { action: "allow", http: { path_prefix: "/" } },
];
const POLICY = {
  default_action: "deny",
  intentions: [
    { source: "web", destination: "api", permissions: DENY_ALL_BUT },
    { source: "web", destination: "api2", permissions: DENY_ALL_BUT },
  ],
};

/** What reached an app: `host` is the HTTP/1.1 Host or the HTTP/2 :authority it acted on. */
const hits: Array<{ method: string; url: string; host: string; tenant?: string | string[] | undefined }> = [];
const h1App = createServer((req, res) => {
  hits.push({ method: req.method ?? "", url: req.url ?? "", host: req.headers.host ?? "", tenant: req.headers["x-tenant"] });
  res.end("ok");
});
const h2App = createH2Server((req, res) => {
  hits.push({ method: req.method, url: req.url, host: req.authority });
  res.end("ok");
});
/** The bytes the HTTP/1.1 app read, for the fields a request head carried on the wire. */
const appBytes: string[] = [];
h1App.on("connection", (c: Socket) => c.on("data", (d: Buffer) => appBytes.push(d.toString("latin1"))));
for (const s of [h1App, h2App]) {
  s.listen(0, "127.0.0.1");
  await once(s, "listening");
}
t.teardown(() => {
  h1App.closeAllConnections();
  h1App.close();
  h2App.close();
});

const dir = await tempDir(t);
await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
await configWrite(t, dir, { Kind: "service-defaults", Name: "api2", Protocol: "http2" });
const file = join(dir, "intentions.json");
await writeFile(`${file}.tmp`, JSON.stringify(POLICY));
await rename(`${file}.tmp`, file);
const port = (s: typeof h1App | typeof h2App) => (s.address() as AddressInfo).port;
const api: Sidecar = await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${port(h1App)}`]);
const apiNode: Sidecar = await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${port(h1App)}`], { MESHPROXY_HTTP1_CORE: "node" });
const api2: Sidecar = await startSidecar(t, dir, ["-service", "api2", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${port(h2App)}`]);
for (const s of [api, apiNode, api2]) await until(async () => JSON.stringify(await configDump(s.adminAddr)).includes("admin2.internal"), 10_000, "the L7 intentions to be applied");
const ca = await readDevCa(dir);
const webLeaf = await leafFor(ca, "web");

const ENGINES: Array<[string, Sidecar]> = [
  ["HTTP/1.1, llhttp core", api],
  ["HTTP/1.1, node:http engine", apiNode],
];
for (const [name, sidecar] of ENGINES) {
  t.test(`${name}: pseudo-header permissions read the request's own fields`, async (t) => {
    const send = async (line: string, host: string) => {
      hits.length = 0;
      const x = await exchange(tlsTo(sidecar.publicAddr!, webLeaf), `${line}\r\nHost: ${host}\r\nConnection: close\r\n\r\n`, { done: hasResponses(1) });
      return parseResponses(x.data, { closed: x.closed })[0]?.status;
    };
    t.equal(await send("GET /public HTTP/1.1", "api"), 200, "control: an allowed request is served");
    t.equal(await send("GET /public HTTP/1.1", "admin.internal"), 403, "control: a host rule denies Host");
    t.equal(await send("GET /public HTTP/1.1", "admin2.internal"), 403, "an :authority rule denies Host");
    t.equal(await send("GET /secret/x HTTP/1.1", "api"), 403, "a :path rule denies the path");
    t.equal(await send("GET /public/..//secret HTTP/1.1", "api"), 403, "a :path rule denies the normalized path");
    t.equal(await send("DELETE /public HTTP/1.1", "api"), 403, "a :method rule denies the method");
    t.equal(await send("GET /tls-denied HTTP/1.1", "api"), 403, "a :scheme rule reads https though HTTP/1.1 sends no scheme");
    t.same(hits, [], "the app saw none of the denied requests");
  });

  // RFC 9110 §7.6.1: the sidecar drops the fields a caller's Connection header nominates, so the
  // app never gets them. Authorized as present, such a field let a request through that the app
  // then received without it: a deny on its absence did not hold.
  t.test(`${name}: a field the caller's Connection header nominates is read as absent, as the app gets it`, async (t) => {
    const send = async (fields: string) => {
      hits.length = 0;
      const x = await exchange(tlsTo(sidecar.publicAddr!, webLeaf), `GET /tenant HTTP/1.1\r\nHost: api\r\n${fields}\r\n`, { done: hasResponses(1) });
      return parseResponses(x.data, { closed: x.closed })[0]?.status;
    };
    t.equal(await send("x-tenant: a\r\nConnection: close\r\n"), 200, "control: a request with a tenant is served");
    t.same(hits.map((h) => h.tenant), ["a"], "with its tenant");
    t.equal(await send("Connection: close\r\n"), 403, "control: one without is denied");
    t.equal(await send("x-tenant: a\r\nConnection: close, x-tenant\r\n"), 403, "one whose tenant the sidecar would drop is denied too");
    t.equal(await send("x-tenant: a\r\nConnection: X-Tenant\r\nConnection: close\r\n"), 403, "nominated in another Connection line, in another case");
    const upgrade = "Upgrade: websocket\r\nConnection: Upgrade, x-tenant\r\nx-tenant: a\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    t.equal(await send(upgrade), 403, "an upgrade request's too");
    t.same(hits, [], "the app never got a /tenant request without its tenant");
  });

  // CVE-2026-26308 in Envoy: `x-role: user` then `x-role: admin` is "user, admin" joined, which a
  // deny on admin does not match, while an app that reads one line reads admin.
  t.test(`${name}: a field sent as several lines is judged on each line an app may read`, async (t) => {
    const send = async (fields: string, upgrade = false, path = "/role") => {
      hits.length = 0;
      appBytes.length = 0;
      const up = upgrade ? "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" : "Connection: close\r\n";
      const x = await exchange(tlsTo(sidecar.publicAddr!, webLeaf), `GET ${path} HTTP/1.1\r\nHost: api\r\n${fields}${up}\r\n`, { done: hasResponses(1) });
      return parseResponses(x.data, { closed: x.closed })[0]?.status;
    };
    t.equal(await send("x-role: user\r\n"), 200, "control: user is served");
    t.equal(await send("x-role: admin\r\n"), 403, "control: admin is denied");
    t.equal(await send("x-role: user\r\nx-role: user\r\n"), 200, "two lines every reading agrees on are served");
    for (const [first, second] of [["user", "admin"], ["admin", "user"]]) {
      for (const upgrade of [false, true]) {
        const what = `${upgrade ? "an upgrade request" : "a request"} with x-role ${first} then ${second}`;
        const status = await send(`x-role: ${first}\r\nX-Role: ${second}\r\n`, upgrade);
        const wire = appBytes.join("");
        if (status === 200) {
          // Served only when the app got the value that was judged, as one line (node:http joins them).
          t.match(wire, new RegExp(`\r\nx-role: ${first}, ${second}\r\n`, "i"), `${what}: served only as the one joined line that was judged`);
          t.notMatch(wire, /\r\nx-role: admin\r\n/i, `${what}: never the admin line alone`);
        } else {
          t.equal(status, 403, `${what}: denied`);
          t.same(hits, [], `${what}: the app never saw it`);
        }
      }
    }
    // Line by line (admin with other, user with acme) no reading is an admin of acme; the first
    // x-role with the last x-tenant is.
    t.equal(await send("x-role: admin\r\nx-tenant: acme\r\n", false, "/acme"), 403, "control: an admin of acme is denied");
    for (const upgrade of [false, true]) {
      const what = `${upgrade ? "an upgrade request" : "a request"} with x-role admin then user, x-tenant other then acme`;
      const status = await send("x-role: admin\r\nx-tenant: other\r\nX-Role: user\r\nX-Tenant: acme\r\n", upgrade, "/acme");
      const wire = appBytes.join("");
      if (status === 200) {
        t.match(wire, /\r\nx-role: admin, user\r\n/i, `${what}: served only as the joined lines that were judged`);
        t.notMatch(wire, /\r\nx-tenant: acme\r\n/i, `${what}: never the acme line alone`);
      } else {
        t.equal(status, 403, `${what}: denied`);
        t.same(hits, [], `${what}: the app never saw it`);
      }
    }
  });

  t.test(`${name}: an upgrade request's repeated Host reaches the app as the one line authorized`, async (t) => {
    appBytes.length = 0;
    const head = "GET /ws HTTP/1.1\r\nHost: api\r\nHost: admin.internal\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    const x = await exchange(tlsTo(sidecar.publicAddr!, webLeaf), head, { done: hasResponses(1) });
    t.equal(parseResponses(x.data, { closed: x.closed })[0]?.status, 200, "authorized on its first Host line and relayed (the app does not upgrade)");
    const wire = appBytes.join("");
    t.match(wire, /^GET \/ws HTTP\/1\.1\r\n/, "the app got the request");
    t.notMatch(wire, /admin\.internal/i, "and not the Host line that was never authorized (an app reading the last one would act on it)");
  });
}

t.test("HTTP/2 to an http2 service: host, :authority, :path, :method and :scheme rules hold", async (t) => {
  const { host, port: p } = hostPort(api2.publicAddr!);
  const s = h2connect(`https://${host}:${p}`, {
    createConnection: () => tlsConnect({ host, port: p, cert: webLeaf.certPem, key: webLeaf.keyPem, ca: [ca.certPem], ALPNProtocols: ["h2"], checkServerIdentity: () => undefined }),
  });
  t.teardown(() => s.close());
  const ask = (h: OutgoingHttpHeaders) =>
    new Promise<number>((resolve, reject) => {
      hits.length = 0;
      const st = s.request(h);
      let status = 0;
      st.on("response", (r) => (status = Number(r[":status"])));
      st.resume();
      st.on("end", () => resolve(status));
      st.on("error", reject);
      st.end();
    });
  t.equal(await ask({ ":method": "GET", ":path": "/public", ":authority": "api2" }), 200, "control: an allowed request is served");
  t.equal(await ask({ ":method": "GET", ":path": "/public", ":authority": "x", host: "admin.internal" }), 403, "control: a host rule denies a host field");
  t.equal(await ask({ ":method": "GET", ":path": "/public", ":authority": "admin.internal" }), 403, "a host rule denies :authority sent without host (the app's host)");
  t.same(hits, [], "the app never acted on host admin.internal");
  t.equal(await ask({ ":method": "GET", ":path": "/public", ":authority": "admin2.internal" }), 403, "an :authority rule denies :authority");
  t.equal(await ask({ ":method": "GET", ":path": "/public", ":authority": "admin2.internal", host: "api2" }), 200, "the app's host is the host field then, and it is allowed");
  t.equal(hits[0]?.host, "api2", "the app acted on that host");
  t.equal(await ask({ ":method": "GET", ":path": "//secret", ":authority": "api2" }), 403, "a :path rule denies the normalized :path");
  t.equal(await ask({ ":method": "GET", ":path": "/public/../secret", ":authority": "api2" }), 403, "also through dot segments");
  t.equal(await ask({ ":method": "DELETE", ":path": "/public", ":authority": "api2" }), 403, "a :method rule denies the method");
  t.equal(await ask({ ":method": "GET", ":scheme": "http", ":path": "/tls-denied", ":authority": "api2" }), 403, "a :scheme rule reads https though the caller says http");
  t.same(hits, [], "the app saw none of the denied requests");
});
