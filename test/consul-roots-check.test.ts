// A CA roots answer is the proxy's whole trust set. One whose ActiveRootID names none of its
// roots, or none of whose roots verifies the proxy's own leaf (with the intermediates the leaf is
// sent with), is refused at its watch: reported (resource "roots", counted by the proxy), and the
// last good roots keep serving. The states of a legitimate root rotation pass: old and new root
// listed with a leaf from either, a leaf from the new root reaching the old one through the
// cross-signed certificate, and the old root pruned once the leaf is the new root's.
import t from "tap";
import { X509Certificate } from "node:crypto";
import { ConsulAgentDouble } from "./helpers/consul-agent.js";
import { recordedControlPlane, recordingControlPlane, type Recorded } from "./helpers/consul-cp.js";
import type { ControlPlaneError, ProxyRequest } from "../src/controlplane/controlplane.js";
import { parseRoots, rootsVerifyingLeaf, type CaRoots, type LeafCert } from "../src/controlplane/consul/wire.js";
import { createRootCa, crossSign, issueLeaf, type CaMaterial } from "../src/identity/ca.js";
import type { Teardown } from "./helpers/mesh.js";
import { until } from "./helpers/l7.js";

const TD = "a.consul";
const SPIFFE = `spiffe://${TD}/ns/default/dc/dc1/svc/web`;

function rootsOf(...cas: ReadonlyArray<{ ca: CaMaterial; active?: boolean; intermediates?: string[] }>): CaRoots {
  const roots = cas.map((r) => ({ id: new X509Certificate(r.ca.certPem).fingerprint.toLowerCase(), certPem: r.ca.certPem, intermediatesPem: r.intermediates ?? [], active: r.active ?? false, notAfter: "" }));
  return { trustDomain: TD, activeRootId: roots.find((r) => r.active)?.id ?? "", roots };
}

async function leafFrom(ca: CaMaterial, ...intermediates: string[]): Promise<LeafCert> {
  const l = await issueLeaf(ca, { spiffeId: SPIFFE, commonName: "web", ttlMs: 3_600_000 });
  return { serial: l.serial, certPem: l.certPem + intermediates.join(""), keyPem: l.keyPem, service: "web", serviceUri: SPIFFE, validAfter: l.notBefore, validBefore: l.notAfter };
}

t.test("rootsVerifyingLeaf: the states of a rotation pass; a set that cannot verify the leaf is refused", async (t) => {
  const a = await createRootCa(TD, { commonName: "Root A" });
  const b = await createRootCa(TD, { commonName: "Root B" });
  const stranger = await createRootCa(TD, { commonName: "Stranger" });
  const bByA = await crossSign(b, a);
  const leafA = await leafFrom(a);
  const leafB = await leafFrom(b, bByA);
  const leafBBare = await leafFrom(b);

  const ok = (roots: CaRoots, leaf: LeafCert | null, what: string) => t.doesNotThrow(() => rootsVerifyingLeaf(roots, leaf), what);
  ok(rootsOf({ ca: a, active: true }), leafA, "steady state: the leaf's root is listed");
  ok(rootsOf({ ca: a, active: true }), null, "no leaf yet: nothing to check against");
  ok(rootsOf({ ca: a }, { ca: b, active: true, intermediates: [bByA] }), leafA, "rotation started: the new root active, the leaf still the old root's (listed, inactive)");
  ok(rootsOf({ ca: a }, { ca: b, active: true, intermediates: [bByA] }), leafB, "the leaf re-issued from the new root");
  ok(rootsOf({ ca: a, active: true }), leafB, "a new leaf before the new roots: it reaches the old root through the cross-signed certificate it is sent with");
  ok(rootsOf({ ca: b, active: true }), leafB, "old root pruned after the leaf moved");
  const unordered = await leafFrom(b, stranger.certPem, bByA);
  ok(rootsOf({ ca: a, active: true }), unordered, "the intermediates sent with the leaf are used in any order (as OpenSSL builds the path)");

  const refused = (roots: CaRoots, leaf: LeafCert, what: string) => t.throws(() => rootsVerifyingLeaf(roots, leaf), { name: "WireError", message: /\$\.Roots: none of the roots listed/ }, what);
  refused(rootsOf({ ca: stranger, active: true }), leafA, "another CA's root alone");
  refused(rootsOf({ ca: b, active: true }), leafA, "the old root pruned while the leaf is still its");
  refused(rootsOf({ ca: a, active: true }), leafBBare, "a leaf from a root not listed, without a cross-signed certificate");
  t.throws(
    () => rootsVerifyingLeaf(rootsOf({ ca: stranger, active: true }), leafA),
    { message: /^\/v1\/agent\/connect\/ca\/roots: \$\.Roots: none of the roots listed \(IDs "[0-9a-f:]+"\) verifies this proxy's leaf for "web" \(serial [0-9a-f:]+, issuer CN=Root A\).*check the servers' CA state/ },
    "the error names the roots, the leaf and what to check",
  );
});

