// The Consul agent test double behaves as shared/reference/consul-connect.md §2 and §8 describe:
// response shapes, index and hash blocking, ACL tokens, faults, restarts, real certificates.
// Every check goes over real HTTP; tests wait on the double's events, never on sleeps.
import t from "tap";
import { request } from "undici";
import { X509Certificate, createPrivateKey, createPublicKey } from "node:crypto";
import { createServer as createTlsServer, connect as tlsConnect, type TLSSocket } from "node:tls";
import { once } from "node:events";
import { ConsulAgentDouble, DEFAULT_TRUST_DOMAIN, type AgentServiceRegistration, type ConsulAgentDoubleOptions } from "./helpers/consul-agent.js";
import { serialOf } from "../src/identity/ca.js";
import type { Teardown } from "./helpers/mesh.js";

interface Reply {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly text: string;
}

interface CallOptions {
  readonly method?: "GET" | "PUT" | "POST";
  readonly token?: string;
  readonly bearer?: string;
  readonly body?: unknown;
  readonly signal?: AbortSignal;
}

async function call(url: string, opts: CallOptions = {}): Promise<Reply> {
  const headers: Record<string, string> = {};
  if (opts.token !== undefined) headers["X-Consul-Token"] = opts.token;
  if (opts.bearer !== undefined) headers["Authorization"] = `Bearer ${opts.bearer}`;
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const res = await request(url, {
    method: opts.method ?? "GET",
    headers,
    ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  const flat: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) flat[k] = Array.isArray(v) ? v.join(", ") : v;
  return { status: res.statusCode, headers: flat, text: await res.body.text() };
}

function body(r: Reply): unknown {
  return JSON.parse(r.text);
}

function indexOf(r: Reply): number {
  const v = r.headers["x-consul-index"];
  if (v === undefined) throw new Error("no X-Consul-Index header");
  return Number(v);
}

/** The value at a dotted path (`Roots.0.Active`) in parsed JSON, or undefined. */
function at(v: unknown, path: string): unknown {
  let cur: unknown = v;
  for (const k of path.split(".")) {
    if (typeof cur !== "object" || cur === null) return undefined;
    cur = Object.getOwnPropertyDescriptor(cur, k)?.value;
  }
  return cur;
}

function str(v: unknown): string {
  if (typeof v !== "string") throw new Error(`expected a string, got ${JSON.stringify(v)}`);
  return v;
}

function list(v: unknown): readonly unknown[] {
  if (!Array.isArray(v)) throw new Error(`expected an array, got ${JSON.stringify(v)}`);
  return v;
}

function keys(v: unknown): string[] {
  if (typeof v !== "object" || v === null) throw new Error(`expected an object, got ${JSON.stringify(v)}`);
  return Object.keys(v);
}

function pems(bundle: string): string[] {
  return bundle.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/g) ?? [];
}

async function double(t: Teardown, opts: ConsulAgentDoubleOptions = {}): Promise<ConsulAgentDouble> {
  const d = await ConsulAgentDouble.start(opts);
  t.teardown(() => d.stop());
  return d;
}

/** The §8.4 registration. */
const BILLING_PROXY: AgentServiceRegistration = {
  Kind: "connect-proxy",
  ID: "billing-sidecar-proxy",
  Name: "billing-sidecar-proxy",
  Port: 21000,
  Address: "10.20.0.15",
  Proxy: {
    DestinationServiceName: "billing",
    DestinationServiceID: "billing-1",
    LocalServiceAddress: "127.0.0.1",
    LocalServicePort: 8080,
    Config: { protocol: "http", local_connect_timeout_ms: 2000 },
    Upstreams: [{ DestinationType: "service", DestinationName: "ledger", LocalBindAddress: "127.0.0.1", LocalBindPort: 9191, Config: { connect_timeout_ms: 3000 } }],
  },
};

