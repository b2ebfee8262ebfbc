// The dev CA's certificate work in a short-lived worker thread. The certificate library and
// everything it allocates live in the worker's own V8 heap, which is freed when the worker
// exits: a sidecar that issues itself a leaf every couple of days does not carry ~15 MB of
// certificate code and heap for the rest of its life.
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { createRootCa, issueLeaf, type CaMaterial, type IssuedLeaf, type LeafRequest } from "./ca.js";

type Job = { readonly op: "root"; readonly trustDomain: string } | { readonly op: "leaf"; readonly ca: CaMaterial; readonly req: LeafRequest };
type Reply = { readonly ok: true; readonly value: CaMaterial | IssuedLeaf } | { readonly ok: false; readonly message: string };

function run(job: Job): Promise<CaMaterial | IssuedLeaf> {
  return new Promise((resolve, reject) => {
    // A worker inherits the process's node flags; `--input-type` (a `node -e` app, say) applies
    // only to string input and makes a worker started from a file fail at once.
    const execArgv = process.execArgv.filter((a) => !a.startsWith("--input-type"));
    const w = new Worker(new URL(import.meta.url), { workerData: job, execArgv });
    w.once("message", (r: Reply) => (r.ok ? resolve(r.value) : reject(new Error(r.message))));
    w.once("error", reject);
    w.once("exit", (code) => {
      if (code !== 0) reject(new Error(`certificate worker exited with code ${code}`));
    });
  });
}

function isCa(v: CaMaterial | IssuedLeaf): v is CaMaterial {
  return !("serial" in v);
}

function isLeaf(v: CaMaterial | IssuedLeaf): v is IssuedLeaf {
  return "serial" in v;
}

export async function createRootCaInWorker(trustDomain: string): Promise<CaMaterial> {
  const v = await run({ op: "root", trustDomain });
  if (!isCa(v)) throw new Error("certificate worker returned a leaf for a root request");
  return v;
}

export async function issueLeafInWorker(ca: CaMaterial, req: LeafRequest): Promise<IssuedLeaf> {
  const v = await run({ op: "leaf", ca, req });
  if (!isLeaf(v)) throw new Error("certificate worker returned a root for a leaf request");
  return v;
}

if (!isMainThread && parentPort) {
  const port = parentPort;
  // Set by runInWorker below, in this file: its shape is this module's own.
  const job = workerData as Job;
  const work = job.op === "root" ? createRootCa(job.trustDomain) : issueLeaf(job.ca, job.req);
  work.then(
    (value) => port.postMessage({ ok: true, value } satisfies Reply),
    (e: unknown) => port.postMessage({ ok: false, message: e instanceof Error ? e.message : String(e) } satisfies Reply),
  );
}
