// Authorization bypasses through the request target and through upgrades, end to end, as an
// attacker would try them: raw sockets through web's upstream listener and straight to api's
// public listener with a dev-CA leaf for web, and HTTP/2 `:path` to an http2 service. The
// intentions are web → api: deny exact /secret, allow prefix /, default deny.
//
// The app is a raw-socket HTTP/1.1 server that keeps parsing requests on a connection whatever
// it answered, as many apps do when they decline an upgrade: a proxy that joined the sockets
// early would let a second request through unchecked.
import t from "tap";
import { once } from "node:events";
import { rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createServer as createNetServer, type AddressInfo, type Socket } from "node:net";
import { connect as h2connect, createServer as createH2Server, type ClientHttp2Session } from "node:http2";
import { connect as tlsConnect } from "node:tls";
import { startSidecar, tempDir, hostPort, type Sidecar } from "../helpers/mesh.js";
import { configDump, configWrite, metric, until } from "../helpers/l7.js";
import { leafFor, readDevCa } from "../helpers/certs.js";
import { exchange, hasResponses, parseResponses, plainTo, tlsTo, type Opener } from "../helpers/raw-http.js";

interface Hit {
  readonly url: string;
  readonly headers: Record<string, string>;
}
const hits: Hit[] = [];
const seen = (path: string) => hits.filter((h) => h.url === path || h.url.startsWith(`${path}?`));

/** One connection of the raw app: requests without bodies, answered in order; `/ws…` with Upgrade: websocket switches to an echo. */
function serveRaw(s: Socket): void {
  let buf = Buffer.alloc(0);
  let echo = false;
  s.on("error", () => s.destroy());
  s.on("data", (d: Buffer) => {
    if (echo) return void s.write(d);
    buf = Buffer.concat([buf, d]);
    for (;;) {
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      const lines = buf.subarray(0, end).toString("latin1").split("\r\n");
      buf = buf.subarray(end + 4);
      const url = (lines[0] ?? "").split(" ")[1] ?? "";
      const headers: Record<string, string> = {};
      for (const l of lines.slice(1)) {
        const i = l.indexOf(":");
        if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
      }
      hits.push({ url, headers });
      if (url.startsWith("/ws") && (headers["upgrade"] ?? "").toLowerCase() === "websocket") {
        s.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        echo = true;
        if (buf.length > 0) s.write(buf);
        return;
      }
      const body = JSON.stringify({ url, upgrade: headers["upgrade"] ?? null });
      s.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    }
  });
}

const rawApp = createNetServer(serveRaw);
rawApp.listen(0, "127.0.0.1");
await once(rawApp, "listening");
const appSockets = new Set<Socket>();
rawApp.on("connection", (s: Socket) => {
  appSockets.add(s);
  s.once("close", () => appSockets.delete(s));
});
t.teardown(() => {
  for (const s of appSockets) s.destroy();
  rawApp.close();
});

const POLICY = {
  default_action: "deny",
  intentions: [
    {
      source: "web",
      destination: "api",
      permissions: [
        { action: "deny", http: { path_exact: "/secret" } },
        { action: "allow", http: { path_prefix: "/" } },
      ],
    },
    { source: "web", destination: "api2", permissions: [{ action: "deny", http: { path_exact: "/secret" } }, { action: "allow", http: { path_prefix: "/" } }] },
  ],
};

const dir = await tempDir(t);
await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
await configWrite(t, dir, { Kind: "service-defaults", Name: "api2", Protocol: "http2" });
const file = join(dir, "intentions.json");
await writeFile(`${file}.tmp`, JSON.stringify(POLICY));
await rename(`${file}.tmp`, file);

// api2: an http2 service whose app speaks h2c and echoes the path it got.
const h2Hits: string[] = [];
const h2App = createH2Server((req, res) => {
  h2Hits.push(req.url);
  res.end(JSON.stringify({ url: req.url }));
});
h2App.listen(0, "127.0.0.1");
await once(h2App, "listening");
t.teardown(() => new Promise<void>((r) => h2App.close(() => r())));

