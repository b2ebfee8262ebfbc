// A resumed TLS session carries the peer certificate and the verification result of the full
// handshake it came from: OpenSSL checks neither again, so a peer whose leaf has expired since
// is accepted on resumption for as long as the server keeps the session (300 s by default).
// Short-lived leaves are how the mesh takes an identity away (a service that can no longer
// renew loses access when its leaf expires), so both sides check the leaf's validity on a
// resumed session too.
import t from "tap";
import { createServer, createSecureContext, type TLSSocket } from "node:tls";
import type { AddressInfo } from "node:net";
import { once } from "node:events";
import { createRootCa, issueLeaf, type IssuedLeaf } from "../../src/index.js";
import { originate, SessionCache, type UpstreamTlsError } from "../../src/tls/origin.js";
import { verifyClient } from "../../src/identity/peer.js";
import type { TlsMaterial } from "../../src/tls/contexts.js";

const TD = "11111111-2222-3333-4444-555555555555.consul";
const spiffe = (svc: string) => `spiffe://${TD}/ns/default/dc/dc1/svc/${svc}`;
const ca = await createRootCa(TD);

/** A leaf that expires `ms` from now (back-dated, so it is not a short TTL the issuer would skew). */
function expiringIn(service: string, ms: number): Promise<IssuedLeaf> {
  return issueLeaf(ca, { spiffeId: spiffe(service), commonName: service, notBefore: new Date(Date.now() - 60_000), ttlMs: 60_000 + ms });
}

/** Resolves once `leaf` is past its notAfter (to the second, as X.509 times are). */
async function expired(leaf: IssuedLeaf): Promise<void> {
  const wait = leaf.notAfter.getTime() + 1_100 - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
}

function material(leaf: IssuedLeaf): TlsMaterial {
  return { key: "k", identityKey: "k", options: {}, clientContext: createSecureContext({ key: leaf.keyPem, cert: leaf.certPem, ca: ca.certPem }) };
}

t.test("the public listener's check: a client whose leaf expired is refused on a resumed session too", async (t) => {
  const db = await issueLeaf(ca, { spiffeId: spiffe("db"), commonName: "db", ttlMs: 3_600_000 });
  const web = await expiringIn("web", 1_500);
  const verdicts: { reused: boolean; ok: boolean; reason: string }[] = [];
  // As PublicListener sets it up: every chain is checked after the handshake, by verifyClient.
  const server = createServer({ key: db.keyPem, cert: db.certPem, ca: ca.certPem, requestCert: true, rejectUnauthorized: false }, (s) => {
    const v = verifyClient(s, TD);
    verdicts.push({ reused: s.isSessionReused(), ok: v.ok, reason: v.ok ? "" : v.reason });
    s.end("ok");
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const sessions = new SessionCache();
  const connect = () =>
    new Promise<void>((resolve) => {
      originate({ host: "127.0.0.1", port, sni: "db", expectedSpiffeId: spiffe("db"), timeoutMs: 5_000 }, material(web), sessions, (err, s: TLSSocket) => {
        if (err) return resolve();
        // Read to the server's end (and so take its session tickets); half-open, so closed here.
        s.on("data", () => {});
        s.once("end", () => {
          s.destroy();
          resolve();
        });
      });
    });
  await connect();
  t.same(verdicts[0], { reused: false, ok: true, reason: "" }, "a full handshake with a valid leaf is accepted");
  await expired(web);
  await connect();
  t.equal(verdicts[1]?.reused, true, "the client resumed the session of that handshake");
  t.same([verdicts[1]?.ok, verdicts[1]?.reason], [false, "expired_certificate"], "its leaf has expired since: refused, as a full handshake would be");
});

t.test("an outbound connection: a server whose leaf expired is refused on a resumed session too", async (t) => {
  const db = await expiringIn("db", 1_500);
  const web = await issueLeaf(ca, { spiffeId: spiffe("web"), commonName: "web", ttlMs: 3_600_000 });
  const server = createServer({ key: db.keyPem, cert: db.certPem, ca: ca.certPem, requestCert: true }, (s) => s.end("ok"));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const sessions = new SessionCache();
  const tls = material(web);
  const connect = () =>
    new Promise<{ reused: boolean } | UpstreamTlsError>((resolve) => {
      originate({ host: "127.0.0.1", port, sni: "db", expectedSpiffeId: spiffe("db"), timeoutMs: 5_000 }, tls, sessions, (err, s: TLSSocket) => {
        if (err) return resolve(err);
        const reused = s.isSessionReused();
        s.on("data", () => {});
        s.once("end", () => {
          s.destroy();
          resolve({ reused });
        });
      });
    });
  t.same(await connect(), { reused: false }, "a full handshake with a valid server leaf");
  t.same(await connect(), { reused: true }, "the next connection resumes its session");
  await expired(db);
  const again = await connect();
  t.ok("kind" in again && again.kind === "connect", `once the leaf has expired, the session is not offered: a full handshake refuses the leaf (${"message" in again ? again.message : JSON.stringify(again)})`);
  t.match("message" in again ? again.message : "", /certificate has expired/, "as expired");
});
