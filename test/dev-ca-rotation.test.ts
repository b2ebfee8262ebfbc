// Rotating the dev CA's root in the state directory: roots.json is written whole and private, the
// trust bundle holds the new and the previous root (never more, however often one rotates), and
// a leaf of the new root sent with its cross-signed intermediate is accepted over TLS by a peer
// that trusts only the previous root.
import t from "tap";
import { once } from "node:events";
import { chmod, readdir, rm, stat, writeFile } from "node:fs/promises";
import { connect, createServer, type TLSSocket } from "node:tls";
import type { AddressInfo } from "node:net";
import { ensureCa, openStateDir, paths, readCaRoots, StateError, type CaRoots } from "../src/controlplane/dev/state.js";
import { rotateCa } from "../src/controlplane/dev/ca-rotation.js";
import { UnsafeStateDirError } from "../src/controlplane/dev/permissions.js";
import { issueLeaf, type CaMaterial, type IssuedLeaf, type LeafRequest } from "../src/identity/ca.js";
import { DevControlPlane } from "../src/controlplane/dev/dev.js";
import type { Snapshot } from "../src/config/snapshot.js";
import { createLogger } from "../src/telemetry/log.js";
import { until } from "./helpers/l7.js";
import { X509Certificate } from "node:crypto";
import { serialOf } from "../src/identity/serial.js";
import { tempDir, type Teardown } from "./helpers/mesh.js";

async function freshCa(t: Teardown): Promise<{ dir: string; first: CaRoots }> {
  const dir = await tempDir(t);
  await openStateDir(dir);
  return { dir, first: await ensureCa(dir) };
}

/** A TLS handshake: the server sends `chainPem` (leaf first), the client trusts only `trusted`. */
async function handshake(t: Teardown, ca: CaRoots, trusted: readonly string[]): Promise<{ authorized: boolean; error: string | null }> {
  const leaf = await issueLeaf(ca, { spiffeId: "spiffe://x.consul/ns/default/dc/dc1/svc/db", commonName: "db", ttlMs: 3_600_000 });
  const server = createServer({ cert: leaf.certPem + ca.intermediatesPem.join(""), key: leaf.keyPem }, (s) => s.end());
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => server.close());
  const s: TLSSocket = connect({ host: "127.0.0.1", port: (server.address() as AddressInfo).port, ca: [...trusted], rejectUnauthorized: false, checkServerIdentity: () => undefined });
  await once(s, "secureConnect");
  const r = { authorized: s.authorized, error: s.authorizationError ? String(s.authorizationError) : null };
  s.destroy();
  return r;
}

t.test("before any rotation the CA is root.pem alone", async (t) => {
  const { dir, first } = await freshCa(t);
  t.equal(first.rotated, false, "not from roots.json");
  t.same(first.rootsPem, [first.certPem], "one trusted root");
  t.same(first.intermediatesPem, [], "no intermediate");
  t.equal(first.rootId, serialOf(first.certPem), "its id is its serial");
  t.notOk((await readdir(paths(dir).caDir)).includes("roots.json"), "no roots.json yet");
});

t.test("a rotation makes a new active root, cross-signed, trusted with the previous one", async (t) => {
  const { dir, first } = await freshCa(t);
  const r = await rotateCa(dir);
  t.equal(r.previousId, first.rootId, "the previous root is the first one");
  t.same(r.retiredIds, [], "nothing retired on the first rotation");
  t.equal((await stat(paths(dir).roots)).mode & 0o777, 0o600, "roots.json holds a key: 0600");
  t.same((await readdir(paths(dir).caDir)).filter((f) => f.endsWith(".tmp") || f.endsWith(".lock")), [], "no temp or lock file left behind");
  const now = await readCaRoots(dir, { rotated: false });
  t.equal(now.rotated, true, "read from roots.json");
  t.equal(now.rootId, r.rootId, "the active root is the new one");
  t.not(now.rootId, first.rootId, "and not the first");
  t.same(now.rootsPem.map(serialOf), [r.rootId, first.rootId], "the bundle: new, then previous");
  t.equal(now.intermediatesPem.length, 1, "one cross-signed intermediate");
  const again = await ensureCa(dir);
  t.equal(again.rootId, r.rootId, "a proxy starting now issues from the new root");

  const oldOnly = await handshake(t, now, [first.certPem]);
  t.same(oldOnly, { authorized: true, error: null }, "a peer trusting only the previous root accepts a new leaf sent with the cross-signed intermediate");
  const bare = await handshake(t, { ...now, intermediatesPem: [] }, [first.certPem]);
  t.equal(bare.authorized, false, "without the intermediate it would not (so the intermediate is what makes it work)");
  t.same(await handshake(t, first, now.rootsPem), { authorized: true, error: null }, "a peer with the new bundle accepts a leaf of the previous root");
  t.same(await handshake(t, now, now.rootsPem), { authorized: true, error: null }, "and a new leaf");
});