t.test("roots: immediate without index, documented shape, real root", async (t) => {
  const d = await double(t);
  const r = await call(`${d.url}/v1/agent/connect/ca/roots`);
  t.equal(r.status, 200);
  t.equal(r.headers["content-type"], "application/json");
  t.equal(indexOf(r), 40, "the index starts at 40 (§8)");
  t.equal(r.headers["x-consul-knownleader"], "true");
  t.equal(r.headers["x-consul-default-acl-policy"], "allow");
  const b = body(r);
  t.equal(at(b, "TrustDomain"), DEFAULT_TRUST_DOMAIN);
  t.equal(list(at(b, "Roots")).length, 1);
  t.equal(at(b, "ActiveRootID"), at(b, "Roots.0.ID"));
  t.equal(at(b, "Roots.0.Active"), true);
  t.equal(at(b, "Roots.0.IntermediateCerts"), null, "no intermediates before a rotation");
  t.equal(at(b, "Roots.0.PrivateKeyType"), "ec");
  t.equal(at(b, "Roots.0.PrivateKeyBits"), 256);
  t.type(at(b, "Roots.0.SerialNumber"), "number");
  t.match(at(b, "Roots.0.SigningKeyID"), /^([0-9a-f]{2}:){19}[0-9a-f]{2}$/);
  t.match(at(b, "Roots.0.NotBefore"), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  t.equal(at(b, "Roots.0.SigningCert"), undefined, "signing material is never served");
  const root = new X509Certificate(str(at(b, "Roots.0.RootCert")));
  t.ok(root.ca, "RootCert is a real CA certificate");
  t.equal(root.fingerprint.toLowerCase(), at(b, "Roots.0.ID"), "ID is the colon-hex SHA-1 fingerprint");
  t.equal(root.subjectAltName, `URI:spiffe://${DEFAULT_TRUST_DOMAIN}`);
  t.equal(root.publicKey.asymmetricKeyDetails?.namedCurve, "prime256v1");
});

t.test("index blocking: holds until the watched resource changes, then returns the new body and a higher index", async (t) => {
  const d = await double(t);
  const first = await call(`${d.url}/v1/agent/connect/ca/roots`);
  const i0 = indexOf(first);
  const pending = call(`${d.url}/v1/agent/connect/ca/roots?index=${i0}&wait=30s`);
  await d.waitForHeld("/v1/agent/connect/ca/roots");
  const oldId = str(at(body(first), "ActiveRootID"));
  const newId = await d.rotateRoots();
  const r = await pending;
  t.ok(indexOf(r) > i0, `returned with a higher index (${indexOf(r)} > ${i0})`);
  t.equal(at(body(r), "ActiveRootID"), newId, "and the new body");
  t.not(newId, oldId);
});

t.test("index blocking: an unrelated change does not wake a watcher; the wait expires with the same index", async (t) => {
  const d = await double(t);
  const i0 = indexOf(await call(`${d.url}/v1/agent/connect/ca/roots`));
  const started = Date.now();
  const pending = call(`${d.url}/v1/agent/connect/ca/roots?index=${i0}&wait=200ms`);
  await d.waitForHeld("/v1/agent/connect/ca/roots");
  d.setIntentions("billing", [{ source: "web", action: "allow" }]);
  d.setInstances("billing", []);
  t.equal(d.heldCount("/v1/agent/connect/ca/roots"), 1, "still held after other resources changed");
  const r = await pending;
  const elapsed = Date.now() - started;
  t.equal(r.status, 200);
  t.equal(indexOf(r), i0, "same index after the wait");
  t.ok(elapsed >= 190, `waited the full 200ms (+ jitter): ${elapsed} ms`);
  t.ok(elapsed < 2000, `but not much longer: ${elapsed} ms`);
  t.ok(d.index > i0, "while the global index moved on");
});

t.test("index blocking: Go-style wait in milliseconds, and bad parameters are 400s", async (t) => {
  const d = await double(t);
  const i0 = indexOf(await call(`${d.url}/v1/agent/connect/ca/roots`));
  const r = await call(`${d.url}/v1/agent/connect/ca/roots?index=${i0}&wait=150ms`);
  t.equal(indexOf(r), i0);
  const badWait = await call(`${d.url}/v1/agent/connect/ca/roots?index=${i0}&wait=soon`);
  t.equal(badWait.status, 400);
  t.equal(badWait.text, "Invalid wait time");
  t.equal(badWait.headers["content-type"], "text/plain; charset=utf-8", "errors are short plain text");
  const badIndex = await call(`${d.url}/v1/agent/connect/ca/roots?index=-1`);
  t.equal(badIndex.status, 400);
  t.equal((await call(`${d.url}/v1/agent/connect/ca/roots`, { method: "PUT", body: {} })).status, 405);
  t.equal((await call(`${d.url}/v1/agent/nope`)).status, 404);
});

t.test("leaf: documented shape, a real leaf that verifies against the root, SEC1 key", async (t) => {
  const d = await double(t, { datacenter: "east-1", leafTtlMs: 2 * 3600_000 });
  const r = await call(`${d.url}/v1/agent/connect/ca/leaf/billing`);
  t.equal(r.status, 200);
  const b = body(r);
  const uri = `spiffe://${DEFAULT_TRUST_DOMAIN}/ns/default/dc/east-1/svc/billing`;
  t.equal(at(b, "Service"), "billing");
  t.equal(at(b, "ServiceURI"), uri);
  t.equal(indexOf(r), at(b, "ModifyIndex"), "X-Consul-Index is the leaf's ModifyIndex");
  t.type(at(b, "CreateIndex"), "number");
  const certs = pems(str(at(b, "CertPEM")));
  t.equal(certs.length, 1, "only the leaf before any rotation");
  const leaf = new X509Certificate(certs[0]!);
  t.equal(leaf.subjectAltName, `URI:${uri}`);
  t.equal(at(b, "SerialNumber"), serialOf(certs[0]!), "SerialNumber is the cert's colon-hex serial");
  t.match(at(b, "SerialNumber"), /^[0-9a-f]{2}(:[0-9a-f]{2})*$/);
  const validFor = Date.parse(str(at(b, "ValidBefore"))) - Date.parse(str(at(b, "ValidAfter")));
  t.ok(Math.abs(validFor - 2 * 3600_000) <= 1000, `TTL is configurable (${validFor} ms)`);

  const rootPem = str(at(body(await call(`${d.url}/v1/agent/connect/ca/roots`)), "Roots.0.RootCert"));
  const root = new X509Certificate(rootPem);
  t.ok(leaf.checkIssued(root), "issued by the root");
  t.ok(leaf.verify(root.publicKey), "signature verifies against the root key");

  const key = str(at(b, "PrivateKeyPEM"));
  t.match(key, /^-----BEGIN EC PRIVATE KEY-----/, "SEC1, as the agent serves it");
  t.equal(
    createPublicKey(createPrivateKey(key)).export({ type: "spki", format: "der" }).toString("hex"),
    leaf.publicKey.export({ type: "spki", format: "der" }).toString("hex"),
    "the key matches the certificate",
  );

  const again = await call(`${d.url}/v1/agent/connect/ca/leaf/billing`);
  t.equal(at(body(again), "SerialNumber"), at(b, "SerialNumber"), "cached per service");
  t.equal(indexOf(again), indexOf(r));
  const other = await call(`${d.url}/v1/agent/connect/ca/leaf/ledger`);
  t.not(at(body(other), "SerialNumber"), at(b, "SerialNumber"), "each service has its own leaf");
});

t.test("leaf: blocking returns on rotation with a new serial, and on its own at soft renewal", async (t) => {
  const d = await double(t, { leafTtlMs: 2000, leafRenewFraction: 0.6 });
  const first = await call(`${d.url}/v1/agent/connect/ca/leaf/web`);
  const i0 = indexOf(first);
  const serial0 = at(body(first), "SerialNumber");

  const byRenewal = await call(`${d.url}/v1/agent/connect/ca/leaf/web?index=${i0}&wait=10s`);
  t.ok(indexOf(byRenewal) > i0, "the double renewed a short-lived leaf without being asked");
  t.not(at(body(byRenewal), "SerialNumber"), serial0);

  const i1 = indexOf(byRenewal);
  const pending = call(`${d.url}/v1/agent/connect/ca/leaf/web?index=${i1}&wait=10s`);
  await d.waitForHeld("/v1/agent/connect/ca/leaf/web");
  const serial = await d.rotateLeaf("web", { ttlMs: 3600_000 });
  const r = await pending;
  t.ok(indexOf(r) > i1, "rotation wakes the watcher with a higher index");
  t.equal(at(body(r), "SerialNumber"), serial, "and serves the new serial");
  t.equal(at(body(r), "ModifyIndex"), indexOf(r));
});

t.test("root rotation: two roots listed, a cross-signed intermediate, new leafs chain to the old root", async (t) => {
  const d = await double(t);
  const before = await call(`${d.url}/v1/agent/connect/ca/leaf/billing`);
  const oldRootPem = str(at(body(await call(`${d.url}/v1/agent/connect/ca/roots`)), "Roots.0.RootCert"));

  const leafWatch = call(`${d.url}/v1/agent/connect/ca/leaf/billing?index=${indexOf(before)}&wait=30s`);
  await d.waitForHeld("/v1/agent/connect/ca/leaf/billing");
  const newId = await d.rotateRoots();

  const roots = body(await call(`${d.url}/v1/agent/connect/ca/roots`));
  t.equal(list(at(roots, "Roots")).length, 2, "old and new roots are both listed");
  t.equal(at(roots, "ActiveRootID"), newId);
  t.equal(at(roots, "Roots.0.Active"), false, "the old root stays, inactive");
  t.equal(at(roots, "Roots.1.Active"), true);
  t.equal(at(roots, "Roots.1.ID"), newId);
  const oldRoot = new X509Certificate(oldRootPem);
  const newRoot = new X509Certificate(str(at(roots, "Roots.1.RootCert")));
  const inters = list(at(roots, "Roots.1.IntermediateCerts"));
  t.equal(inters.length, 1);
  const cross = new X509Certificate(str(inters[0]));
  t.ok(cross.ca, "the cross-signed cert is a CA");
  t.equal(cross.subject, newRoot.subject, "with the new root's subject");
  t.equal(cross.publicKey.export({ type: "spki", format: "der" }).toString("hex"), newRoot.publicKey.export({ type: "spki", format: "der" }).toString("hex"), "and key");
  t.ok(cross.checkIssued(oldRoot) && cross.verify(oldRoot.publicKey), "signed by the old root");

  const rotated = await leafWatch;
  t.ok(indexOf(rotated) > indexOf(before), "leaf watchers wake: the leaf is re-issued from the new root");
  const chain = pems(str(at(body(rotated), "CertPEM")));
  t.equal(chain.length, 2, "CertPEM carries the leaf and the cross-signed cert");
  t.equal(chain[1], str(inters[0]));
  const leaf = new X509Certificate(chain[0]!);
  t.ok(leaf.checkIssued(newRoot) && leaf.verify(newRoot.publicKey), "the new leaf verifies against the new root");
  t.ok(leaf.checkIssued(cross) && leaf.verify(cross.publicKey), "and through the cross-signed cert");

  // The point of cross-signing: a peer that trusts only the old root accepts the new bundle.
  const key = str(at(body(rotated), "PrivateKeyPEM"));
  t.equal(await handshake(t, key, chain.join(""), oldRootPem), true, "TLS with leaf + cross-signed cert verifies against the old root alone");
  t.equal(await handshake(t, key, chain[0]!, oldRootPem), false, "the bare leaf does not");

  d.pruneInactiveRoots();
  t.equal(list(at(body(await call(`${d.url}/v1/agent/connect/ca/roots`)), "Roots")).length, 1, "pruning ends the rotation");
});

/** Whether a TLS client trusting only `caPem` accepts a server presenting `certPem`. */
async function handshake(t: Teardown, keyPem: string, certPem: string, caPem: string): Promise<boolean> {
  const server = createTlsServer({ key: keyPem, cert: certPem }, (s) => s.end());
  server.on("tlsClientError", () => undefined);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const addr = server.address();
  if (addr === null || typeof addr === "string") throw new Error("no TCP address");
  const s: TLSSocket = tlsConnect({ host: "127.0.0.1", port: addr.port, ca: [caPem], checkServerIdentity: () => undefined, rejectUnauthorized: false });
  await once(s, "secureConnect");
  const ok = s.authorized;
  s.destroy();
  return ok;
}

t.test("ACL token: 403 'Permission denied' without a token, 'ACL not found' with a wrong one, 200 with the right one", async (t) => {
  const d = await double(t, { token: "s3cret" });
  for (const path of ["/v1/agent/connect/ca/leaf/billing", "/v1/agent/connect/ca/roots", "/v1/health/connect/billing", "/v1/agent/services"]) {
    const none = await call(`${d.url}${path}`);
    t.equal(none.status, 403, `${path} without a token`);
    t.match(none.text, /^Permission denied/);
    const wrong = await call(`${d.url}${path}`, { token: "wrong" });
    t.equal(wrong.status, 403, `${path} with a wrong token`);
    t.equal(wrong.text, "ACL not found", "as Consul answers a token it does not know");
    t.equal((await call(`${d.url}${path}`, { token: "s3cret" })).status, 200, `${path} with X-Consul-Token`);
  }
  t.equal((await call(`${d.url}/v1/agent/connect/ca/roots`, { bearer: "s3cret" })).status, 200, "Authorization: Bearer works too");
  t.equal((await call(`${d.url}/v1/agent/connect/ca/roots?token=s3cret`)).status, 200, "so does the legacy ?token=");
  const leafReqs = d.requestsTo("/v1/agent/connect/ca/leaf/billing");
  t.same(
    leafReqs.map((r) => [r.method, r.token, r.status]),
    [
      ["GET", null, 403],
      ["GET", "wrong", 403],
      ["GET", "s3cret", 200],
    ],
    "every request is recorded with its token and answer",
  );
  const authz = await call(`${d.url}/v1/agent/connect/authorize`, { method: "POST", token: "wrong", body: { Target: "billing", ClientCertURI: "spiffe://x.consul/ns/default/dc/dc1/svc/web" } });
  t.equal(authz.status, 403);
  d.setToken("rotated");
  t.equal((await call(`${d.url}/v1/agent/connect/ca/roots`, { token: "s3cret" })).status, 403, "the token can be revoked at run time");
});

t.test("agent/service: §8.4 shape, 404 for unknown ids, hash blocking only", async (t) => {
  const d = await double(t, { datacenter: "east-1" });
  d.registerProxy(BILLING_PROXY);
  const r = await call(`${d.url}/v1/agent/service/billing-sidecar-proxy`);
  t.equal(r.status, 200);
  const b = body(r);
  t.equal(at(b, "Kind"), "connect-proxy");
  t.equal(at(b, "ID"), "billing-sidecar-proxy");
  t.equal(at(b, "Service"), "billing-sidecar-proxy");
  t.equal(at(b, "Port"), 21000);
  t.equal(at(b, "Address"), "10.20.0.15");
  t.equal(at(b, "Datacenter"), "east-1");
  t.same(at(b, "Weights"), { Passing: 1, Warning: 1 });
  t.same(at(b, "Tags"), []);
  t.equal(at(b, "Proxy.DestinationServiceName"), "billing");
  t.equal(at(b, "Proxy.LocalServicePort"), 8080);
  t.equal(at(b, "Proxy.Config.protocol"), "http");
  t.equal(at(b, "Proxy.Upstreams.0.DestinationName"), "ledger");
  t.equal(at(b, "Proxy.Upstreams.0.LocalBindPort"), 9191);
  t.equal(at(b, "Proxy.Upstreams.0.Config.connect_timeout_ms"), 3000);
  t.same(at(b, "Proxy.MeshGateway"), {});
  const hash = str(at(b, "ContentHash"));
  t.match(hash, /^[0-9a-f]{16}$/);
  t.equal(r.headers["x-consul-contenthash"], hash, "X-Consul-ContentHash matches the body");
  t.equal(r.headers["x-consul-index"], undefined, "no index: this endpoint is hash-blocking");

  t.equal((await call(`${d.url}/v1/agent/service/nope`)).status, 404);
  const ignoresIndex = await call(`${d.url}/v1/agent/service/billing-sidecar-proxy?index=999999&wait=30s`);
  t.equal(ignoresIndex.status, 200, "an index does not block it");

  const expired = await call(`${d.url}/v1/agent/service/billing-sidecar-proxy?hash=${hash}&wait=200ms`);
  t.equal(expired.headers["x-consul-contenthash"], hash, "the wait expires with the same hash");

  const pending = call(`${d.url}/v1/agent/service/billing-sidecar-proxy?hash=${hash}&wait=30s`);
  await d.waitForHeld("/v1/agent/service/billing-sidecar-proxy");
  d.registerProxy(BILLING_PROXY);
  t.equal(d.heldCount("/v1/agent/service/"), 1, "re-registering the same definition keeps the same hash: still held");
  d.setIntentions("billing", []);
  t.equal(d.heldCount("/v1/agent/service/"), 1, "unrelated changes do not wake it");
  d.registerProxy({ ...BILLING_PROXY, Proxy: { ...BILLING_PROXY.Proxy!, Upstreams: [] } });
  const changed = await pending;
  t.not(changed.headers["x-consul-contenthash"], hash, "a changed definition returns with a new hash");
  t.same(at(body(changed), "Proxy.Upstreams"), []);

  const newHash = str(changed.headers["x-consul-contenthash"]);
  const proxyDefaults = call(`${d.url}/v1/agent/service/billing-sidecar-proxy?hash=${newHash}&wait=30s`);
  await d.waitForHeld("/v1/agent/service/billing-sidecar-proxy");
  d.setProxyDefaults({ envoy_prometheus_bind_addr: "0.0.0.0:9102", protocol: "tcp" });
  const merged = body(await proxyDefaults);
  t.equal(at(merged, "Proxy.Config.envoy_prometheus_bind_addr"), "0.0.0.0:9102", "proxy-defaults are merged in");
  t.equal(at(merged, "Proxy.Config.protocol"), "http", "under the service's own config");

  const gone = call(`${d.url}/v1/agent/service/billing-sidecar-proxy?hash=${str(at(merged, "ContentHash"))}&wait=30s`);
  await d.waitForHeld("/v1/agent/service/billing-sidecar-proxy");
  t.ok(d.deregister("billing-sidecar-proxy"));
  t.equal((await gone).status, 404, "deregistration wakes a hash watcher with a 404");
});

t.test("agent/services, registration over HTTP, TTL checks and heartbeats", async (t) => {
  const d = await double(t);
  d.registerService({ Name: "web", Port: 8080 });
  const reg = await call(`${d.url}/v1/agent/service/register`, {
    method: "PUT",
    body: { ...BILLING_PROXY, Unknown: "ignored", Check: { CheckID: "billing-ttl", Name: "proxy alive", TTL: "10s" } },
  });
  t.equal(reg.status, 200);
  const all = body(await call(`${d.url}/v1/agent/services`));
  t.same(keys(all).sort(), ["billing-sidecar-proxy", "web"], "a map of id to service");
  t.equal(at(all, "billing-sidecar-proxy.Proxy.DestinationServiceName"), "billing");
  const filtered = body(await call(`${d.url}/v1/agent/services?filter=${encodeURIComponent('Kind == "connect-proxy" and Proxy.DestinationServiceName == "billing"')}`));
  t.same(keys(filtered), ["billing-sidecar-proxy"], "the -sidecar-for filter works");
  t.equal((await call(`${d.url}/v1/agent/services?filter=${encodeURIComponent("Port > 1")}`)).status, 400, "unsupported filters are 400s");

  const bad = await call(`${d.url}/v1/agent/service/register`, { method: "PUT", body: { Kind: "connect-proxy", Name: "x", Port: 1 } });
  t.equal(bad.status, 400, "a proxy without a destination is refused");
  t.equal((await call(`${d.url}/v1/agent/service/register`, { method: "PUT", body: { Name: 5 } })).status, 400);

  t.equal(d.checkStatus("billing-ttl"), "critical", "a new TTL check starts critical");
  const passingOnly = `${d.url}/v1/health/connect/billing?passing`;
  t.same(body(await call(passingOnly)), [], "so the proxy is not yet listed as passing");
  const i0 = indexOf(await call(passingOnly));
  const pending = call(`${passingOnly}&index=${i0}&wait=30s`);
  await d.waitForHeld("/v1/health/connect/billing");
  t.equal((await call(`${d.url}/v1/agent/check/pass/billing-ttl?note=alive`, { method: "PUT" })).status, 200);
  const listed = await pending;
  t.ok(indexOf(listed) > i0, "a heartbeat that changes health wakes health watchers");
  t.equal(at(body(listed), "0.Service.ID"), "billing-sidecar-proxy");
  t.equal(at(body(listed), "0.Service.Address"), "10.20.0.15");
  t.same(
    d.heartbeats.map((h) => [h.checkId, h.status, h.note]),
    [["billing-ttl", "passing", "alive"]],
    "heartbeats are recorded",
  );
  t.equal((await call(`${d.url}/v1/agent/check/pass/nope`, { method: "PUT" })).status, 404);

  t.equal((await call(`${d.url}/v1/agent/service/deregister/billing-sidecar-proxy`, { method: "PUT" })).status, 200);
  t.equal((await call(`${d.url}/v1/agent/service/billing-sidecar-proxy`)).status, 404);
  t.equal((await call(`${d.url}/v1/agent/service/deregister/billing-sidecar-proxy`, { method: "PUT" })).status, 404);
  t.equal(d.checkStatus("billing-ttl"), undefined, "checks go with their service");
  t.same(keys(body(await call(`${d.url}/v1/agent/services`))), ["web"]);
});

t.test("health/connect: §8.5 entries, ?passing, blocking on instance changes", async (t) => {
  const d = await double(t, { datacenter: "east-1" });
  d.setInstances("billing", [
    { id: "billing-1-sidecar-proxy", address: "", nodeAddress: "10.20.0.15", port: 21000, meta: { version: "blue" }, status: "passing" },
    { id: "billing-2-sidecar-proxy", address: "10.20.0.16", port: 21000, meta: { version: "green" }, status: "warning" },
    { id: "billing-3-sidecar-proxy", address: "10.20.0.17", port: 21000, status: "critical" },
    { id: "billing-west", address: "10.30.0.1", port: 21000, datacenter: "west-2" },
  ]);
  const all = await call(`${d.url}/v1/health/connect/billing`);
  const b = body(all);
  t.equal(list(b).length, 3, "all local instances without ?passing");
  t.equal(at(b, "0.Node.Address"), "10.20.0.15");
  t.equal(at(b, "0.Node.Datacenter"), "east-1");
  t.match(at(b, "0.Node.ID"), /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  t.equal(at(b, "0.Service.Kind"), "connect-proxy");
  t.equal(at(b, "0.Service.Service"), "billing-sidecar-proxy");
  t.equal(at(b, "0.Service.Address"), "", "empty service address: dial the node address");
  t.equal(at(b, "0.Service.Port"), 21000);
  t.equal(at(b, "0.Service.Meta.version"), "blue");
  t.equal(at(b, "0.Service.Proxy.DestinationServiceName"), "billing");
  t.equal(at(b, "0.Checks.0.CheckID"), "serfHealth");
  t.equal(at(b, "1.Checks.1.Status"), "warning");

  const passing = body(await call(`${d.url}/v1/health/connect/billing?passing=1`));
  t.same(list(passing).map((e) => at(e, "Service.ID")), ["billing-1-sidecar-proxy"], "?passing drops warning and critical instances");
  const west = body(await call(`${d.url}/v1/health/connect/billing?dc=west-2`));
  t.same(list(west).map((e) => at(e, "Service.ID")), ["billing-west"], "?dc selects another datacenter's instances");
  const green = body(await call(`${d.url}/v1/health/connect/billing?filter=${encodeURIComponent("Service.Meta.version == green")}`));
  t.same(list(green).map((e) => at(e, "Service.ID")), ["billing-2-sidecar-proxy"], "subset filters (§8.6) work");
  t.same(body(await call(`${d.url}/v1/health/connect/unknown`)), [], "an unknown service is an empty list");

  const pending = call(`${d.url}/v1/health/connect/billing?passing&index=${indexOf(all)}&wait=30s`);
  await d.waitForHeld("/v1/health/connect/billing");
  d.setInstances("ledger", [{ id: "ledger-1", address: "10.0.0.9", port: 1 }]);
  t.equal(d.heldCount("/v1/health/connect/billing"), 1, "another service's instances do not wake it");
  d.setInstances("billing", [{ id: "billing-9-sidecar-proxy", address: "10.20.0.99", port: 21001 }]);
  const r = await pending;
  t.ok(indexOf(r) > indexOf(all));
  t.same(list(body(r)).map((e) => at(e, "Service.ID")), ["billing-9-sidecar-proxy"]);
});

t.test("discovery-chain: the default chain, a set chain, blocking", async (t) => {
  const d = await double(t, { datacenter: "east-1" });
  const r = await call(`${d.url}/v1/discovery-chain/billing`);
  const c = at(body(r), "Chain");
  t.equal(at(c, "ServiceName"), "billing");
  t.equal(at(c, "Protocol"), "tcp");
  t.equal(at(c, "Default"), true);
  const start = str(at(c, "StartNode"));
  t.equal(start, "resolver:billing.default.default.east-1");
  const nodes = at(c, "Nodes");
  const startNode: unknown = Object.getOwnPropertyDescriptor(nodes, start)?.value;
  t.equal(at(startNode, "Type"), "resolver");
  const targetId = str(at(startNode, "Resolver.Target"));
  const target: unknown = Object.getOwnPropertyDescriptor(at(c, "Targets"), targetId)?.value;
  t.equal(at(target, "SNI"), `billing.default.east-1.internal.${DEFAULT_TRUST_DOMAIN}`);
  t.equal(at(target, "ConnectTimeout"), "5s");
  t.same(at(target, "MeshGateway"), {});
  const westChain = at(body(await call(`${d.url}/v1/discovery-chain/billing?compile-dc=west-2`)), "Chain");
  t.equal(at(westChain, "StartNode"), "resolver:billing.default.default.west-2", "compile-dc moves the default target");
  t.equal((await call(`${d.url}/v1/discovery-chain/billing`, { method: "POST", body: { OverrideProtocol: "http" } })).status, 200, "POST with overrides is accepted");

  const pending = call(`${d.url}/v1/discovery-chain/billing?index=${indexOf(r)}&wait=30s`);
  await d.waitForHeld("/v1/discovery-chain/billing");
  d.setChain("ledger", { ServiceName: "ledger" });
  t.equal(d.heldCount("/v1/discovery-chain/billing"), 1, "another service's chain does not wake it");
  d.setChain("billing", { ServiceName: "billing", Protocol: "http", StartNode: "splitter:billing" });
  const changed = await pending;
  t.ok(indexOf(changed) > indexOf(r));
  t.equal(at(body(changed), "Chain.Protocol"), "http", "serves the chain that was set");
  d.setChain("billing", null);
  t.equal(at(body(await call(`${d.url}/v1/discovery-chain/billing`)), "Chain.Default"), true, "null restores the default");
});

t.test("intentions/match: precedence order, wildcard destinations, blocking", async (t) => {
  const d = await double(t);
  d.setIntentions("*", [{ source: "*", action: "deny" }]);
  d.setIntentions("billing", [
    { source: "*", action: "deny" },
    { source: "frontend", permissions: [{ Action: "allow", HTTP: { PathPrefix: "/invoices", Methods: ["GET"] } }] },
  ]);
  const r = await call(`${d.url}/v1/connect/intentions/match?by=destination&name=billing`);
  const got = list(at(body(r), "billing"));
  t.same(
    got.map((i) => [at(i, "SourceName"), at(i, "DestinationName"), at(i, "Precedence")]),
    [
      ["frontend", "billing", 9],
      ["*", "billing", 8],
      ["*", "*", 5],
    ],
    "most specific first",
  );
  t.equal(at(got[0], "Action"), undefined, "an L7 intention has no Action");
  t.equal(at(got[0], "Permissions.0.HTTP.PathPrefix"), "/invoices");
  t.equal(at(got[1], "Action"), "deny");
  t.equal(at(got[1], "SourceNS"), "default");
  t.equal(at(got[1], "SourceType"), "consul");
  t.equal((await call(`${d.url}/v1/connect/intentions/match?name=billing`)).status, 400, "by is required");

  const other = call(`${d.url}/v1/connect/intentions/match?by=destination&name=billing&index=${indexOf(r)}&wait=200ms`);
  await d.waitForHeld("/v1/connect/intentions/match");
  d.setIntentions("ledger", [{ source: "web", action: "allow" }]);
  t.equal(indexOf(await other), indexOf(r), "another destination's change does not wake it");

  const pending = call(`${d.url}/v1/connect/intentions/match?by=destination&name=billing&index=${indexOf(r)}&wait=30s`);
  await d.waitForHeld("/v1/connect/intentions/match");
  d.setIntentions("*", []);
  const changed = await pending;
  t.ok(indexOf(changed) > indexOf(r), "a wildcard-destination change wakes every destination");
  t.equal(list(at(body(changed), "billing")).length, 2);

  const defaults = call(`${d.url}/v1/connect/intentions/match?by=destination&name=billing&index=${indexOf(changed)}&wait=30s`);
  await d.waitForHeld("/v1/connect/intentions/match");
  d.setAclDefaultPolicy("deny");
  t.equal((await defaults).headers["x-consul-default-acl-policy"], "deny", "acl.default_policy travels in a header, and a change wakes watchers");
});

t.test("authorize: §8.3 decisions and error cases", async (t) => {
  const d = await double(t);
  const uri = (svc: string): string => `spiffe://${DEFAULT_TRUST_DOMAIN}/ns/default/dc/dc1/svc/${svc}`;
  const authz = async (b: Record<string, string>): Promise<Reply> => call(`${d.url}/v1/agent/connect/authorize`, { method: "POST", body: b });
  d.setIntentions("billing", [
    { source: "frontend", permissions: [{ Action: "allow", HTTP: { PathPrefix: "/" } }] },
    { source: "reporting", action: "allow" },
    { source: "*", action: "deny" },
  ]);
  const l7 = body(await authz({ Target: "billing", ClientCertURI: uri("frontend"), ClientCertSerial: "7f:10:a2" }));
  t.same(l7, { Authorized: false, Reason: "Matched L7 intention: frontend => billing (Permissions)" }, "L7 intentions deny");
  t.same(body(await authz({ Target: "billing", ClientCertURI: uri("reporting") })), { Authorized: true, Reason: "Matched L4 intention: reporting => billing (allow)" });
  t.same(body(await authz({ Target: "billing", ClientCertURI: uri("mallory") })), { Authorized: false, Reason: "Matched L4 intention: * => billing (deny)" });
  t.same(body(await authz({ Target: "ledger", ClientCertURI: uri("web") })), { Authorized: true, Reason: "ACLs disabled, access is allowed by default" });
  d.setAclDefaultPolicy("deny");
  t.same(body(await authz({ Target: "ledger", ClientCertURI: uri("web") })), { Authorized: true, Reason: "ACLs disabled, access is allowed by default" }, "acl.default_policy does not apply with ACLs off");
  d.setDefaultIntentionPolicy("deny");
  t.same(body(await authz({ Target: "ledger", ClientCertURI: uri("web") })), { Authorized: false, Reason: "Default intention policy" }, "default_intention_policy decides, ACLs or not");
  d.setDefaultIntentionPolicy("");

  const noTarget = await authz({ ClientCertURI: uri("web") });
  t.equal(noTarget.status, 400);
  t.equal(noTarget.text, "Target service must be specified");
  const notSpiffe = await authz({ Target: "billing", ClientCertURI: "https://example.com/" });
  t.equal(notSpiffe.status, 400);
  t.equal(notSpiffe.text, "ClientCertURI not a valid Connect identifier");
  const agentId = await authz({ Target: "billing", ClientCertURI: `spiffe://${DEFAULT_TRUST_DOMAIN}/agent/client/dc/dc1/id/abc` });
  t.equal(agentId.status, 400);
  t.equal(agentId.text, "ClientCertURI not a valid Service identifier");
  const garbage = await call(`${d.url}/v1/agent/connect/authorize`, { method: "POST", body: "not an object" });
  t.equal(garbage.status, 400);
});

t.test("index reset: a snapshot restore wakes watchers with a lower index; a stale index then blocks", async (t) => {
  const d = await double(t);
  d.setIntentions("billing", []);
  const first = await call(`${d.url}/v1/connect/intentions/match?by=destination&name=billing`);
  const seen = indexOf(first);
  const pending = call(`${d.url}/v1/connect/intentions/match?by=destination&name=billing&index=${seen}&wait=30s`);
  await d.waitForHeld("/v1/connect/intentions/match");
  d.resetIndex(5);
  const r = await pending;
  t.equal(indexOf(r), 5, "returned at once with the lower index");
  t.ok(indexOf(r) < seen, "below what the client had seen: it must reset to 0");

  const started = Date.now();
  const stale = await call(`${d.url}/v1/connect/intentions/match?by=destination&name=billing&index=${seen}&wait=200ms`);
  t.ok(Date.now() - started >= 190, "a client that keeps its stale index just waits out every query");
  t.equal(indexOf(stale), 5);

  const fresh = await call(`${d.url}/v1/connect/intentions/match?by=destination&name=billing`);
  t.equal(indexOf(fresh), 5, "index 0 (reset) returns at once");
  const next = call(`${d.url}/v1/connect/intentions/match?by=destination&name=billing&index=5&wait=30s`);
  await d.waitForHeld("/v1/connect/intentions/match");
  d.setIntentions("billing", [{ source: "web", action: "allow" }]);
  t.equal(indexOf(await next), 6, "changes count up again from the restored index");
  t.throws(() => d.resetIndex(100), "a reset must go down");
});

t.test("zero-index bug: X-Consul-Index 0; index 1 blocks until a change", async (t) => {
  const d = await double(t);
  d.zeroIndexBug(true);
  const r = await call(`${d.url}/v1/agent/connect/ca/roots`);
  t.equal(r.headers["x-consul-index"], "0");
  const busy = await call(`${d.url}/v1/agent/connect/ca/roots?index=0&wait=30s`);
  t.equal(busy.status, 200, "sending the 0 back returns at once (the busy loop a client must avoid)");
  const started = Date.now();
  const expired = await call(`${d.url}/v1/agent/connect/ca/roots?index=1&wait=200ms`);
  t.ok(Date.now() - started >= 190, "index 1 blocks for the wait");
  t.equal(expired.headers["x-consul-index"], "0");
  const pending = call(`${d.url}/v1/agent/connect/ca/roots?index=1&wait=30s`);
  await d.waitForHeld("/v1/agent/connect/ca/roots");
  await d.rotateRoots();
  const changed = await pending;
  t.equal(changed.headers["x-consul-index"], "0", "still 0 after a change");
  t.equal(list(at(body(changed), "Roots")).length, 2, "but the change is delivered");
  d.zeroIndexBug(false);
  t.ok(indexOf(await call(`${d.url}/v1/agent/connect/ca/roots`)) > 40);
});

t.test("faults: 500, 403, garbage, slow, reset, stall — per path prefix, settable at run time", async (t) => {
  const d = await double(t);
  const roots = `${d.url}/v1/agent/connect/ca/roots`;
  const leaf = `${d.url}/v1/agent/connect/ca/leaf/web`;

  d.fault("/v1/agent/connect/ca/roots", "500");
  const e500 = await call(roots);
  t.equal(e500.status, 500);
  t.equal(e500.headers["content-type"], "text/plain; charset=utf-8");
  t.ok(e500.text.length > 0 && e500.text.length < 100, "a short plain-text body");
  t.equal((await call(leaf)).status, 200, "other paths are unaffected");

  d.fault("/v1/agent/connect/ca/roots", "403");
  const e403 = await call(roots);
  t.equal(e403.status, 403);
  t.match(e403.text, /^Permission denied/);

  d.fault("/v1/agent/connect/ca/roots", "garbage");
  const g = await call(roots);
  t.equal(g.status, 200);
  t.equal(g.headers["content-type"], "application/json");
  t.throws((): unknown => JSON.parse(g.text), "malformed JSON");

  d.fault("/v1/agent/connect/ca/roots", "slow:150");
  const started = Date.now();
  t.equal((await call(roots)).status, 200);
  t.ok(Date.now() - started >= 140, "slow answers after the delay");

  d.fault("/v1/agent/connect/ca/roots", "reset");
  await t.rejects(call(roots), "reset cuts the connection without an answer");

  d.fault("/v1/agent/connect/ca", "stall");
  d.fault("/v1/agent/connect/ca/roots", "none");
  const stalled = call(leaf);
  await d.waitForHeld("/v1/agent/connect/ca/leaf/web");
  t.equal((await call(roots)).status, 200, "the longest prefix wins: roots was cleared, leaf still stalls");
  const aborted = call(leaf, { signal: AbortSignal.timeout(150) });
  await t.rejects(aborted, "a stalled request never answers on its own");
  d.fault("/v1/agent/connect/ca", "none");
  const released = await stalled;
  t.equal(released.status, 200, "clearing the fault serves the stalled request");
  t.equal(at(body(released), "Service"), "web");

  d.fault("/v1/", "stall");
  t.equal((await call(roots)).status, 200, "an explicit none also exempts a path from a shorter prefix's fault");
  const cut = call(`${d.url}/v1/health/connect/web`);
  await d.waitForHeld("/v1/health/connect/web");
  await d.stop();
  await t.rejects(cut, "stop() cuts stalled requests");
});

t.test("pause/resume: connections are refused, held queries cut, then the same port answers again", async (t) => {
  const d = await double(t);
  const url = `${d.url}/v1/agent/connect/ca/roots`;
  const port = d.port;
  const i0 = indexOf(await call(url));
  const held = call(`${url}?index=${i0}&wait=30s`);
  await d.waitForHeld("/v1/agent/connect/ca/roots");
  await d.pause();
  await t.rejects(held, "a blocked query is cut when the agent goes away");
  await t.rejects(call(url), { code: "ECONNREFUSED" }, "new connections are refused");
  await d.resume();
  t.equal(d.port, port, "same port");
  const r = await call(url);
  t.equal(r.status, 200, "and it answers again");
  t.equal(indexOf(r), i0, "with its state intact");
});

t.test("stop() ends held blocking queries and is idempotent", async (t) => {
  const d = await ConsulAgentDouble.start();
  const i0 = indexOf(await call(`${d.url}/v1/agent/connect/ca/roots`));
  const held = call(`${d.url}/v1/agent/connect/ca/roots?index=${i0}&wait=5m`);
  await d.waitForHeld("/v1/agent/connect/ca/roots");
  await d.stop();
  await t.rejects(held);
  await d.stop();
  t.equal(d.heldCount(), 0);
});
