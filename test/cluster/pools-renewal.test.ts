// A leaf renewal keeps the upstream pools: open connections go on (their leaf is still valid),
// new connections present the new leaf. Before, every renewal replaced every pool, and a caller
// under load re-handshook all its concurrency at once (the hour soak: hundreds of new mTLS
// connections per api instance a minute, event-loop stalls, RSS following the connection count).
// A change of the trusted roots still takes new pools.
import t from "tap";
import { once } from "node:events";
import { X509Certificate } from "node:crypto";
import { createServer, type TLSSocket } from "node:tls";
import type { AddressInfo } from "node:net";
import { createRootCa, issueLeaf } from "../../src/index.js";
import { buildTlsMaterial, type TlsMaterial } from "../../src/tls/contexts.js";
import { SessionCache } from "../../src/tls/origin.js";
import { PoolSet, type PoolTarget } from "../../src/cluster/pools.js";
import type { OriginPool } from "../../src/http1/client.js";
import { spiffe, sni, TRUST_DOMAIN } from "../helpers/mesh-tls.js";

const ca = await createRootCa(TRUST_DOMAIN);
const otherCa = await createRootCa(TRUST_DOMAIN);
const material = async (root: typeof ca, roots: string[], service = "web"): Promise<TlsMaterial> => {
  const l = await issueLeaf(root, { spiffeId: spiffe(service), commonName: service, ttlMs: 3_600_000 });
  return buildTlsMaterial(
    { service, namespace: "default", datacenter: "dc1", trustDomain: TRUST_DOMAIN, spiffeId: spiffe(service), certChainPem: l.certPem, privateKeyPem: l.keyPem, serial: l.serial, notBefore: l.notBefore, notAfter: l.notAfter },
    { trustDomain: TRUST_DOMAIN, rootsPem: roots },
  );
};
const first = await material(ca, [ca.certPem]);
const renewed = await material(ca, [ca.certPem]);
const rerooted = await material(ca, [ca.certPem, otherCa.certPem]);
const db = await issueLeaf(ca, { spiffeId: spiffe("db"), commonName: "db", ttlMs: 3_600_000 });

// db: answers every request with 200 on a keep-alive connection; remembers each connection's
// client serial and SPIFFE ID (what an inbound sidecar authorizes).
const serials: string[] = [];
const callers: string[] = [];
async function dbServer(leaf: typeof db): Promise<PoolTarget> {
  const server = createServer({ cert: leaf.certPem, key: leaf.keyPem, ca: [ca.certPem], requestCert: true, rejectUnauthorized: true }, (s: TLSSocket) => {
    const peer = s.getPeerCertificate();
    serials.push(peer.serialNumber.toLowerCase());
    callers.push(peer.subjectaltname ?? "");
    s.on("error", () => s.destroy());
    s.on("data", () => s.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => server.close());
  return { host: "127.0.0.1", port: (server.address() as AddressInfo).port, sni: sni("db"), expectedSpiffeId: spiffe("db"), connectTimeoutMs: 2000, http2: false, maxConnections: 10 };
}
const target = await dbServer(db);

function get(pool: OriginPool): Promise<number> {
  return new Promise((resolve, reject) => {
    let status = 0;
    const req = pool.request("GET / HTTP/1.1\r\nhost: db\r\n\r\n", false, false, false, 5000, {
      head: (st) => (status = st),
      body: () => {},
      end: () => resolve(status),
      error: (e) => reject(e),
    });
    req.end();
  });
}

const norm = (serial: string) => serial.toLowerCase().replace(/^0+/, "");

t.test("a renewed leaf keeps the pool and its connections; a new connection presents the new leaf", async (t) => {
  // As the proxy applies a Snapshot: TLS sessions are dropped when the material changes (a
  // resumed session would carry the old leaf), then the pools take the new material.
  const sessions = new SessionCache();
  const apply = (m: TlsMaterial) => {
    sessions.reset(m.key);
    pools.useMaterial(m);
  };
  const pools = new PoolSet(sessions);
  t.teardown(() => pools.closeAll());
  apply(first);
  t.equal(PoolSet.key(target, renewed), PoolSet.key(target, first), "same roots, new leaf: the same pool key");
  t.not(PoolSet.key(target, rerooted), PoolSet.key(target, first), "roots changed: another pool");

  const pool = pools.getHttp1(target, first);
  t.equal(await get(pool), 200);
  t.equal(serials.length, 1, "one connection");
  t.equal(norm(serials[0]!), norm(leafSerial(first)), "presenting the first leaf");

  apply(renewed);
  t.equal(pools.getHttp1(target, renewed), pool, "after the renewal the same pool is handed out");
  t.equal(await get(pool), 200);
  t.equal(serials.length, 1, "the open connection carried the request: no new handshake");

  // Two at once: one takes the open connection, the other needs a new one.
  t.same(await Promise.all([get(pool), get(pool)]), [200, 200]);
  t.equal(serials.length, 2, "one new connection");
  t.equal(norm(serials[1]!), norm(leafSerial(renewed)), "presenting the renewed leaf");
});

function leafSerial(m: TlsMaterial): string {
  const cert = m.options.cert;
  if (typeof cert !== "string") throw new Error("expected the leaf as PEM");
  return new X509Certificate(cert).serialNumber;
}

t.test("a new identity of our own takes a new pool: a connection made as the old one is never reused", async (t) => {
  const pools = new PoolSet(new SessionCache());
  t.teardown(() => pools.closeAll());
  const renamed = await material(ca, [ca.certPem], "web-admin");
  t.not(PoolSet.key(target, renamed), PoolSet.key(target, first), "same roots, another SPIFFE ID: another pool key");
  pools.useMaterial(first);
  const asWeb = pools.getHttp1(target, first);
  t.equal(await get(asWeb), 200);
  pools.useMaterial(renamed);
  const asAdmin = pools.getHttp1(target, renamed);
  t.not(asAdmin, asWeb, "the pool of the old identity is not handed out");
  const before = callers.length;
  t.equal(await get(asAdmin), 200);
  t.equal(callers.length, before + 1, "a new connection");
  t.equal(callers.at(-1), `URI:${spiffe("web-admin")}`, "presenting the new identity, which the peer authorizes");
});

t.test("a root dropped from the bundle: the pool verified under it is not reused, and its peer is refused", async (t) => {
  const pools = new PoolSet(new SessionCache());
  t.teardown(() => pools.closeAll());
  // db's instance with a leaf from the other root, trusted while both roots are.
  const otherDb = await issueLeaf(otherCa, { spiffeId: spiffe("db"), commonName: "db", ttlMs: 3_600_000 });
  const other = await dbServer(otherDb);
  pools.useMaterial(rerooted);
  const both = pools.getHttp1(other, rerooted);
  t.equal(await get(both), 200, "trusted while the bundle holds both roots");
  const shrunk = await material(ca, [ca.certPem]);
  pools.useMaterial(shrunk);
  const after = pools.getHttp1(other, shrunk);
  t.not(after, both, "the bundle lost a root: another pool");
  await t.rejects(get(after), /certificate|verify|issuer/i, "a new connection to the peer of the dropped root is refused");
});
