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

t.test("the two-datacenters example carries TCP and HTTP across mesh gateways in modes local and remote, then stops everything", async (t) => {
  const { stdout } = await run(process.execPath, [join(ROOT, "examples", "two-datacenters", "run.mjs")], { timeout: 90_000 });
  t.match(stdout, /mode local: web → gateway dc1 → gateway dc2/);
  t.match(stdout, /mode remote: web → gateway dc2/);
  t.equal((stdout.match(/ ok$/gm) ?? []).length, 4, "TCP and HTTP in both modes");
  t.match(stdout, /meshproxy_gateway_forwarded_total\{envoy_cluster_name="dc2\.internal\.[^"]+"\} 2/, "gateway dc1 passed the two local-mode connections to dc2");
  t.match(stdout, /4 of 4 crossed\nstopped everything/);
});

t.test("the canary example's config entries parse and compile into a 95/5 split with failover", async (t) => {
  const { readdir, readFile } = await import("node:fs/promises");
  const { parseEntry } = await import("../src/controlplane/chain/entries.js");
  const { compileChain, entryIndex } = await import("../src/controlplane/chain/compile.js");
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

t.test("the canary example rolls a good v2 out to 100% and rolls a bad one back", async (t) => {
  const { stdout } = await run(process.execPath, [join(ROOT, "examples", "canary", "run.mjs")], { timeout: 150_000 });
  t.match(stdout, /1\. a good v2[\s\S]*result: done: v2 takes 100% of api[\s\S]*exit 0; the client saw \{"200":\d+\}, 0 failed/);
  t.match(stdout, /2\. a bad v2[\s\S]*rolling back: step \d \(\d+%\): error rate[\s\S]*result: rolled-back[\s\S]*exit 1/);
  t.match(stdout, /the split now: v1 100%, v2 0% \(rolled-back\)/);
  t.match(stdout, /good rollout done, bad rollout rolled back; stopped everything/);
});
