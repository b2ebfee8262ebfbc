// The dev CA's certificate work runs in a short-lived child process: the certificates are the
// same as issued in process, errors come back with their message, and the sidecar's own memory
// does not keep what the work allocated (a worker thread left 12 MB on Node 20, 31 MB on 24).
import t from "tap";
import { X509Certificate, createPrivateKey } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { createRootCaInWorker, issueLeafInWorker } from "../../src/identity/ca-worker.js";
import { ROOT, tempDir } from "../helpers/mesh.js";

const execFileP = promisify(execFile);

t.test("the work leaves nothing behind in the process: no thread, a few MB of RSS at most", async (t) => {
  // Measured in a fresh Node process on the build (dist/), without the test runner's TypeScript
  // loader, whose own heap moves this process's RSS by tens of MB either way.
  const dir = await tempDir(t);
  const script = join(dir, "measure.mjs");
  await writeFile(
    script,
    `import { readFileSync } from "node:fs";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc");
const { createRootCaInWorker, issueLeafInWorker } = await import(${JSON.stringify(pathToFileURL(join(ROOT, "dist", "identity", "ca-worker.js")).href)});
const status = () => readFileSync("/proc/self/status", "utf8");
const rssMb = () => { gc(); return Number(/^VmRSS:\\s+(\\d+) kB/m.exec(status())[1]) / 1024; };
const threads = () => Number(/^Threads:\\s+(\\d+)/m.exec(status())[1]);
await import("node:tls");
const before = rssMb();
const threadsBefore = threads();
const ca = await createRootCaInWorker("mem.consul");
for (let i = 0; i < 3; i++) await issueLeafInWorker(ca, { spiffeId: "spiffe://mem.consul/ns/default/dc/dc1/svc/web", commonName: "web", ttlMs: 3600000 });
await new Promise((r) => setTimeout(r, 300));
process.stdout.write(JSON.stringify({ grownMb: rssMb() - before, threadsBefore, threadsAfter: threads() }));
`,
  );
  const { stdout } = await execFileP(process.execPath, [script], { timeout: 60_000 });
  const num = (k: string): number => Number(new RegExp(`"${k}":(-?[0-9.e+-]+)`).exec(stdout)?.[1] ?? NaN);
  t.equal(num("threadsAfter"), num("threadsBefore"), "no thread stays");
  // In a worker thread the same root and leaves left 12 MB on Node 20 and 31 MB on Node 24 (the
  // thread's malloc arena, V8's per-isolate pages, code pages only a bootstrap touches).
  t.ok(num("grownMb") < 6, `RSS grew ${num("grownMb").toFixed(1)} MB over a root and three leaves (< 6 MB)`);
});

t.test("a root and a leaf come back whole: PEMs that parse, the SPIFFE SAN, Dates, Consul's serial format", async (t) => {
  const ca = await createRootCaInWorker("11111111-2222-3333-4444-555555555555.consul");
  const root = new X509Certificate(ca.certPem);
  t.ok(root.ca, "the root is a CA");
  t.equal(createPrivateKey(ca.keyPem).asymmetricKeyType, "ec", "its key is an EC private key");
  const spiffeId = "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web";
  const leaf = await issueLeafInWorker(ca, { spiffeId, commonName: "web", ttlMs: 3_600_000 });
  const cert = new X509Certificate(leaf.certPem);
  t.ok(cert.verify(root.publicKey), "the leaf is signed by the root");
  t.equal(cert.subjectAltName, `URI:${spiffeId}`, "the SAN is the SPIFFE ID");
  t.ok(leaf.notBefore instanceof Date && leaf.notAfter instanceof Date, "validity comes back as Dates");
  t.equal(Math.floor(leaf.notAfter.getTime() / 1000) * 1000, new Date(cert.validTo).getTime(), "notAfter is the certificate's (to the second)");
  t.match(leaf.serial, /^[0-9a-f]{2}(:[0-9a-f]{2})*$/, "colon-hex serial");
  t.ok(createPrivateKey(leaf.keyPem), "the leaf's key parses");
});

t.test("a failure in the certificate process comes back with its cause", async (t) => {
  await t.rejects(issueLeafInWorker({ certPem: "not a certificate", keyPem: "not a key" }, { spiffeId: "spiffe://x.consul/ns/default/dc/dc1/svc/web", commonName: "web", ttlMs: 1000 }), /./, "a bad CA is an error, not a hang or a crash");
});

t.test("out of descriptors, a certificate job fails with a clear error and the process lives on", async (t) => {
  // The 30-minute soak's `tight` sidecar (ulimit -n 256) died at a leaf renewal: spawn() hit
  // EMFILE, Node made no pipes (stdio null), and its next-tick 'error' had no listener yet.
  // Measured in a fresh process on the build, under a low limit it fills up itself.
  const dir = await tempDir(t);
  const script = join(dir, "emfile.mjs");
  await writeFile(
    script,
    `import { openSync, closeSync } from "node:fs";
const { createRootCaInWorker, issueLeafInWorker } = await import(${JSON.stringify(pathToFileURL(join(ROOT, "dist", "identity", "ca-worker.js")).href)});
const ca = await createRootCaInWorker("emfile.consul");
const req = { spiffeId: "spiffe://emfile.consul/ns/default/dc/dc1/svc/web", commonName: "web", ttlMs: 3600000 };
const held = [];
try { for (;;) held.push(openSync("/dev/null", "r")); } catch (e) { if (e.code !== "EMFILE") throw e; }
let failure = null;
try { await issueLeafInWorker(ca, req); } catch (e) { failure = e.message; }
for (const fd of held) closeSync(fd);
const leaf = await issueLeafInWorker(ca, req);
process.stdout.write(JSON.stringify({ held: held.length, failure, serialAfter: leaf.serial }));
`,
  );
  const { stdout } = await execFileP("bash", ["-c", `ulimit -n 64 && exec "$0" "$1"`, process.execPath, script], { timeout: 60_000 });
  const r = JSON.parse(stdout) as { held: number; failure: string | null; serialAfter: string };
  t.ok(r.held > 0, `filled the descriptor table (${r.held} more)`);
  t.match(r.failure ?? "", /cannot start the certificate process .*EMFILE.*ulimit -n/, "the job fails, naming the cause and the fix");
  t.match(r.serialAfter, /^[0-9a-f]{2}(:[0-9a-f]{2})+$/, "once descriptors are free again, the next job issues a leaf");
});
