// The examples run as a user would run them, one file per long-running example: each gets tap's
// whole per-file limit (180 s) for itself rather than sharing it with the others (together they
// took ~70 s of it in CI, and the canary example alone is allowed 150 s).
// This file: the native example.
import t from "tap";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { join } from "node:path";
import { ROOT } from "../helpers/mesh.js";

const run = promisify(execFile);

t.test("the native example makes every crossing: native → native, native → sidecar, sidecar → native, and a denied one", async (t) => {
  const { stdout } = await run(process.execPath, [join(ROOT, "examples", "native", "run.mjs")], { timeout: 90_000 });
  t.match(stdout, /native → native {3}web → api: 200 api \(node:https\) answered GET \/hello for web ok/);
  t.match(stdout, /native → sidecar {2}web → db's sidecar → db: 200 db \(behind a sidecar\) answered GET \/rows ok/);
  t.match(stdout, /sidecar → native {2}shop → shop's sidecar → api: 200 api \(node:https\) answered GET \/cart for shop ok/);
  t.match(stdout, /denied {12}evil → api \(intention deny\): 503 \[UF\] .* ok/);
  t.match(stdout, /native gRPC {7}web → stock: OK stock has 3 of item 7 for web ok/, "a native gRPC call (grpc-js is this checkout's devDependency)");
  // Express is the example's own devDependency: the crossing runs when it is installed there.
  t.match(stdout, /(\d) of \1 crossings behaved\nstopped everything/);
});
