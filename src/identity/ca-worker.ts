// The dev CA's certificate work in a short-lived child process. The certificate library and
// everything it allocates live and die with that process: a sidecar that issues itself a leaf
// every couple of days does not carry the library, its heap, or the memory a worker thread
// leaves behind. A worker thread was used before; once it exited the sidecar still held +12 MB
// of RSS on Node 20 and +31 MB on Node 24 (malloc arenas, V8's per-isolate pages and code
// pages that only its bootstrap touched; MALLOC_ARENA_MAX did not give them back). The child
// costs one Node start (~40 ms) per certificate, which happens once at start and at renewal.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { createRootCa, issueLeaf, type CaMaterial, type IssuedLeaf, type LeafRequest } from "./ca.js";

type Job = { readonly op: "root"; readonly trustDomain: string } | { readonly op: "leaf"; readonly ca: CaMaterial; readonly req: LeafRequest };

/** The argument that tells this file, run as a script, to read one job from stdin. */
const JOB_FLAG = "--meshproxy-ca-job";
const SELF = fileURLToPath(import.meta.url);
/** A certificate takes milliseconds; a child that has not answered in this long is stuck. */
const TIMEOUT_MS = 30_000;

/**
 * Node flags the child gets. Built code (dist/*.js) needs none, and must take none of the app's:
 * `-e`/`-p` would run the app's own code again in the child, `--inspect` would fight over its
 * port, profiling flags would write a profile of the child. Only running from TypeScript sources
 * (the tests) needs the loader (`--import`/`--loader`) carried over, and nothing else.
 */
function childExecArgv(): string[] {
  if (!SELF.endsWith(".ts")) return [];
  const out: string[] = [];
  const argv = process.execArgv;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (/^--(import|loader|experimental-loader)=/.test(a) || a === "--enable-source-maps") out.push(a);
    else if (/^--(import|loader|experimental-loader)$/.test(a) && i + 1 < argv.length) out.push(a, argv[++i]!);
  }
  return out;
}

function run(job: Job): Promise<unknown> {
  return new Promise((resolve, reject) => {
    // The job (with the CA's private key) goes over stdin, never argv: a command line is
    // readable by every user of the machine in /proc.
    const child = spawn(process.execPath, [...childExecArgv(), SELF, JOB_FLAG], { stdio: ["pipe", "pipe", "pipe"], env: process.env });
    // Out of descriptors (EMFILE/ENFILE), Node gives up before it makes the child's pipes: stdio is
    // null and 'error' follows on the next tick. The listener goes on first, so that failure is
    // this job's (the caller keeps its current leaf and retries), never an unhandled 'error' event
    // that ends the process.
    const timer = setTimeout(() => child.kill("SIGKILL"), TIMEOUT_MS);
    child.once("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot start the certificate process (${process.execPath}): ${e.message}${/EMFILE|ENFILE/.test(e.message) ? "; the process is out of file descriptors (raise `ulimit -n`)" : ""}`));
    });
    const { stdin, stdout, stderr } = child;
    if (!stdin || !stdout || !stderr) return;
    let out = "";
    let err = "";
    stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      if (code !== 0) {
        const why = signal ? `was killed by ${signal}${signal === "SIGKILL" ? ` (no answer in ${TIMEOUT_MS / 1000} s)` : ""}` : `exited with code ${code}`;
        reject(new Error(`certificate process ${why}${err.trim() ? `: ${err.trim().slice(-500)}` : ""}`));
        return;
      }
      try {
        resolve(JSON.parse(out));
      } catch {
        reject(new Error(`certificate process answered something that is not JSON (${out.length} bytes)`));
      }
    });
    stdin.on("error", () => {
      /* the child's exit reports the failure */
    });
    stdin.end(JSON.stringify(job));
  });
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function field(v: unknown, name: string): unknown {
  return isRecord(v) ? v[name] : undefined;
}

function str(v: unknown, name: string): string {
  const x = field(v, name);
  if (typeof x !== "string") throw new Error(`certificate process answered without a string "${name}"`);
  return x;
}

function date(v: unknown, name: string): Date {
  const d = new Date(str(v, name));
  if (Number.isNaN(d.getTime())) throw new Error(`certificate process answered an invalid date "${name}"`);
  return d;
}

function answer(v: unknown): unknown {
  if (field(v, "ok") === true) return field(v, "value");
  throw new Error(str(v, "message"));
}

export async function createRootCaInWorker(trustDomain: string): Promise<CaMaterial> {
  const v = answer(await run({ op: "root", trustDomain }));
  return { certPem: str(v, "certPem"), keyPem: str(v, "keyPem") };
}

export async function issueLeafInWorker(ca: CaMaterial, req: LeafRequest): Promise<IssuedLeaf> {
  const v = answer(await run({ op: "leaf", ca, req }));
  return { certPem: str(v, "certPem"), keyPem: str(v, "keyPem"), serial: str(v, "serial"), notBefore: date(v, "notBefore"), notAfter: date(v, "notAfter") };
}

async function readJob(): Promise<Job> {
  let text = "";
  process.stdin.setEncoding("utf8");
  for await (const chunk of process.stdin) text += String(chunk);
  const j: unknown = JSON.parse(text);
  const op = field(j, "op");
  if (op === "root") return { op, trustDomain: str(j, "trustDomain") };
  if (op === "leaf") {
    const ca = field(j, "ca");
    const req = field(j, "req");
    const nb = field(req, "notBefore");
    const ttlMs = field(req, "ttlMs");
    if (typeof ttlMs !== "number") throw new Error('leaf job without a numeric "ttlMs"');
    return {
      op,
      ca: { certPem: str(ca, "certPem"), keyPem: str(ca, "keyPem") },
      req: { spiffeId: str(req, "spiffeId"), commonName: str(req, "commonName"), ttlMs, ...(typeof nb === "string" ? { notBefore: new Date(nb) } : {}) },
    };
  }
  throw new Error(`unknown certificate job ${JSON.stringify(op)}`);
}

async function serve(): Promise<void> {
  try {
    const job = await readJob();
    const value = job.op === "root" ? await createRootCa(job.trustDomain) : await issueLeaf(job.ca, job.req);
    process.stdout.write(JSON.stringify({ ok: true, value }));
  } catch (e) {
    process.stdout.write(JSON.stringify({ ok: false, message: e instanceof Error ? e.message : String(e) }));
  }
}

if (process.argv[1] === SELF && process.argv[2] === JOB_FLAG) await serve();
