// The native library on the dev control plane: a native client calling a native server by name,
// identity on the request, intentions at the handshake, refusals of callers without an identity,
// dial(), and names.
import t from "tap";
import { createServer as createTlsServer } from "node:tls";
import { createServer as createHttpsServer } from "node:https";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { fetch } from "undici";
import { tempDir } from "../helpers/mesh.js";
import { sample } from "../helpers/peers.js";
import { foreignLeaf, leafFor, readDevCa, tlsExchange } from "../helpers/certs.js";
import { MeshNameError, NoHealthyUpstreamError } from "../../src/index.js";
import { fetchUntil, intentions, serve, service } from "../helpers/native.js";


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
  // The router's answer for a connection closed at the handshake, as a sidecar gives its app: 503 UF.
  const denied = await fetch("https://api.service.consul/denied", { dispatcher: evil.dispatcher() });
  t.equal(denied.status, 503, "evil's request is answered 503");
  t.equal(denied.headers.get("x-meshproxy-response-flags"), "UF", "with Envoy's UF flag (the upstream connection failed)");
  t.match(await denied.text(), /disconnect\/reset before headers/, "and a body that says how the upstream failed");
  t.same(served.seen.map((s) => s.peer), ["web"], "the app saw web's request and nothing of evil");
  const text = await api.metrics.registry.metrics();
  t.equal(sample(text, "meshproxy_inbound_rejected_total", { reason: "denied_by_intention" }), 1, "api counted one refusal by intention");
});

t.test("dial() opens a verified TLS stream to a healthy instance; the server sees the caller", async (t) => {
  const dir = await tempDir(t);
  const echo = await service(t, { name: "echo", dataDir: dir });
  const web = await service(t, { name: "web", dataDir: dir });
  const callers: string[] = [];
  const server = echo.attach(
    createTlsServer(echo.serverTLSOptions(), (s) => {
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
  t.type(await bad("https://api.service.dc2.consul/"), NoHealthyUpstreamError, "another datacenter is a destination (no instance there yet)");
  const virtual = await bad("https://api.virtual.consul/");
  t.type(virtual, MeshNameError, "a virtual IP name is refused");
  t.match(String(virtual), /transparent proxying.*want <service>\.service\.consul or <service>\.service\.<datacenter>\.consul/, "naming what is accepted");
  t.type(await bad("https://v1.api.service.consul/"), MeshNameError, "a tag lookup is refused");
  const none = await bad("https://nobody.service.consul/");
  t.type(none, NoHealthyUpstreamError, "a service with no instance fails with no healthy upstream");
  t.match(String(none), /no instances registered/, "and says so");
});

t.test("the services an app may call are capped (names built from untrusted input)", async (t) => {
  const dir = await tempDir(t);
  const web = await service(t, { name: "web", dataDir: dir, maxUpstreams: 2 });
  const call = (svc: string) => fetch(`https://${svc}.service.consul/`, { dispatcher: web.dispatcher() }).then(() => null, (e: unknown) => (e instanceof Error ? e.cause : e));
  t.type(await call("a"), NoHealthyUpstreamError, "a first service is resolved (no instance yet)");
  t.type(await call("b"), NoHealthyUpstreamError, "a second one too");
  const third = await call("c");
  t.type(third, MeshNameError, "a third is refused");
  t.match(String(third), /maxUpstreams/, "naming the option");
  t.type(await call("a"), NoHealthyUpstreamError, "a service already asked for still resolves");
  t.same(web.snapshot.upstreams.map((u) => u.name).sort(), ["a", "b"], "the control plane watches only the two");
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


t.test("a server made with serverTLSOptions() but never attached serves nobody (fail closed)", async (t) => {
  const dir = await tempDir(t);
  const api = await service(t, { name: "api", dataDir: dir });
  let reached = 0;
  const server = createHttpsServer(api.serverTLSOptions(), (_req, res) => {
    reached++;
    res.end("unguarded");
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => new Promise((r) => server.close(r)));
  const ca = await readDevCa(dir);
  const x = await tlsExchange(`127.0.0.1:${(server.address() as AddressInfo).port}`, "GET / HTTP/1.1\r\nhost: api\r\n\r\n", await leafFor(ca, "web"));
  t.equal(x.handshake, false, "no handshake completes");
  t.equal(reached, 0, "the handler was never reached");
  api.attach(server);
  const y = await tlsExchange(`127.0.0.1:${(server.address() as AddressInfo).port}`, "GET / HTTP/1.1\r\nhost: api\r\n\r\n", await leafFor(ca, "web"));
  t.match(y.data.toString(), /^HTTP\/1\.1 200/, "once attached, a mesh caller is served");
});