t.test("repeated rotations keep the bundle at two roots: the root before last is retired", async (t) => {
  const { dir, first } = await freshCa(t);
  const r1 = await rotateCa(dir);
  const r2 = await rotateCa(dir);
  t.same(r2.retiredIds, [first.rootId], "the second rotation retires the first root");
  const r3 = await rotateCa(dir);
  t.same(r3.retiredIds, [r1.rootId], "the third retires the first rotation's root");
  const now = await readCaRoots(dir, { rotated: true });
  t.same(now.rootsPem.map(serialOf), [r3.rootId, r2.rootId], "two roots: the active and the previous");
  t.same(await handshake(t, now, [now.rootsPem[1]!]), { authorized: true, error: null }, "the third root's leaf is accepted by a peer trusting only the second");
});

t.test("rotations started at once both land, one after the other", async (t) => {
  const { dir, first } = await freshCa(t);
  const [a, b] = await Promise.all([rotateCa(dir), rotateCa(dir)]);
  const chained = (a.previousId === first.rootId && b.previousId === a.rootId) || (b.previousId === first.rootId && a.previousId === b.rootId);
  t.ok(chained, "the second cross-signed from the first's root, not from the same old one");
});

t.test("a broken or deleted roots.json is an error naming the file, never the first root again", async (t) => {
  const { dir, first } = await freshCa(t);
  await rotateCa(dir);
  await writeFile(paths(dir).roots, "{ not json", { mode: 0o600 });
  await t.rejects(readCaRoots(dir, { rotated: true }), StateError, "garbage: a StateError");
  await writeFile(paths(dir).roots, JSON.stringify({ active: { cert_pem: first.certPem, key_pem: (await issueLeaf(first, { spiffeId: "spiffe://x/y", commonName: "y", ttlMs: 60_000 })).keyPem }, previous: [] }), { mode: 0o600 });
  await t.rejects(readCaRoots(dir, { rotated: true }), /active\.key_pem: it is not the key of active\.cert_pem/, "a key that is not the root's is refused");
  await rm(paths(dir).roots);
  await t.rejects(readCaRoots(dir, { rotated: true }), /roots\.json: missing \(deleted\?\)/, "once rotated, a missing roots.json is a deletion");
  t.equal((await readCaRoots(dir, { rotated: false })).rootId, first.rootId, "a reader that never saw a rotation reads root.pem");
});

t.test("rotating a directory without a CA says to start a sidecar first", async (t) => {
  const dir = await tempDir(t);
  await openStateDir(dir);
  await t.rejects(rotateCa(dir), /there is no dev CA to rotate yet; start a sidecar/, "refused, with what to do");
});

t.test("a roots.json others can read is refused like root.key", async (t) => {
  const { dir } = await freshCa(t);
  await rotateCa(dir);
  await chmod(paths(dir).roots, 0o644);
  await t.rejects(openStateDir(dir), UnsafeStateDirError, "it holds the active root's key");
});

