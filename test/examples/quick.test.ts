// The examples run as a user would run them, one file per long-running example: each gets tap's
// whole per-file limit (180 s) for itself rather than sharing it with the others (together they
// took ~70 s of it in CI, and the canary example alone is allowed 150 s).
// This file: the quick ones: the HTTP control plane, the demo, the canary example's entries.
import t from "tap";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { join } from "node:path";
import { ROOT } from "../helpers/mesh.js";

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

t.test("the canary example's config entries parse and compile into a 95/5 split with failover", async (t) => {
  const { readdir, readFile } = await import("node:fs/promises");
  const { parseEntry } = await import("../../src/controlplane/chain/entries.js");
  const { compileChain, entryIndex } = await import("../../src/controlplane/chain/compile.js");
  const dir = join(ROOT, "examples", "canary");
  const files = (await readdir(dir)).filter((f) => f.endsWith(".json"));
  const entries = await Promise.all(files.map(async (f) => parseEntry(JSON.parse(await readFile(join(dir, f), "utf8")), f)));
  t.equal(entries.length, 5);
  const chain = compileChain(entryIndex(entries), "api", { namespace: "default", datacenter: "dc1" });
  t.equal(chain.protocol, "http");
  const catchAll = chain.routes[chain.routes.length - 1]!;
  t.same(catchAll.splits.map((s) => [s.target, s.weight]), [["v1.api.default.dc1", 9500], ["v2.api.default.dc1", 500]]);
  t.same(chain.targets["v2.api.default.dc1"]?.failover, ["v1.api.default.dc1"]);
  t.equal(chain.routes.length, 3, "two router routes and the catch-all");
});
