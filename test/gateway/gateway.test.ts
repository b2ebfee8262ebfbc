// The mesh gateway end to end, in process: real mTLS from a client to a backend through one or
// two gateways that hold no key at all, and every connection the gateway must not forward closed
// and counted under its reason.
import t, { type Test } from "tap";
import { once } from "node:events";
import { connect as netConnect, createServer as createNetServer, type AddressInfo } from "node:net";
import { connect as tlsConnect, createServer as createTlsServer, type TLSSocket } from "node:tls";
import { Registry } from "prom-client";
import { createRootCa, issueLeaf, serviceSpiffeId, type CaMaterial, type IssuedLeaf } from "../../src/index.js";
import { GatewayListener } from "../../src/gateway/listener.js";
import { GatewayConfigError, GatewayRoutes, type GatewayRoutesConfig, type GatewayService } from "../../src/gateway/routes.js";
import { GatewayStats } from "../../src/gateway/stats.js";
import { silentLogger } from "../../src/telemetry/log.js";
import type { Endpoint } from "../../src/config/snapshot.js";

const TD = "11111111-2222-3333-4444-555555555555.consul";
const spiffe = (service: string, datacenter: string) => serviceSpiffeId({ trustDomain: TD, namespace: "default", datacenter, service });

function endpoint(port: number, healthy = true): Endpoint {
  return { host: "127.0.0.1", port, healthy, id: `127.0.0.1:${port}`, meta: {} };
}

interface Backend {
  readonly port: number;
  /** What the backend saw of each connection: the client's identity, the SNI, the ALPN. */
  readonly seen: Array<{ readonly peer: string | undefined; readonly servername: string | false | null; readonly alpn: string | false | null }>;
}

/** An mTLS echo server for `service`, requiring a client certificate from `ca`. */
async function backend(t: Test, ca: CaMaterial, service: string, dc: string): Promise<Backend> {
  const leaf = await issueLeaf(ca, { spiffeId: spiffe(service, dc), commonName: service, ttlMs: 3_600_000 });
  const seen: Backend["seen"] = [];
  const server = createTlsServer({ key: leaf.keyPem, cert: leaf.certPem, ca: ca.certPem, requestCert: true, rejectUnauthorized: true, ALPNProtocols: ["h2", "http/1.1"], allowHalfOpen: true }, (s: TLSSocket) => {
    seen.push({ peer: s.getPeerCertificate().subjectaltname, servername: s.servername, alpn: s.alpnProtocol });
    s.on("data", (d: Buffer) => s.write(d));
    s.on("end", () => s.end());
    s.on("error", () => undefined);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => server.close());
  return { port: (server.address() as AddressInfo).port, seen };
}

async function gateway(t: Test, cfg: GatewayRoutesConfig, opts: { helloTimeoutMs?: number } = {}): Promise<{ gw: GatewayListener; stats: GatewayStats }> {
  const stats = new GatewayStats(new Registry());
  const gw = await GatewayListener.start(GatewayRoutes.compile(cfg), { host: "127.0.0.1", port: 0, stats, log: silentLogger, ...opts });
  t.teardown(() => gw.close());
  return { gw, stats };
}

async function rejected(stats: GatewayStats, reason: string): Promise<number> {
  const m = await stats.rejected.get();
  return m.values.find((v) => v.labels.reason === reason)?.value ?? 0;
}

/** mTLS through `port` to `sni`, expecting `expect` on the far side; resolves with the echo. */
function mtls(port: number, sni: string | undefined, leaf: IssuedLeaf, ca: CaMaterial, expect: string, payload = "ping through the gateway"): Promise<{ echo: string; alpn: string | false | null }> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({
      host: "127.0.0.1",
      port,
      ...(sni ? { servername: sni } : {}),
      ca: ca.certPem,
      cert: leaf.certPem,
      key: leaf.keyPem,
      ALPNProtocols: ["h2"],
      checkServerIdentity: (_h, cert) => (cert.subjectaltname === `URI:${expect}` ? undefined : new Error(`server is ${cert.subjectaltname}, expected ${expect}`)),
    });
    let echo = "";
    s.on("secureConnect", () => s.end(payload));
    s.on("data", (d: Buffer) => (echo += d.toString()));
    s.on("end", () => resolve({ echo, alpn: s.alpnProtocol }));
    s.on("error", reject);
  });
}

/** A connection the gateway should close: resolves once it is closed, with what came back. */
function refusedTls(port: number, sni: string | undefined): Promise<string> {
  return new Promise((resolve) => {
    const s = tlsConnect({ host: "127.0.0.1", port, ...(sni ? { servername: sni } : {}), rejectUnauthorized: false });
    s.on("secureConnect", () => resolve("handshake completed"));
    s.on("error", (e: Error) => resolve(e.message));
    s.on("close", () => resolve("closed"));
  });
}