// The soak's second rotation cut web → api for 8 s: a sidecar whose scheduled renewal was in
// flight when it noticed the first rotation kept that renewal's old-root leaf (and its renewal
// timer replaced the rotation's), so the next rotation's bundle no longer trusted it.
t.test("a renewal in flight when the root rotates does not leave the proxy on an old-root leaf", async (t) => {
  const { dir, first } = await freshCa(t);
  const issued: string[] = [];
  let renewalStarted: () => void = () => undefined;
  const started = new Promise<void>((r) => (renewalStarted = r));
  let releaseRenewal: () => void = () => undefined;
  const released = new Promise<void>((r) => (releaseRenewal = r));
  const issue = async (ca: CaMaterial, req: LeafRequest): Promise<IssuedLeaf> => {
    const n = issued.push("") - 1;
    // The first leaf lives 200 ms, so its renewal comes at once; the renewal then waits for the test.
    if (n === 1) {
      renewalStarted();
      await released;
    }
    const leaf = await issueLeaf(ca, { ...req, ttlMs: n === 0 ? 200 : 3_600_000 });
    issued[n] = leaf.serial;
    return leaf;
  };
  const logger = createLogger({ level: "error", json: true, write: () => undefined });
  const cp = new DevControlPlane({ dataDir: dir, request: { service: "web", upstreams: [] }, logger, pollMs: 50, rotationJitterMs: 1, issueLeaf: issue });
  const snapshots: Snapshot[] = [];
  const latest = (): Snapshot | undefined => snapshots[snapshots.length - 1];
  // The control plane's timers are unref'd (they never hold a sidecar open): this holds the test's.
  const alive = setInterval(() => undefined, 1000);
  t.teardown(() => clearInterval(alive));
  await cp.start({ snapshot: (s) => void snapshots.push(s), error: (e) => t.fail(`control plane error: ${e.message}`) });
  t.teardown(() => cp.stop());
  await started;
  const r = await rotateCa(dir);
  const serial = () => latest()?.identity.serial;
  await until(() => serial() === issued[2], 10_000, "the rotation's leaf in a Snapshot");
  releaseRenewal();
  // The renewal's leaf (issued from the first root before the rotation was read) may serve for
  // the moment (that root is still trusted), but the proxy must issue once more, from the new root.
  await until(() => serial() === issued[3], 10_000, "a leaf issued again from the new root after the stale renewal");
  const now = latest();
  t.equal(now ? new X509Certificate(now.identity.certChainPem).issuer : "", new X509Certificate((await readCaRoots(dir, { rotated: true })).certPem).subject, `on a leaf of the new root ${r.rootId}, not of ${first.rootId}`);
  t.equal(now?.identity.certChainPem.match(/BEGIN CERTIFICATE/g)?.length, 2, "sent with the cross-signed intermediate");
});

t.test("the rotation's jitter never puts off a renewal that was due sooner", async (t) => {
  const { dir } = await freshCa(t);
  const issued: string[] = [];
  // The first leaf lives 2 s (renewal due within 1.8 s); the rotation's jitter is up to a minute.
  const issue = async (ca: CaMaterial, req: LeafRequest): Promise<IssuedLeaf> => {
    const leaf = await issueLeaf(ca, { ...req, ttlMs: issued.length === 0 ? 2000 : 3_600_000 });
    issued.push(leaf.serial);
    return leaf;
  };
  const logger = createLogger({ level: "error", json: true, write: () => undefined });
  const cp = new DevControlPlane({ dataDir: dir, request: { service: "web", upstreams: [] }, logger, pollMs: 50, rotationJitterMs: 60_000, issueLeaf: issue });
  const alive = setInterval(() => undefined, 1000);
  t.teardown(() => clearInterval(alive));
  const snapshots: Snapshot[] = [];
  await cp.start({ snapshot: (s) => void snapshots.push(s), error: (e) => t.fail(`control plane error: ${e.message}`) });
  t.teardown(() => cp.stop());
  const r = await rotateCa(dir);
  const newRoot = new X509Certificate((await readCaRoots(dir, { rotated: true })).certPem).subject;
  const issuer = () => {
    const s = snapshots[snapshots.length - 1];
    return s ? new X509Certificate(s.identity.certChainPem).issuer : "";
  };
  await until(() => issuer() === newRoot, 5_000, "a leaf of the new root by the time the first leaf was due for renewal");
  t.equal(issuer(), newRoot, `re-issued from ${r.rootId} before the first leaf expired`);
});
