// L7 intentions on native servers (dev control plane): per request on HTTP/1.1, per stream on
// HTTP/2, and for the requests node hands to other events (upgrade, CONNECT, Expect).
import t from "tap";
import { once } from "node:events";
import { connect, createSecureServer, type OutgoingHttpHeaders } from "node:http2";
import type { AddressInfo } from "node:net";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { fetch } from "undici";
import { tempDir } from "../helpers/mesh.js";
import { configWrite } from "../helpers/l7.js";
import { leafFor, readDevCa, tlsExchange } from "../helpers/certs.js";
import { fetchUntil, intentions, serve, serveHttp2, service } from "../helpers/native.js";


t.test("L7 intentions are checked per request on an http service, against the canonical path", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  await intentions(dir, "deny", [{ source: "web", destination: "api", permissions: [{ action: "allow", http: { path_prefix: "/public/" } }] }]);
  const api = await service(t, { name: "api", dataDir: dir });
  const web = await service(t, { name: "web", dataDir: dir });
  const served = await serve(t, api);
  t.equal(api.snapshot.publicListener?.protocol, "http", "api's protocol comes from its service-defaults");
  const ok = await fetchUntil(web, "https://api.service.consul/public/a");
  t.equal(await ok.text(), "api /public/a from web", "an allowed path reaches the app");
  const denied = await fetch("https://api.service.consul/private", { dispatcher: web.dispatcher() });
  t.equal(denied.status, 403, "a path no permission allows is answered 403");
  t.match(await denied.text(), /default policy is deny/, "with the reason");
  const sneaky = await fetch("https://api.service.consul/public/../private", { dispatcher: web.dispatcher() });
  t.equal(sneaky.status, 403, "dot segments are resolved before the check");
  t.notOk(served.seen.some((s) => s.url.includes("private")), "the app never saw a private request");
  const again = await fetch("https://api.service.consul/public/b", { dispatcher: web.dispatcher() });
  t.equal(again.status, 200, "the connection stays usable after a 403");
});

t.test("an HTTP/2 server of the service gets the same checks: identity per connection, L7 per stream", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http2" });
  await intentions(dir, "deny", [{ source: "web", destination: "api", permissions: [{ action: "allow", http: { path_prefix: "/public/" } }] }]);
  const api = await service(t, { name: "api", dataDir: dir });
  const seen: string[] = [];
  const ca = await readDevCa(dir);
  const session = await serveHttp2(
    t,
    api,
    (req, res) => {
      seen.push(`${req.url} from ${api.peerOf(req)?.service ?? "?"}`);
      res.end("ok");
    },
    await leafFor(ca, "web"),
    ca,
  );
  const get = (path: string) =>
    new Promise<number>((resolve, reject) => {
      const s = session.request({ ":path": path });
      s.on("response", (h) => resolve(Number(h[":status"])));
      s.on("error", reject);
      s.resume();
    });
  t.equal(await get("/public/a"), 200, "an allowed path is served");
  t.equal(await get("/private"), 403, "a path no permission allows is refused on its stream");
  t.equal(await get("/public/../private"), 403, "checked on the canonical path");
  t.equal(await get("/public/./b"), 200, "the session is still usable");
  t.same(seen, ["/public/a from web", "/public/b from web"], "the app saw only allowed requests, canonical, with the caller");
});

t.test("upgrade, CONNECT and Expect: 100-continue requests cannot step around L7 intentions", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  await intentions(dir, "deny", [{ source: "web", destination: "api", permissions: [{ action: "allow", http: { path_prefix: "/public/" } }] }]);
  const api = await service(t, { name: "api", dataDir: dir });
  const seen: string[] = [];
  const served = await serve(t, api);
  served.server.on("upgrade", (req: IncomingMessage, socket: Duplex) => {
    seen.push(`upgrade ${req.url}`);
    socket.end("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n");
  });
  served.server.on("connect", (req: IncomingMessage, socket: Duplex) => {
    seen.push(`connect ${req.url}`);
    socket.end("HTTP/1.1 200 Connection Established\r\n\r\n");
  });
  served.server.on("checkContinue", (req: IncomingMessage, res: ServerResponse) => {
    seen.push(`continue ${req.url}`);
    res.writeContinue();
    res.end("continued");
  });
  const ca = await readDevCa(dir);
  const web = await leafFor(ca, "web");
  const addr = `127.0.0.1:${served.port}`;
  const status = async (head: string) => (await tlsExchange(addr, head, web)).data.toString().split("\r\n")[0];
  t.equal(await status("GET /private HTTP/1.1\r\nhost: api\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"), "HTTP/1.1 403 Forbidden", "a denied upgrade is answered 403");
  t.equal(await status("CONNECT db:5432 HTTP/1.1\r\nhost: db:5432\r\n\r\n"), "HTTP/1.1 400 Bad Request", "CONNECT's authority-form target is refused");
  t.equal(await status("POST /private HTTP/1.1\r\nhost: api\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n"), "HTTP/1.1 403 Forbidden", "a denied request with Expect is answered 403");
  t.equal(await status("GET /public/ws HTTP/1.1\r\nhost: api\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"), "HTTP/1.1 101 Switching Protocols", "an allowed upgrade reaches the app");
  t.same(seen, ["upgrade /public/ws"], "the app's upgrade, connect and checkContinue listeners saw only the allowed one");
});

