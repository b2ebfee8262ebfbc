// The native library on the dev control plane: a native client calling a native server by name,
// identity on the request, intentions at the handshake and per request, dial(), and names.
import t from "tap";
import { rename, writeFile } from "node:fs/promises";
import { once } from "node:events";
import { connect, createSecureServer } from "node:http2";
import type { AddressInfo } from "node:net";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { join } from "node:path";
import { fetch } from "undici";
import { tempDir } from "../helpers/mesh.js";
import { configWrite } from "../helpers/l7.js";
import { fetchUntil, serve, service } from "./helpers.js";
import { MeshNameError, NoHealthyUpstreamError } from "../../src/index.js";
import { sample } from "../helpers/peers.js";
import { foreignLeaf, leafFor, readDevCa, tlsExchange } from "../helpers/certs.js";

async function intentions(dir: string, defaultAction: "allow" | "deny", list: unknown[]): Promise<void> {
  const file = join(dir, "intentions.json");
  await writeFile(`${file}.tmp`, JSON.stringify({ default_action: defaultAction, intentions: list }), { mode: 0o644 });
  await rename(`${file}.tmp`, file);
}

t.test("a native client calls a native server by name; the app sees who called", async (t) => {
  const dir = await tempDir(t);
  const api = await service(t, { name: "api", dataDir: dir });
  const web = await service(t, { name: "web", dataDir: dir });
  const served = await serve(t, api);
  const res = await fetchUntil(web, "https://api.service.consul/hello?x=1");
  t.equal(await res.text(), "api /hello?x=1 from web", "the request reached api with web's identity");
  t.equal(served.seen.at(-1)?.host, "api.service.consul", "the Host is the name the client wrote");
  t.equal(web.snapshot.upstreams.map((u) => u.name).join(","), "api", "web's control plane watches api since its first use");
  t.match(api.spiffeId, /^spiffe:\/\/[^/]+\/ns\/default\/dc\/dc1\/svc\/api$/, "api's SPIFFE ID");
});

t.test("a caller an intention denies is closed at the handshake; the app never sees it", async (t) => {
  const dir = await tempDir(t);
  const web = await service(t, { name: "web", dataDir: dir });
  await intentions(dir, "allow", [{ source: "evil", destination: "api", action: "deny" }]);
  const api = await service(t, { name: "api", dataDir: dir });
  const evil = await service(t, { name: "evil", dataDir: dir });
  const served = await serve(t, api);
  const ok = await fetchUntil(web, "https://api.service.consul/allowed");
  t.equal(await ok.text(), "api /allowed from web", "web, not denied, gets through");
  const err = await fetch("https://api.service.consul/denied", { dispatcher: evil.dispatcher() }).then(
    (r) => new Error(`answered ${r.status}`),
    (e: unknown) => (e instanceof Error && e.cause instanceof Error ? e.cause : e),
  );
  t.match(String(err), /socket|ECONNRESET|other side closed|TLS/i, `evil's request fails on a closed connection (${String(err)})`);
  t.same(served.seen.map((s) => s.peer), ["web"], "the app saw web's request and nothing of evil");
  const text = await api.metrics.registry.metrics();
  t.equal(sample(text, "meshproxy_inbound_rejected_total", { reason: "denied_by_intention" }), 1, "api counted one refusal by intention");
});

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

t.test("dial() opens a verified TLS stream to a healthy instance; the server sees the caller", async (t) => {
  const dir = await tempDir(t);
  const echo = await service(t, { name: "echo", dataDir: dir });
  const web = await service(t, { name: "web", dataDir: dir });
  const { createServer } = await import("node:tls");
  const callers: string[] = [];
  const server = echo.attach(
    createServer(echo.serverTLSOptions(), (s) => {
      callers.push(echo.peerOf(s)?.spiffeId ?? "?");
      s.pipe(s);
    }),
  );
  server.listen(0, "127.0.0.1");
  await new Promise((r) => server.once("listening", r));
  t.teardown(() => new Promise((r) => server.close(r)));
  let sock = null;
  for (let i = 0; i < 200 && sock === null; i++) {
    sock = await web.dial("echo").catch(async (e: unknown) => {
      if (!(e instanceof Error) || !/no instances|no healthy/.test(e.message)) throw e;
      await new Promise((r) => setTimeout(r, 50));
      return null;
    });
  }
  if (sock === null) throw new Error("echo never became reachable");
  sock.write("ping");
  const [data] = (await new Promise<Buffer[]>((r) => sock.once("data", (d: Buffer) => r([d])))) as [Buffer];
  t.equal(data.toString(), "ping", "bytes go both ways");
  t.equal(callers[0], web.spiffeId, "the server saw web's SPIFFE ID");
  sock.destroy();
});

