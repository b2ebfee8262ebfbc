// The examples run as a user would run them.
import t from "tap";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { join } from "node:path";
import { ROOT } from "./helpers/mesh.js";

const run = promisify(execFile);

t.test("a third-party control plane fed by an HTTP endpoint carries traffic", async (t) => {
  const { stdout } = await run(process.execPath, [join(ROOT, "examples", "http-control-plane", "main.mjs")], { timeout: 60_000 });
  t.match(stdout, /web → db over mTLS, configured from http:\/\/127\.0\.0\.1:\d+\/config: hello through a control plane of my own/);
});

t.test("the demo (the README's first command) sends requests across a local mesh and stops cleanly", async (t) => {
  const { stdout } = await run(process.execPath, [join(ROOT, "dist", "cli", "main.js"), "demo", "-count", "3", "-interval", "50"], { timeout: 60_000 });
  t.match(stdout, /meshproxy demo: a local mesh on loopback/);
  t.equal((stdout.match(/web → api over mTLS: 200 /g) ?? []).length, 3, "three requests answered through the mesh");
  t.match(stdout, /done: 3 requests, 3 answered, 0 failed/);
});