t.test("parseRoots: an ActiveRootID naming none of the listed roots is refused", async (t) => {
  const a = await createRootCa(TD);
  const root = { ID: "3d:91", Name: "Consul CA Primary Cert", RootCert: a.certPem, IntermediateCerts: null, Active: true };
  t.equal(parseRoots({ ActiveRootID: "3D:91", TrustDomain: TD, Roots: [root] }).activeRootId, "3D:91", "IDs compare without case");
  t.throws(() => parseRoots({ ActiveRootID: "7a:2c", TrustDomain: TD, Roots: [root] }), { message: /^\/v1\/agent\/connect\/ca\/roots: \$\.ActiveRootID: "7a:2c" names none of the roots listed \(IDs "3d:91"\); refused as an inconsistent answer/ });
  t.throws(() => parseRoots({ ActiveRootID: "", TrustDomain: TD, Roots: [root] }), { message: /\$\.ActiveRootID: "" names none of the roots listed/ }, "an empty one too");
  t.throws(() => parseRoots({ TrustDomain: TD, Roots: [root] }), { message: /\$\.ActiveRootID: want a string, got/ }, "and a missing one");
});

const WEB: ProxyRequest = { service: "web", upstreams: [] };

interface Run extends Recorded {
  readonly d: ConsulAgentDouble;
}

async function start(t: Teardown, backoff?: { baseMs: number; maxMs: number }): Promise<Run> {
  const d = await ConsulAgentDouble.start({ defaultIntentionPolicy: "deny" });
  t.teardown(() => d.stop());
  return { d, ...(await recordedControlPlane(t, d, WEB, backoff)) };
}

/** A roots answer as the agent writes it: the double's roots with `extra` roots added, and the ActiveRootID given. */
function rootsBody(d: ConsulAgentDouble, activeRootId: string, extra: ReadonlyArray<{ id: string; certPem: string }> = [], keepListed = true): `body:${string}` {
  const listed = keepListed ? d.roots().map((x) => ({ id: x.id, certPem: x.ca.certPem })) : [];
  const roots = [...listed, ...extra].map((x) => ({ ID: x.id, Name: "Consul CA Root", RootCert: x.certPem, IntermediateCerts: null, Active: x.id === activeRootId }));
  return `body:${JSON.stringify({ ActiveRootID: activeRootId, TrustDomain: d.trustDomain, Roots: roots })}`;
}

/** Waits for a roots error matching `what`, then checks a later intention change still reaches a Snapshot with the old roots. */
async function refusedAndLastGoodServes(t: Teardown & { same: (a: unknown, b: unknown, m: string) => void }, r: Run, what: RegExp, goodRoots: readonly string[]): Promise<ControlPlaneError> {
  await until(() => r.errors.some((e) => e.resource === "roots" && what.test(e.message)), 8000, `a roots error matching ${what}`);
  const e = r.errors.find((x) => x.resource === "roots" && what.test(x.message))!;
  r.d.setIntentions("web", [{ source: "api", action: "allow" }]);
  await until(() => r.snapshots.some((s) => s.intentions.intentions.length === 1), 8000, "a Snapshot with the new intention");
  t.same(r.snapshots.at(-1)!.trust.rootsPem, goodRoots, "the last good roots still serve");
  t.same(r.snapshots.flatMap((s) => s.trust.rootsPem).filter((p) => !goodRoots.includes(p)), [], "no Snapshot ever carried the refused roots");
  return e;
}