t.test("names that are not mesh services are refused with what to write", async (t) => {
  const dir = await tempDir(t);
  const web = await service(t, { name: "web", dataDir: dir });
  const bad = async (url: string) => {
    try {
      await fetch(url, { dispatcher: web.dispatcher() });
      return null;
    } catch (e) {
      return e instanceof Error ? e.cause : e;
    }
  };
  t.type(await bad("http://api.service.consul/"), MeshNameError, "plain http is refused");
  t.type(await bad("https://example.com/"), MeshNameError, "a name outside .service.consul is refused");
  t.type(await bad("https://api.service.dc2.consul/"), MeshNameError, "another datacenter is not supported yet");
  const none = await bad("https://nobody.service.consul/");
  t.type(none, NoHealthyUpstreamError, "a service with no instance fails with no healthy upstream");
  t.match(String(none), /no instances registered/, "and says so");
});

t.test("callers without a mesh identity are refused before the app, each with its reason counted", async (t) => {
  const dir = await tempDir(t);
  const api = await service(t, { name: "api", dataDir: dir });
  const served = await serve(t, api);
  const ca = await readDevCa(dir);
  const addr = `127.0.0.1:${served.port}`;
  const request = "GET / HTTP/1.1\r\nhost: api\r\n\r\n";
  const none = await tlsExchange(addr, request);
  const foreign = await tlsExchange(addr, request, await foreignLeaf(ca.trustDomain, "web"));
  const otherDomain = await tlsExchange(addr, request, await leafFor(ca, "web", { trustDomain: "00000000-0000-0000-0000-000000000000.consul" }));
  const good = await tlsExchange(addr, request, await leafFor(ca, "web"));
  for (const [what, x] of [["no certificate", none], ["a certificate from another CA", foreign], ["another trust domain", otherDomain]] as const) {
    t.equal(x.data.length, 0, `${what}: no answer at all`);
  }
  t.match(good.data.toString(), /^HTTP\/1\.1 200/, "a mesh leaf of the trust domain gets an answer");
  t.same(served.seen.map((s) => s.peer), ["web"], "the app saw only the good caller");
  const text = await api.metrics.registry.metrics();
  for (const reason of ["no_client_cert", "untrusted_certificate", "wrong_trust_domain"]) {
    t.equal(sample(text, "meshproxy_inbound_rejected_total", { reason }), 1, `counted as ${reason}`);
  }
});

t.test("an HTTP/2 server of the service gets the same checks: identity per connection, L7 per stream", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http2" });
  await intentions(dir, "deny", [{ source: "web", destination: "api", permissions: [{ action: "allow", http: { path_prefix: "/public/" } }] }]);
  const api = await service(t, { name: "api", dataDir: dir });
  const seen: string[] = [];
  const server = api.attach(
    createSecureServer(api.serverTLSOptions(), (req, res) => {
      seen.push(`${req.url} from ${api.peerOf(req)?.service ?? "?"}`);
      res.end("ok");
    }),
  );
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => new Promise((r) => server.close(r)));
  const ca = await readDevCa(dir);
  const web = await leafFor(ca, "web");
  const session = connect(`https://127.0.0.1:${(server.address() as AddressInfo).port}`, { ca: ca.certPem, cert: web.certPem, key: web.keyPem, checkServerIdentity: () => undefined });
  t.teardown(() => session.close());
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