t.test("header permissions on host and the pseudo-headers read what the handler is given, on HTTP/1.1 and HTTP/2 (:scheme is https)", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http2" });
  await intentions(dir, "deny", [
    {
      source: "web",
      destination: "api",
      permissions: [
        { action: "deny", http: { header: [{ name: "host", exact: "admin.internal" }] } },
        { action: "deny", http: { header: [{ name: ":path", prefix: "/secret" }] } },
        { action: "deny", http: { header: [{ name: ":method", exact: "DELETE" }] } },
        { action: "deny", http: { path_prefix: "/tls-denied", header: [{ name: ":scheme", exact: "https" }] } },
        { action: "deny", http: { path_prefix: "/role", header: [{ name: "x-role", exact: "admin" }] } },
        // Only the whole cookie passes: HTTP/2 crumbs are one cookie (RFC 9113 §8.2.3).
        { action: "deny", http: { path_prefix: "/crumbs", header: [{ name: "cookie", exact: "a=1; b=2", invert: true }] } },
        { action: "allow", http: { path_prefix: "/" } },
      ],
    },
  ]);
  const api = await service(t, { name: "api", dataDir: dir });
  const seen: string[] = [];
  const server = api.attach(
    createSecureServer({ ...api.serverTLSOptions(), allowHTTP1: true }, (req, res) => {
      seen.push(`${req.method} ${req.url} ${req.authority ?? req.headers.host ?? ""}`);
      res.end("ok");
    }),
  );
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => new Promise((r) => server.close(r)));
  const ca = await readDevCa(dir);
  const web = await leafFor(ca, "web");
  const port = (server.address() as AddressInfo).port;
  const session = connect(`https://127.0.0.1:${port}`, { ca: ca.certPem, cert: web.certPem, key: web.keyPem, checkServerIdentity: () => undefined });
  t.teardown(() => session.close());
  const h2 = (headers: OutgoingHttpHeaders) =>
    new Promise<number>((resolve, reject) => {
      const s = session.request(headers);
      s.on("response", (h) => resolve(Number(h[":status"])));
      s.on("error", reject);
      s.resume();
      s.end();
    });
  t.equal(await h2({ ":path": "/a", ":authority": "admin.internal" }), 403, "HTTP/2: a deny on host holds for a caller that sends only :authority");
  t.equal(await h2({ ":path": "/public/../secret/x", ":authority": "api" }), 403, "HTTP/2: a deny on :path holds for a target that normalizes into it");
  t.equal(await h2({ ":path": "/a", ":method": "DELETE", ":authority": "api" }), 403, "HTTP/2: a deny on :method holds");
  t.equal(await h2({ ":path": "/tls-denied", ":scheme": "http", ":authority": "api" }), 403, "HTTP/2: a deny on :scheme https holds though the caller says http");
  t.equal(await h2({ ":path": "/role", ":authority": "api", "x-role": ["user", "admin"] }), 403, "HTTP/2: x-role user then admin does not pass a deny on admin");
  t.equal(await h2({ ":path": "/crumbs", ":authority": "api", cookie: ["a=1", "b=2"] }), 200, "HTTP/2: cookie crumbs are judged as the one cookie they make");
  t.equal(await h2({ ":path": "/a", ":authority": "api" }), 200, "HTTP/2: anything else is allowed");
  const h1 = async (head: string) => (await tlsExchange(`127.0.0.1:${port}`, head, web)).data.toString().split("\r\n")[0];
  t.equal(await h1("GET /secret HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n"), "HTTP/1.1 403 Forbidden", "HTTP/1.1: a deny on :path holds though no :path is sent");
  t.equal(await h1("DELETE /a HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n"), "HTTP/1.1 403 Forbidden", "HTTP/1.1: a deny on :method holds");
  t.equal(await h1("GET /a HTTP/1.1\r\nhost: admin.internal\r\nconnection: close\r\n\r\n"), "HTTP/1.1 403 Forbidden", "HTTP/1.1: a deny on host holds");
  t.equal(await h1("GET /tls-denied HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n"), "HTTP/1.1 403 Forbidden", "HTTP/1.1: a deny on :scheme https holds though no scheme is sent");
  // The handler can read x-role's lines one by one (rawHeaders, headersDistinct): judged on each.
  t.equal(await h1("GET /role HTTP/1.1\r\nhost: api\r\nx-role: user\r\nx-role: admin\r\nconnection: close\r\n\r\n"), "HTTP/1.1 403 Forbidden", "HTTP/1.1: x-role user then admin does not pass a deny on admin");
  t.equal(await h1("GET /role HTTP/1.1\r\nhost: api\r\nx-role: user\r\nx-role: user\r\nconnection: close\r\n\r\n"), "HTTP/1.1 200 OK", "HTTP/1.1: repeated lines every reading agrees on are allowed");
  t.equal(await h1("GET /a HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n"), "HTTP/1.1 200 OK", "HTTP/1.1: anything else is allowed");
  t.same(seen, ["GET /crumbs api", "GET /a api", "GET /role api", "GET /a api"], "the handler saw only the allowed requests");
});