t.test("control plane: roots from another CA are refused at the watch; the last good roots serve and changes still apply", async (t) => {
  const r = await start(t);
  const good = r.snapshots.at(-1)!.trust.rootsPem;
  const stranger = await createRootCa(r.d.trustDomain, { commonName: "Stranger" });
  const id = new X509Certificate(stranger.certPem).fingerprint.toLowerCase();
  r.d.fault("/v1/agent/connect/ca/roots", rootsBody(r.d, id, [{ id, certPem: stranger.certPem }], false));
  const e = await refusedAndLastGoodServes(t, r, /none of the roots listed .* verifies this proxy's leaf for "web"/, good);
  t.notOk(e.fatal, "retried, not fatal");
});

t.test("control plane: an ActiveRootID that names no listed root is refused; the last good roots serve", async (t) => {
  const r = await start(t);
  const good = r.snapshots.at(-1)!.trust.rootsPem;
  const other = await createRootCa(r.d.trustDomain, { commonName: "Other" });
  // The leaf's root is still listed, plus another: only the ActiveRootID is wrong.
  r.d.fault("/v1/agent/connect/ca/roots", rootsBody(r.d, "00:11:22", [{ id: "aa:bb", certPem: other.certPem }]));
  await refusedAndLastGoodServes(t, r, /\$\.ActiveRootID: "00:11:22" names none of the roots listed/, good);
});

t.test("control plane: a rotation passes at every step; the old root pruned too early waits for the leaf to move", async (t) => {
  const r = await start(t);
  const [a] = r.d.roots();
  await r.d.rotateRoots({ reissueLeafs: false });
  const both = r.d.roots().map((x) => x.ca.certPem);
  await until(() => r.snapshots.at(-1)!.trust.rootsPem.length === 2, 8000, "both roots trusted while the leaf is still the old root's");
  t.same(r.snapshots.at(-1)!.trust.rootsPem, both);

  // The old root pruned while the leaf is still its: refused until the leaf moves to the new root.
  r.d.pruneInactiveRoots();
  await until(() => r.errors.some((e) => e.resource === "roots" && /verifies this proxy's leaf/.test(e.message)), 8000, "the early prune refused");
  t.same(r.snapshots.at(-1)!.trust.rootsPem, both, "both roots still trusted");
  const serial = await r.d.rotateLeaf("web");
  await until(() => r.snapshots.at(-1)!.identity.serial === serial && r.snapshots.at(-1)!.trust.rootsPem.length === 1, 8000, "the new leaf, then the pruned roots taken on the watch's retry");
  t.same(r.snapshots.at(-1)!.trust.rootsPem, r.d.roots().map((x) => x.ca.certPem), "only the new root");
  t.not(r.snapshots.at(-1)!.trust.rootsPem[0], a!.ca.certPem, "and it is not the old one");
});

t.test("control plane: roots refused after an early prune are asked for again when the leaf moves, not after the backoff", async (t) => {
  // Production's backoff (1 s doubling to 60 s, full jitter) here starts at 60 s: no draw is
  // under 15 s, so roots taken within 8 s of the new leaf came from the leaf's wake-up.
  const r = await start(t, { baseMs: 60_000, maxMs: 60_000 });
  await r.d.rotateRoots({ reissueLeafs: false });
  await until(() => r.snapshots.at(-1)!.trust.rootsPem.length === 2, 8000, "both roots trusted while the leaf is still the old root's");
  r.d.pruneInactiveRoots();
  await until(() => r.errors.some((e) => e.resource === "roots" && /verifies this proxy's leaf/.test(e.message)), 8000, "the early prune refused");
  const serial = await r.d.rotateLeaf("web");
  const movedAt = Date.now();
  await until(() => r.snapshots.at(-1)!.identity.serial === serial, 8000, "the new leaf");
  await until(() => r.snapshots.at(-1)!.trust.rootsPem.length === 1, 8000, "the pruned roots, taken when the leaf moved");
  t.same(r.snapshots.at(-1)!.trust.rootsPem, r.d.roots().map((x) => x.ca.certPem), "only the new root");
  t.ok(Date.now() - movedAt < 15_000, "well inside the shortest backoff the watch could have drawn");
});

t.test("control plane: roots taken before the first leaf are checked when it comes; a set that cannot verify it never reaches a Snapshot", async (t) => {
  const d = await ConsulAgentDouble.start({ defaultIntentionPolicy: "deny" });
  t.teardown(() => d.stop());
  const stranger = await createRootCa(d.trustDomain, { commonName: "Stranger" });
  const id = new X509Certificate(stranger.certPem).fingerprint.toLowerCase();
  // The leaf is held back, so the stranger's roots arrive first, with no leaf to check them by.
  d.fault("/v1/agent/connect/ca/leaf", "stall");
  d.fault("/v1/agent/connect/ca/roots", rootsBody(d, id, [{ id, certPem: stranger.certPem }], false));
  const { snapshots, errors, started } = recordingControlPlane(t, d, WEB);
  await d.waitForHeld("/v1/agent/connect/ca/leaf");
  await until(() => d.requestsTo("/v1/agent/connect/ca/roots").length >= 2, 8000, "the stranger's roots answered, before any leaf");
  t.same(errors.filter((e) => e.resource === "roots"), [], "taken unchecked: there is no leaf yet");

  d.fault("/v1/agent/connect/ca/leaf", "none");
  await until(() => errors.some((e) => e.resource === "roots" && /verifies this proxy's leaf for "web"/.test(e.message)), 8000, "the roots refused once the leaf came");
  t.equal(snapshots.length, 0, "no Snapshot: the roots that came first cannot verify the leaf");

  d.fault("/v1/agent/connect/ca/roots", "none");
  await until(() => snapshots.length > 0, 8000, "a Snapshot once the agent answers with its own roots");
  t.same(snapshots[0]!.trust.rootsPem, d.roots().map((x) => x.ca.certPem), "with the agent's roots");
  t.notOk(snapshots.some((s) => s.trust.rootsPem.includes(stranger.certPem)), "no Snapshot ever carried the stranger's root");
  await started;
});