async function setup() {
  const ca = await createRootCa(TD);
  const client = await issueLeaf(ca, { spiffeId: spiffe("frontend", "dc1"), commonName: "frontend", ttlMs: 3_600_000 });
  return { ca, client };
}

t.test("mTLS end to end through a gateway that never sees a key: local service by SNI", async (t) => {
  const { ca, client } = await setup();
  const web = await backend(t, ca, "web", "dc1");
  const sni = `web.default.dc1.internal.${TD}`;
  const { gw, stats } = await gateway(t, { trustDomain: TD, datacenter: "dc1", services: new Map([[sni, { endpoints: [endpoint(web.port)] }]]), remoteGateways: new Map() });
  const r = await mtls(gw.address.port, sni, client, ca, spiffe("web", "dc1"));
  t.equal(r.echo, "ping through the gateway", "bytes flow both ways, half-close passed on");
  t.equal(r.alpn, "h2", "ALPN negotiated end to end");
  t.same(web.seen, [{ peer: `URI:${spiffe("frontend", "dc1")}`, servername: sni, alpn: "h2" }], "the backend authenticated the client itself and saw its SNI");
  const forwarded = await stats.forwarded.get();
  t.same(forwarded.values.map((v) => [v.labels.envoy_cluster_name, v.value]), [[sni, 1]]);
  // Mixed case routes the same (DNS names are case-insensitive).
  const upper = await mtls(gw.address.port, sni.toUpperCase(), client, ca, spiffe("web", "dc1"), "again");
  t.equal(upper.echo, "again");
});

t.test("a name in another datacenter goes to that datacenter's gateway, and on to the service", async (t) => {
  const { ca, client } = await setup();
  const web = await backend(t, ca, "web", "dc2");
  const sni = `web.default.dc2.internal.${TD}`;
  const dc2 = await gateway(t, { trustDomain: TD, datacenter: "dc2", services: new Map([[sni, { endpoints: [endpoint(web.port)] }]]), remoteGateways: new Map() });
  const dc1 = await gateway(t, { trustDomain: TD, datacenter: "dc1", services: new Map(), remoteGateways: new Map([["dc2", [endpoint(dc2.gw.address.port)]]]) });
  const r = await mtls(dc1.gw.address.port, sni, client, ca, spiffe("web", "dc2"), "across datacenters");
  t.equal(r.echo, "across datacenters");
  t.equal(web.seen[0]?.peer, `URI:${spiffe("frontend", "dc1")}`);
  const hop = await dc1.stats.forwarded.get();
  t.same(hop.values.map((v) => v.labels.envoy_cluster_name), [`dc2.internal.${TD}`], "dc1 forwarded to dc2's gateways");
  // dc3 is unknown to dc1: refused, not sent anywhere.
  t.not(await refusedTls(dc1.gw.address.port, `web.default.dc3.internal.${TD}`), "handshake completed");
  t.equal(await rejected(dc1.stats, "unknown_sni"), 1);
});

