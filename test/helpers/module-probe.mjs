// Records every module a process loads, for tests that keep the sidecar's start path lean.
// Load it with NODE_OPTIONS="--import <this file>" and MESHPROXY_MODULE_PROBE_DIR=<dir>: each
// process (the sidecar, and any child it starts with the same environment) writes
// <dir>/<pid>.esm (every ES module URL, as the loader hook sees it) and, at exit,
// <dir>/<pid>.cjs (every CommonJS file in require's cache, which ES hooks do not see when
// CommonJS requires CommonJS). Plain JS: it runs in the process under test, not under tap.
import { appendFileSync, writeFileSync } from "node:fs";
import { createRequire, register } from "node:module";
import { isMainThread } from "node:worker_threads";
import { join } from "node:path";

const dir = process.env.MESHPROXY_MODULE_PROBE_DIR;
let esmFile = null;

/** Loader hook (runs on Node's hooks thread). */
export function initialize(data) {
  esmFile = data.esmFile;
}

export async function load(url, context, next) {
  if (esmFile) appendFileSync(esmFile, url + "\n");
  return next(url, context);
}

if (isMainThread && dir) {
  register(import.meta.url, import.meta.url, { data: { esmFile: join(dir, `${process.pid}.esm`) } });
  const cache = createRequire(import.meta.url).cache;
  process.on("exit", () => writeFileSync(join(dir, `${process.pid}.cjs`), Object.keys(cache).join("\n") + "\n"));
}
