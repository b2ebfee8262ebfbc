// What a sidecar must refuse: clients at the public listener without a proper mesh identity,
// and (outbound) a server that is not the service we meant to reach. Each refusal is shown
// three ways: no data crosses, the reason's counter moves, and the log says why.
import t from "tap";
import { createServer as createTlsServer } from "node:tls";
import { connect, type AddressInfo, type Socket } from "node:net";
import { once } from "node:events";
import { randomBytes } from "node:crypto";
import { rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { echoServer, hostPort, runMeshproxy, startSidecar, tempDir, type LogLine, type Sidecar, type Teardown } from "../helpers/mesh.js";
import { foreignLeaf, leafFor, readDevCa, spiffeFor, tlsExchange, type DevCa } from "../helpers/certs.js";
import { issueLeaf } from "../../src/index.js";
import { metric, nextLog, pollUntil, upstreamCluster } from "../helpers/peers.js";

const REJECTED = "meshproxy_inbound_rejected_total";
const PAYLOAD = "secret for db\n";

async function dbSidecar(t: Teardown): Promise<{ dir: string; db: Sidecar; ca: DevCa; app: { connections: () => number } }> {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`]);
  return { dir, db, ca: await readDevCa(dir), app: echo };
}

const refusedFor = (reason: string) => (l: LogLine) => l["@message"] === "inbound connection refused" && l["reason"] === reason;

t.test("the public listener refuses clients without a valid mesh identity", { timeout: 60_000 }, async (t) => {
  const { db, ca, app } = await dbSidecar(t);
  const addr = db.publicAddr!;
  const rejected = async (reason: string) => (await metric(db.adminAddr, REJECTED, { reason })) ?? -1;

  // The control: a dev-CA leaf for web, in db's trust domain, gets through. Every refusal below
  // differs from it in exactly one way.
  const good = await tlsExchange(addr, PAYLOAD, await leafFor(ca, "web"));
  t.equal(good.data.toString(), PAYLOAD, "control: a valid web certificate from the dev CA is echoed by the app");
  t.equal(app.connections(), 1, "control: the app saw that one connection");

  const cases: Array<{ name: string; reason: string; leaf: () => Promise<{ certPem: string; keyPem: string } | undefined>; detail: RegExp }> = [
    { name: "no client certificate", reason: "no_client_cert", leaf: async () => undefined, detail: /no certificate/ },
    { name: "a certificate from another CA", reason: "untrusted_certificate", leaf: () => foreignLeaf(ca.trustDomain, "web"), detail: /not trusted: UNABLE_TO_GET_ISSUER_CERT_LOCALLY|not trusted: UNABLE_TO_VERIFY_LEAF_SIGNATURE/ },
    { name: "a dev-CA certificate for another trust domain", reason: "wrong_trust_domain", leaf: () => leafFor(ca, "web", { trustDomain: "elsewhere.consul" }), detail: /trust domain elsewhere\.consul/ },
    { name: "a dev-CA certificate with no URI SAN (a DNS name only)", reason: "no_uri_san", leaf: () => issueLeaf(ca, { spiffeId: "", commonName: "web", ttlMs: 3_600_000, sans: [{ type: "dns", value: "web" }] }), detail: /no URI SAN/ },
    {
      name: "a dev-CA certificate with two SPIFFE IDs (web, then admin)",
      reason: "multiple_uri_sans",
      leaf: () => issueLeaf(ca, { spiffeId: "", commonName: "web", ttlMs: 3_600_000, sans: [{ type: "url", value: spiffeFor(ca.trustDomain, "web") }, { type: "url", value: spiffeFor(ca.trustDomain, "admin") }] }),
      detail: /2 URI SANs/,
    },
    { name: "an expired dev-CA certificate", reason: "expired_certificate", leaf: () => leafFor(ca, "web", { notBefore: new Date(Date.now() - 2 * 3_600_000), ttlMs: 3_600_000 }), detail: /CERT_HAS_EXPIRED/ },
  ];
  for (const c of cases) {
    const before = await rejected(c.reason);
    t.equal(before, 0, `${c.reason}: the counter exists and starts at 0`);
    const logged = nextLog(db, refusedFor(c.reason));
    const r = await tlsExchange(addr, PAYLOAD, await c.leaf());
    t.equal(r.data.length, 0, `${c.name}: nothing comes back (${r.error ?? "closed"})`);
    const line = await logged;
    t.match(String(line["detail"]), c.detail, `${c.name}: logged as refused, reason ${c.reason}: ${String(line["detail"])}`);
    t.equal(await rejected(c.reason), before + 1, `${c.name}: ${REJECTED}{reason="${c.reason}"} went up by one`);
  }
  t.equal(app.connections(), 1, "none of the refused clients reached the app");
  t.equal(await rejected("denied_by_intention"), 0, "nothing was miscounted as an intention denial");
});

t.test("garbage bytes are refused as tls_error and the listener keeps serving", { timeout: 60_000 }, async (t) => {
  const { db, ca, app } = await dbSidecar(t);
  const addr = db.publicAddr!;
  const logged = nextLog(db, (l) => l["@message"] === "inbound TLS handshake failed" && l["reason"] === "tls_error");
  const { host, port } = hostPort(addr);
  const s: Socket = connect({ host, port });
  const closed = new Promise((r) => s.once("close", r)); // not events.once: a reset is an expected outcome
  const back: Buffer[] = [];
  s.on("data", (d: Buffer) => back.push(d));
  s.on("error", () => {});
  s.write("GET / HTTP/1.1\r\nHost: db\r\n\r\n");
  await closed;
  t.notMatch(Buffer.concat(back).toString("latin1"), /HTTP\/1\.1|GET \//, "plain HTTP gets neither an HTTP answer nor an echo");
  t.ok(await logged, "the proxy logs the failed handshake with reason tls_error");
  t.equal(await metric(db.adminAddr, REJECTED, { reason: "tls_error" }), 1, `${REJECTED}{reason="tls_error"} is 1`);
  t.equal(app.connections(), 0, "the app never saw it");

  const after = await tlsExchange(addr, PAYLOAD, await leafFor(ca, "web"));
  t.equal(after.data.toString(), PAYLOAD, "a proper mesh client is served right after");
  t.equal(db.child.exitCode, null, "db is still running");
});

// The public listener reads a caller's first bytes before it has decided (they arrive with the
// end of the handshake) and hands them to the app only once the pipe is joined, after the
// intention check and the app's connect. So a denied caller's early bytes must reach nothing,
// and an allowed caller's must reach the app exactly once, in order, ahead of what follows.
t.test("attack: bytes sent with the handshake reach the app only once the caller is authorized, then once and in order", { timeout: 60_000 }, async (t) => {
  const { dir, db, ca, app } = await dbSidecar(t);
  const addr = db.publicAddr!;
  const web = await leafFor(ca, "web");
  // ~1 MiB written the moment the handshake completes: part of it is read by the sidecar before
  // the decision, the rest after.
  const early = randomBytes(768 * 1024).toString("base64");
  const allowed = await tlsExchange(addr, early, web);
  t.equal(allowed.data.length, early.length, "allowed: the app echoed every byte once");
  t.ok(allowed.data.toString("latin1") === early, "allowed: in the order sent");
  t.equal(app.connections(), 1, "allowed: one connection at the app");

  const deny = runMeshproxy(t, ["intention", "create", "-deny", "web", "db", "-data-dir", dir]);
  t.equal(await deny.exited, 0, "intention create -deny web db exits 0");
  t.not(await pollUntil(async () => (await tlsExchange(addr, PAYLOAD, web)).data.length === 0, 5000), null, "the deny is in force");
  const atApp = app.connections();
  const deniedBefore = (await metric(db.adminAddr, REJECTED, { reason: "denied_by_intention" })) ?? 0;
  const denied = await tlsExchange(addr, early, web);
  t.equal(denied.data.length, 0, `denied: nothing comes back (${denied.error ?? "closed"})`);
  t.equal(app.connections(), atApp, "denied: the app never saw a connection, so none of the early bytes");
  t.equal(await metric(db.adminAddr, REJECTED, { reason: "denied_by_intention" }), deniedBefore + 1, "denied: counted as denied_by_intention");
});

t.test("outbound: a server presenting another service's SPIFFE ID is refused", { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  // The web sidecar creates the dev CA; debug logs say when it applies a new Snapshot.
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0", "-log-level", "debug"]);
  const ca = await readDevCa(dir);

  // An impostor: signed by the same CA (so the chain verifies), but it is "evil", not "db".
  const evil = await leafFor(ca, "evil");
  let handshakes = 0;
  let bytes = 0;
  const impostor = createTlsServer({ cert: evil.certPem, key: evil.keyPem, ca: [ca.certPem], requestCert: true }, (s) => {
    handshakes++;
    s.on("data", (d: Buffer) => (bytes += d.length));
    s.on("error", () => s.destroy());
  });
  impostor.on("tlsClientError", () => {});
  impostor.listen(0, "127.0.0.1");
  await once(impostor, "listening");
  t.teardown(() => new Promise<void>((r) => impostor.close(() => r())));
  const impostorPort = (impostor.address() as AddressInfo).port;

  const applied = nextLog(web, (l) => l["@message"] === "snapshot applied");
  const entry = { id: "db-impostor", service: "db", address: "127.0.0.1", port: impostorPort, protocol: "tcp", pid: process.pid, meta: {} };
  const file = join(dir, "catalog", "db-impostor.json");
  await writeFile(`${file}.tmp`, JSON.stringify(entry)); // whole, then renamed: read once, complete
  await rename(`${file}.tmp`, file);
  await applied;

  const failed = nextLog(web, (l) => l["@message"] === "connection failed");
  const { host, port } = hostPort(web.upstreams["db"]!);
  const c = connect({ host, port });
  const closed = new Promise((r) => c.once("close", r)); // a reset is an expected outcome
  const back: Buffer[] = [];
  c.on("data", (d: Buffer) => back.push(d));
  c.on("error", () => {});
  c.write(PAYLOAD);
  await closed;
  t.equal(Buffer.concat(back).length, 0, "the client gets nothing back");
  const line = await failed;
  t.match(String(line["error"]), /peer certificate mismatch: got spiffe:\/\/[^ ]+\/svc\/evil, want spiffe:\/\/[^ ]+\/svc\/db/, "web logs the mismatch, naming both IDs");
  const cluster = await upstreamCluster(web.adminAddr, "db");
  t.equal(await metric(web.adminAddr, "meshproxy_upstream_identity_rejected_total", { envoy_cluster_name: cluster }), 1, `meshproxy_upstream_identity_rejected_total{envoy_cluster_name="${cluster}"} is 1`);
  t.equal(handshakes, 0, "the impostor never completed a handshake with web");
  t.equal(bytes, 0, "and never received a byte of the client's data");
});

t.test("outbound identity check: a server leaf with two URI SANs is refused even when the first is the one meant", async (t) => {
  const { checkServerIdentity } = await import("../../src/identity/peer.js");
  const want = "spiffe://td.consul/ns/default/dc/dc1/svc/db";
  t.equal(checkServerIdentity(`URI:${want}`, want), undefined, "control: one URI SAN, the one meant");
  t.match(checkServerIdentity(`URI:${want}, URI:spiffe://td.consul/ns/default/dc/dc1/svc/admin`, want)?.message, /2 URI SANs/);
  t.match(checkServerIdentity("DNS:db", want)?.message, /no URI SAN/);
});