t.test("connections the gateway must not forward are closed and counted", async (t) => {
  const { ca } = await setup();
  const web = await backend(t, ca, "web", "dc1");
  const dead = createNetServer();
  dead.listen(0, "127.0.0.1");
  await once(dead, "listening");
  const deadPort = (dead.address() as AddressInfo).port;
  await new Promise<void>((resolve) => dead.close(() => resolve()));
  const services = new Map([
    [`web.default.dc1.internal.${TD}`, { endpoints: [endpoint(web.port)] }],
    [`down.default.dc1.internal.${TD}`, { endpoints: [endpoint(deadPort)] }],
    [`sick.default.dc1.internal.${TD}`, { endpoints: [endpoint(web.port, false)] }],
  ]);
  const { gw, stats } = await gateway(t, { trustDomain: TD, datacenter: "dc1", services, remoteGateways: new Map() }, { helloTimeoutMs: 300 });
  const port = gw.address.port;

  for (const sni of [`nope.default.dc1.internal.${TD}`, `web.default.dc1.internal.22222222-2222-3333-4444-555555555555.consul`, "web.example.com", `dc1.internal.${TD}`, `v9.web.default.dc1.internal.${TD}`]) {
    t.not(await refusedTls(port, sni), "handshake completed", `${sni} refused`);
  }
  t.equal(await rejected(stats, "unknown_sni"), 5, "unknown names, another trust domain, a datacenter name, an unknown subset");
  t.not(await refusedTls(port, undefined), "handshake completed");
  t.equal(await rejected(stats, "no_sni"), 1, "no SNI");
  t.not(await refusedTls(port, `down.default.dc1.internal.${TD}`), "handshake completed");
  t.equal(await rejected(stats, "upstream_connect_failed"), 1, "endpoint refused the connection");
  t.not(await refusedTls(port, `sick.default.dc1.internal.${TD}`), "handshake completed");
  t.equal(await rejected(stats, "no_healthy_endpoint"), 1, "only unhealthy endpoints");

  const plain = netConnect({ host: "127.0.0.1", port });
  plain.on("error", () => undefined);
  plain.end("GET / HTTP/1.1\r\nHost: web\r\n\r\n");
  await once(plain, "close");
  t.equal(await rejected(stats, "not_tls"), 1, "plain HTTP");

  // A TCP health check: connect, close, nothing sent. Counted apart from broken hellos.
  const probe = netConnect({ host: "127.0.0.1", port });
  probe.on("error", () => undefined);
  await once(probe, "connect");
  probe.end();
  await once(probe, "close");
  t.equal(await rejected(stats, "connection_closed"), 1, "a connect-and-close probe");
  t.equal(await rejected(stats, "truncated"), 0, "which is not a truncated hello");

  const slow = netConnect({ host: "127.0.0.1", port });
  slow.on("error", () => undefined);
  slow.write(Buffer.from([0x16, 3, 1, 0, 200, 1, 0, 0, 196]));
  const started = Date.now();
  await once(slow, "close");
  t.ok(Date.now() - started >= 250, "held until the hello deadline, then closed");
  t.equal(await rejected(stats, "timeout"), 1, "a ClientHello that never completes");
  t.equal(web.seen.length, 0, "nothing reached the backend");
});

t.test("apply: new connections route by the new table", async (t) => {
  const { ca, client } = await setup();
  const a = await backend(t, ca, "web", "dc1");
  const sni = `web.default.dc1.internal.${TD}`;
  const { gw, stats } = await gateway(t, { trustDomain: TD, datacenter: "dc1", services: new Map(), remoteGateways: new Map() });
  t.not(await refusedTls(gw.address.port, sni), "handshake completed");
  t.equal(await rejected(stats, "unknown_sni"), 1);
  gw.apply(GatewayRoutes.compile({ trustDomain: TD, datacenter: "dc1", services: new Map([[sni, { endpoints: [endpoint(a.port)] }]]), remoteGateways: new Map() }));
  t.equal((await mtls(gw.address.port, sni, client, ca, spiffe("web", "dc1"), "after apply")).echo, "after apply");
});