const api: Sidecar = await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${(rawApp.address() as AddressInfo).port}`]);
const api2: Sidecar = await startSidecar(t, dir, ["-service", "api2", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${(h2App.address() as AddressInfo).port}`]);
const web: Sidecar = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0", "-upstream", "api2:0"]);
async function intentionsApplied(s: Sidecar): Promise<boolean> {
  const d = await configDump(s.adminAddr);
  return JSON.stringify(d).includes('"/secret"');
}
for (const s of [api, api2]) await until(() => intentionsApplied(s), 10_000, "the L7 intentions to be applied");
const webLeaf = await leafFor(await readDevCa(dir), "web");

const TARGETS: Array<{ name: string; open: Opener; refusals: () => Promise<number> }> = [
  {
    name: "through web's upstream listener",
    open: plainTo(web.upstreams["api"]!),
    refusals: async () => (await metric(web.adminAddr, "meshproxy_outbound_rejected_total")) + (await metric(api.adminAddr, "meshproxy_inbound_rejected_total", { reason: "invalid_request_target" })),
  },
  {
    name: "straight to api's public listener",
    open: tlsTo(api.publicAddr!, webLeaf),
    refusals: () => metric(api.adminAddr, "meshproxy_inbound_rejected_total", { reason: "invalid_request_target" }),
  },
];

function first(x: { data: Buffer; closed: boolean }): { status: number; headers: Record<string, string>; body: string } | undefined {
  const r = parseResponses(x.data, { closed: x.closed }).find((r) => r.status >= 200);
  return r ? { status: r.status, headers: r.headers, body: r.body.toString() } : undefined;
}

async function get(open: Opener, target: string, extra = ""): Promise<{ status: number; headers: Record<string, string>; body: string } | undefined> {
  return first(await exchange(open, `GET ${target} HTTP/1.1\r\nHost: api\r\n${extra}Connection: close\r\n\r\n`, { done: hasResponses(1) }));
}

