// Originating mTLS: sessions are resumed on both dialling paths (the pools' own TCP socket and
// the L4 pipe's direct dial with onread), a cached session is kept rather than replaced on every
// connection, and one the server no longer accepts is replaced by the next handshake's tickets.
import t from "tap";
import { createServer, createSecureContext, type TLSSocket } from "node:tls";
import { randomBytes } from "node:crypto";
import { createServer as createNetServer, type AddressInfo, type Socket } from "node:net";
import { once } from "node:events";
import { createRootCa, issueLeaf } from "../../src/index.js";
import { originate, SessionCache, type OriginTarget } from "../../src/tls/origin.js";
import type { TlsMaterial } from "../../src/tls/contexts.js";

const TD = "11111111-2222-3333-4444-555555555555.consul";
const spiffe = (svc: string) => `spiffe://${TD}/ns/default/dc/dc1/svc/${svc}`;

t.test("SessionCache keeps a session for 60 s before asking for a new one", async (t) => {
  const c = new SessionCache();
  t.equal(c.wants("a", 0), true, "nothing cached: a connection should take the server's tickets");
  c.set("a", Buffer.from("s1"), "first-material", Infinity);
  const at = Date.now();
  t.equal(c.wants("a", at + 1_000), false, "a fresh session is reused as is");
  t.equal(c.wants("a", at + 61_000), true, "after a minute a connection takes new tickets");
  c.reset("other-material");
  t.equal(c.get("a"), undefined, "new TLS material drops every session");
  c.set("a", Buffer.from("late"), "first-material", Infinity);
  t.equal(c.get("a"), undefined, "a ticket made with the old material that arrives after the change is not kept");
  c.set("a", Buffer.from("s2"), "other-material", Infinity);
  t.same(c.get("a"), Buffer.from("s2"), "one made with the current material is");
  c.set("b", Buffer.from("s3"), "other-material", 5_000);
  t.same(c.get("b", 5_000), Buffer.from("s3"), "a session is offered until the server leaf it was verified with expires");
  t.equal(c.get("b", 5_001), undefined, "and not after: resuming would accept the expired leaf unchecked");
  c.set("c", Buffer.from("s4"), "other-material", NaN);
  t.equal(c.get("c"), undefined, "nor when that expiry is unknown");
});

t.test("upstream connections resume, on both dialling paths, and recover from refused sessions", async (t) => {
  const ca = await createRootCa(TD);
  const db = await issueLeaf(ca, { spiffeId: spiffe("db"), commonName: "db", ttlMs: 3_600_000 });
  const web = await issueLeaf(ca, { spiffeId: spiffe("web"), commonName: "web", ttlMs: 3_600_000 });
  const server = createServer({ key: db.keyPem, cert: db.certPem, ca: ca.certPem, requestCert: true }, (s) => s.end("ok"));
  server.listen(0, "127.0.0.1");
  await new Promise((r) => server.once("listening", r));
  t.teardown(() => server.close());
  const material: TlsMaterial = { key: "k", identityKey: "k", options: {}, clientContext: createSecureContext({ key: web.keyPem, cert: web.certPem, ca: ca.certPem }) };
  const sessions = new SessionCache();
  const port = (server.address() as AddressInfo).port;
  const connectOnce = (direct: boolean) =>
    new Promise<boolean>((resolve, reject) => {
      const target: OriginTarget = {
        host: "127.0.0.1",
        port,
        sni: "db.default.dc1.internal." + TD,
        expectedSpiffeId: spiffe("db"),
        timeoutMs: 5000,
        ...(direct ? { onread: { buffer: Buffer.alloc(1024), callback: () => true } } : {}),
      };
      originate(target, material, sessions, (err, s: TLSSocket) => {
        if (err) return reject(err);
        const reused = s.isSessionReused();
        // Read until the server's end, so the session tickets it sent are taken.
        s.on("data", () => {});
        s.once("end", () => {
          s.destroy();
          resolve(reused);
        });
      });
    });
  t.equal(await connectOnce(false), false, "the first connection is a full handshake");
  t.equal(await connectOnce(false), true, "the next one, dialled like a pool's, resumes");
  t.equal(await connectOnce(true), true, "and so does one dialled like the L4 pipe's");
  // The server forgets its ticket keys (a restart): the cached session is refused once, and the
  // tickets of that full handshake are taken even though the cache entry was still fresh.
  server.setTicketKeys(randomBytes(48));
  t.equal(await connectOnce(true), false, "a refused session means a full handshake");
  t.equal(await connectOnce(true), true, "after which connections resume again");
});

// The connect deadline is checked after the loop has read its I/O (src/tcp/connect-deadline.ts);
// deferring it must neither let a peer that never finishes the handshake hold the attempt open
// nor let a handshake that completes late skip the identity check.
t.test("a peer that accepts TCP and never speaks TLS is timed out; a late wrong identity is refused as such", async (t) => {
  const ca = await createRootCa(TD);
  const web = await issueLeaf(ca, { spiffeId: spiffe("web"), commonName: "web", ttlMs: 3_600_000 });
  const impostor = await issueLeaf(ca, { spiffeId: spiffe("cache"), commonName: "cache", ttlMs: 3_600_000 });
  const material: TlsMaterial = { key: "k", identityKey: "k", options: {}, clientContext: createSecureContext({ key: web.keyPem, cert: web.certPem, ca: ca.certPem }) };
  const attempt = (port: number, timeoutMs: number) =>
    new Promise<{ kind: string | null; handedOut: boolean; ms: number }>((resolve) => {
      const started = performance.now();
      const target: OriginTarget = { host: "127.0.0.1", port, sni: "db.default.dc1.internal." + TD, expectedSpiffeId: spiffe("db"), timeoutMs };
      originate(target, material, new SessionCache(), (err, s: TLSSocket) => {
        if (!err) s.destroy();
        resolve({ kind: err ? err.kind : null, handedOut: err === null, ms: performance.now() - started });
      });
    });

  const held: Socket[] = [];
  const silent = createNetServer((s) => held.push(s));
  silent.listen(0, "127.0.0.1");
  await once(silent, "listening");
  t.teardown(() => {
    for (const s of held) s.destroy();
    silent.close();
  });
  const quiet = await attempt((silent.address() as AddressInfo).port, 150);
  t.same([quiet.kind, quiet.handedOut], ["timeout", false], "a silent peer: timeout, no socket handed out");
  t.ok(quiet.ms >= 140, `not before the deadline (${quiet.ms.toFixed(0)} ms)`);

  // The impostor answers only after the client's deadline has passed while the loop was busy.
  const wrong = createServer({ key: impostor.keyPem, cert: impostor.certPem, ca: ca.certPem, requestCert: true }, (s) => s.end());
  wrong.listen(0, "127.0.0.1");
  await once(wrong, "listening");
  t.teardown(() => wrong.close());
  const late = attempt((wrong.address() as AddressInfo).port, 1000);
  const until = performance.now() + 1200;
  while (performance.now() < until);
  const r = await late;
  t.equal(r.handedOut, false, "a wrong identity is never handed out, however late the handshake");
  t.ok(r.kind === "identity" || r.kind === "timeout", `refused (${r.kind})`);
  const prompt = await attempt((wrong.address() as AddressInfo).port, 1000);
  t.same([prompt.kind, prompt.handedOut], ["identity", false], "and refused as a wrong identity when in time");
});