t.test("a route table that cannot be right is refused when compiled", async (t) => {
  const base = { trustDomain: TD, datacenter: "dc1", services: new Map<string, GatewayService>(), remoteGateways: new Map<string, readonly Endpoint[]>() };
  const cases: Array<[Partial<GatewayRoutesConfig>, RegExp]> = [
    [{ services: new Map([["web.example.com", { endpoints: [] }]]) }, /not under this mesh's trust domain/],
    [{ services: new Map([[`web.default.dc2.internal.${TD}`, { endpoints: [] }]]) }, /datacenter dc2, not this gateway's dc1/],
    [{ services: new Map([[`dc1.internal.${TD}`, { endpoints: [] }]]) }, /names a datacenter, not a service/],
    [{ services: new Map([[`web.default.dc1.internal.${TD}`, { endpoints: [] }], [`WEB.default.dc1.internal.${TD}`, { endpoints: [] }]]) }, /listed twice/],
    [{ remoteGateways: new Map([["dc1", []]]) }, /own datacenter/],
    [{ remoteGateways: new Map([["dc 2", []]]) }, /not a datacenter name/],
  ];
  for (const [over, message] of cases) {
    t.throws(() => GatewayRoutes.compile({ ...base, ...over }), { name: GatewayConfigError.name, message }, String(message));
  }
});

/** Resolves once `check` holds, checking after each turn of the event loop's timers (up to 5 s). */
async function until(what: string, check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (await check()) return;
    await new Promise<void>((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`still waiting for ${what} after 5 s`);
}

t.test("limits: connections still sending a hello, and connections in all", async (t) => {
  const { ca, client } = await setup();
  const web = await backend(t, ca, "web", "dc1");
  const sni = `web.default.dc1.internal.${TD}`;
  const cfg = { trustDomain: TD, datacenter: "dc1", services: new Map([[sni, { endpoints: [endpoint(web.port)] }]]), remoteGateways: new Map() };
  const start = async (limits: { maxPendingHellos?: number; maxConnections?: number }) => {
    const stats = new GatewayStats(new Registry());
    const gw = await GatewayListener.start(GatewayRoutes.compile(cfg), { host: "127.0.0.1", port: 0, stats, log: silentLogger, ...limits });
    t.teardown(() => gw.close());
    return { port: gw.address.port, stats };
  };
  const raw = (port: number) => {
    const s = netConnect({ host: "127.0.0.1", port });
    s.on("error", () => undefined);
    t.teardown(() => s.destroy());
    return s;
  };

  const one = await start({ maxPendingHellos: 1 });
  // One connection that never finishes its hello holds the only pending slot.
  const silent = raw(one.port);
  silent.write(Buffer.from([0x16, 3, 1]));
  await once(silent, "connect");
  await once(raw(one.port), "close");
  t.equal(await rejected(one.stats, "overload"), 1, "a second hello-in-progress is refused at accept");
  // Once the first is gone the slot is free again: a real client gets through.
  silent.destroy();
  await until("the silent connection to be counted as truncated", async () => (await rejected(one.stats, "truncated")) === 1);
  t.equal((await mtls(one.port, sni, client, ca, spiffe("web", "dc1"), "after the slot freed")).echo, "after the slot freed");

  const two = await start({ maxConnections: 2 });
  // Two connections open (one forwarded and held, one pending) fill the listener.
  const held = tlsConnect({ host: "127.0.0.1", port: two.port, servername: sni, ca: ca.certPem, cert: client.certPem, key: client.keyPem, checkServerIdentity: () => undefined });
  held.on("error", () => undefined);
  t.teardown(() => held.destroy());
  await once(held, "secureConnect");
  await once(raw(two.port), "connect");
  await once(raw(two.port), "close");
  t.equal(await rejected(two.stats, "overflow"), 1, "a third connection is dropped at accept");
});

t.test("an instance that refuses connections costs clients nothing: retried on another host, ejected after 5 consecutive failures", { timeout: 60_000 }, async (t) => {
  const { ca, client } = await setup();
  // Ten hosts: Envoy's default max_ejection_percent (10 %) allows one ejection at ten hosts.
  const good = await Promise.all(Array.from({ length: 9 }, () => backend(t, ca, "web", "dc1")));
  const probe = createNetServer();
  probe.listen(0, "127.0.0.1");
  await once(probe, "listening");
  const refusing = (probe.address() as AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const sni = `web.default.dc1.internal.${TD}`;
  const endpoints = [endpoint(refusing), ...good.map((b) => endpoint(b.port))];
  const { gw, stats } = await gateway(t, { trustDomain: TD, datacenter: "dc1", services: new Map([[sni, { endpoints }]]), remoteGateways: new Map() });
  const failures = async () => (await stats.connectFailed.get()).values.find((v) => v.labels.envoy_cluster_name === sni)?.value ?? 0;
  const ejected = () => gw.clusterStatuses().find((c) => c.name === sni)?.hosts.find((h) => h.port === refusing)?.ejected ?? false;
  let connections = 0;
  // After each refusal the host backs off (100 ms, doubling) before a client is dialled to it
  // again, so the fifth refusal comes about 1.5 s in, however fast the clients connect.
  const deadline = Date.now() + 15_000;
  while (!ejected() && Date.now() < deadline) {
    const r = await mtls(gw.address.port, sni, client, ca, spiffe("web", "dc1"), `client ${connections}`);
    t.equal(r.echo, `client ${connections}`, `client ${connections} got through`);
    connections++;
  }
  t.ok(ejected(), `the refusing host is ejected (after ${connections} client connections)`);
  t.equal(await failures(), 5, "after exactly 5 consecutive connect failures (Envoy's consecutive_5xx default)");
  t.equal(await rejected(stats, "upstream_connect_failed"), 0, "no client was refused");
  const before = await failures();
  for (let i = 0; i < 12; i++) t.equal((await mtls(gw.address.port, sni, client, ca, spiffe("web", "dc1"), "after")).echo, "after");
  t.equal(await failures(), before, "an ejected host is not dialled");
  const status = gw.clusterStatuses().find((c) => c.name === sni)!;
  t.match(status, { outlierDetection: true, limits: { maxConnections: 1024 } }, "Envoy's default breaker and outlier detection");
  t.equal(status.hosts.filter((h) => h.ejected).length, 1, "/clusters shows one ejected host");
  t.equal(good.reduce((n, b) => n + b.seen.length, 0), connections + 12, "every client reached a live instance");
});