for (const tg of TARGETS) {
  t.test(`${tg.name}: request targets`, async (t) => {
    const refusals0 = await tg.refusals();
    const r = await get(tg.open, "/secret");
    t.equal(r?.status, 403, "control: GET /secret is denied");

    const fragment = await get(tg.open, "/secret#x");
    t.equal(fragment?.status, 400, "GET /secret#x: 400 (a fragment is refused, as Envoy does)");
    t.equal(fragment?.headers["x-meshproxy-response-flags"], "DPE", "flagged DPE");
    t.match(fragment?.body, /fragment/, "the body says why");

    for (const target of ["/public\\..\\secret", "/public/..\\secret", "//secret", "/public/%2e%2e/secret", "/secre%74", "/./secret", "http://api/public/../secret"]) {
      t.equal((await get(tg.open, target))?.status, 403, `GET ${target} is /secret and denied`);
    }
    for (const target of ["/secret;x", "/public/..;/secret", "/public%2F..%2Fsecret", "/public/..%5Csecret", "/%00/secret", "http://x@api/secret"]) {
      t.equal((await get(tg.open, target))?.status, 400, `GET ${target}: 400`);
    }
    t.same(seen("/secret"), [], "the app never saw /secret");

    const ok = await get(tg.open, "/public/a/..\\b//c/%7e?q=1#");
    t.equal(ok?.status, 400, "a fragment in an allowed request is refused too");
    const allowed = await get(tg.open, "/public/a/..\\b//c/%7e?q=/../x");
    t.equal(allowed?.status, 200, "an allowed target with backslash, dot segments, double slash and an escape: 200");
    t.match(JSON.parse(allowed?.body ?? "{}"), { url: "/public/b/c/~?q=/../x" }, "the app gets the canonical path that was authorized, the query untouched");
    t.ok((await tg.refusals()) - refusals0 >= 8, "the refusals were counted");
  });

  t.test(`${tg.name}: upgrades`, async (t) => {
    await t.test("the app answers 200 to an upgrade; a second request on the connection never reaches it", async (t) => {
      const smuggle = "GET /public HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /secret HTTP/1.1\r\nHost: api\r\n\r\n";
      const x = await exchange(tg.open, smuggle, { timeoutMs: 5000 });
      const rs = parseResponses(x.data, { closed: x.closed });
      t.equal(rs[0]?.status, 200, "the app's 200 to the declined upgrade is relayed");
      t.ok(rs.length === 1 && x.closed, "then the connection closes: no second answer");
      // Sent after the first answer arrived, too.
      const public2 = seen("/public2").length;
      const s = await tg.open();
      t.teardown(() => s.destroy());
      const got: Buffer[] = [];
      s.on("data", (d: Buffer) => got.push(d));
      let closed = false;
      const whenClosed = once(s, "close").then(() => (closed = true));
      s.write("GET /public2 HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
      await until(() => hasResponses(1)(Buffer.concat(got)), 5000, "the answer to /public2");
      if (!s.destroyed) s.write("GET /secret HTTP/1.1\r\nHost: api\r\n\r\n");
      await Promise.race([whenClosed, new Promise((r) => setTimeout(r, 5000))]);
      t.ok(closed, "the proxy closed the connection after relaying the answer");
      t.equal(parseResponses(Buffer.concat(got), { closed: true }).length, 1, "one answer only");
      t.same(seen("/secret"), [], "the app never saw /secret");
      t.equal(seen("/public2").length - public2, 1, "control: it saw /public2");
    });

    await t.test("the app answers 101 to websocket: joined, data flows both ways, with the caller's identity", async (t) => {
      const s = await tg.open();
      t.teardown(() => s.destroy());
      const got: Buffer[] = [];
      s.on("data", (d: Buffer) => got.push(d));
      s.write("GET /ws?room=1 HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nearly");
      await until(() => Buffer.concat(got).includes("early"), 5000, "the 101 and the early bytes echoed");
      t.match(Buffer.concat(got).toString(), /^HTTP\/1\.1 101 Switching Protocols\r\n/, "101 from the app");
      s.write("ping");
      await until(() => Buffer.concat(got).toString().endsWith("earlyping"), 5000, "ping echoed");
      t.pass("bytes sent before and after the 101 came back");
      const hit = seen("/ws").at(-1);
      t.equal(hit?.url, "/ws?room=1", "the app got the canonical target");
      t.match(hit?.headers["x-forwarded-client-cert"] ?? "", /URI=spiffe:\/\/[^;]+\/svc\/web$/, "with x-forwarded-client-cert");
    });

    await t.test("an upgrade request is authorized like any other", async (t) => {
      const x = await exchange(tg.open, "GET /public/../secret HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", { timeoutMs: 5000 });
      t.equal(first(x)?.status, 403, "GET /public/../secret with Upgrade: 403");
      const frag = await exchange(tg.open, "GET /ws#x HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", { timeoutMs: 5000 });
      t.equal(first(frag)?.status, 400, "GET /ws#x with Upgrade: 400");
      t.same(seen("/secret"), [], "the app never saw /secret");
    });

    await t.test("an upgrade the route does not allow is refused with 403 and never joined", async (t) => {
      const before = hits.length;
      const x = await exchange(tg.open, "GET /ws-foo HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\nGET /secret HTTP/1.1\r\nHost: api\r\n\r\n", { timeoutMs: 5000 });
      t.equal(first(x)?.status, 403, "Upgrade: foo → 403");
      t.ok(x.closed, "and the connection is closed");
      t.equal(hits.length, before, "the app saw nothing");
      const body = await exchange(tg.open, "GET /ws HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello", { timeoutMs: 5000 });
      t.equal(first(body)?.status, 400, "an upgrade request with a body → 400");
      t.equal(hits.length, before, "the app saw nothing");
    });

    // The bytes after a refused upgrade, sent only once the refusal has arrived (a client that
    // waits for the answer, then goes on as if it had been switched): still nothing reaches
    // the app unchecked, whether the proxy reads them as a new request or closes.
    for (const refused of [
      { name: "denied by intention", request: "GET /secret HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", status: 403 },
      { name: "an upgrade the route does not allow", request: "GET /ws-foo HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n", status: 403 },
    ]) {
      for (const follow of [
        { name: "a request for /secret", bytes: "GET /secret HTTP/1.1\r\nHost: api\r\n\r\n" },
        { name: "a masked websocket frame, then a request", bytes: Buffer.concat([Buffer.from([0x81, 0x85, 1, 2, 3, 4, 0x69, 0x67, 0x6f, 0x68, 0x6e]), Buffer.from("GET /secret HTTP/1.1\r\nHost: api\r\n\r\n")]) },
      ]) {
        await t.test(`${refused.name}; ${follow.name} in a later segment never reaches the app`, async (t) => {
          const before = hits.length;
          const s = await tg.open();
          t.teardown(() => s.destroy());
          const got: Buffer[] = [];
          s.on("data", (d: Buffer) => got.push(d));
          let closed = false;
          s.once("close", () => (closed = true));
          s.write(refused.request);
          await until(() => closed || hasResponses(1)(Buffer.concat(got)), 5000, "the refusal");
          const rs = parseResponses(Buffer.concat(got), { closed });
          t.equal(rs[0]?.status, refused.status, `refused with ${refused.status}`);
          if (!s.destroyed) s.write(follow.bytes);
          // Either the proxy closes the connection or it answers the follow-up itself: wait for either.
          await until(() => closed || parseResponses(Buffer.concat(got), { closed: false }).length >= 2, 5000, "the connection to close or a second answer");
          const after = parseResponses(Buffer.concat(got), { closed: true });
          t.ok(closed || after.length >= 2, `the proxy closed the connection or answered the follow-up (${closed ? "closed" : "answered"}, ${after.length} answers)`);
          for (const r of after.slice(1)) t.ok(r.status === 400 || r.status === 403, `a second answer is a refusal (${r.status})`);
          t.same(seen("/secret"), [], "the app never saw /secret");
          t.equal(hits.length, before, "the app saw nothing of this connection");
        });
      }
    }

    await t.test("Upgrade: h2c never reaches the app: the request is served as HTTP/1.1", async (t) => {
      const r = await get(tg.open, "/h2c-check", "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n");
      t.equal(r?.status, 200, "200 over HTTP/1.1");
      const hit = seen("/h2c-check").at(-1);
      t.equal(hit?.headers["upgrade"], undefined, "the app got no Upgrade field");
      t.equal(hit?.headers["http2-settings"], undefined, "nor HTTP2-Settings");
      t.notMatch(hit?.headers["connection"] ?? "", /upgrade/i, "nor an upgrade in Connection");
      const secret = await get(tg.open, "/secret", "Upgrade: h2c\r\nConnection: Upgrade\r\n");
      t.equal(secret?.status, 403, "and an h2c upgrade to /secret is denied");
    });
  });
}

t.test("HTTP/2 :path is held to the same rules", async (t) => {
  const ca = await readDevCa(dir);
  const { host, port } = hostPort(api2.publicAddr!);
  const sessions: Array<[string, ClientHttp2Session]> = [
    ["h2c through web's upstream listener", h2connect(`http://${web.upstreams["api2"]}`)],
    [
      "h2 straight to api2's public listener",
      h2connect(`https://${host}:${port}`, {
        createConnection: () => tlsConnect({ host, port, cert: webLeaf.certPem, key: webLeaf.keyPem, ca: [ca.certPem], ALPNProtocols: ["h2"], checkServerIdentity: () => undefined }),
      }),
    ],
  ];
  for (const [, s] of sessions) t.teardown(() => s.close());
  const ask = (s: ClientHttp2Session, path: string) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const st = s.request({ ":path": path, ":method": "GET" });
      let status = 0;
      let body = "";
      st.on("response", (h) => (status = Number(h[":status"])));
      st.setEncoding("utf8").on("data", (c: string) => (body += c));
      st.on("end", () => resolve({ status, body }));
      st.on("error", reject);
      st.end();
    });
  for (const [name, s] of sessions) {
    t.equal((await ask(s, "/secret")).status, 403, `${name}: control: /secret denied`);
    t.equal((await ask(s, "/secret#x")).status, 400, `${name}: :path /secret#x → 400`);
    for (const p of ["/public\\..\\secret", "/public/..\\secret", "/public/./../secret", "//secret", "/%2e%2e/secret"]) t.equal((await ask(s, p)).status, 403, `${name}: :path ${p} is /secret, denied`);
    t.equal((await ask(s, "/a%2Fb")).status, 400, `${name}: :path with an escaped slash → 400`);
    const ok = await ask(s, "/public/x/..\\y/%7e");
    t.equal(ok.status, 200, `${name}: an allowed :path is served`);
    t.same(JSON.parse(ok.body), { url: "/public/y/~" }, `${name}: the app gets the canonical path`);
  }
  t.notOk(h2Hits.some((p) => p.includes("secret")), "the app never saw a path with secret in it");
});
