// The benchmark harness (bench/run.mjs) in its tiny --smoke mode: it starts its own app and
// meshproxy pair, runs one short fixed-rate scenario, stops every process it started, and writes
// results.json and a markdown table. Only the output's shape is checked, never a timing figure.
import t from "tap";
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ROOT, tempDir, type Teardown } from "./helpers/mesh.js";

interface ProcessRecord {
  name: string;
  role: string;
  pid: number;
  exitedAt: string | null;
}

interface NodeRecord {
  key: string;
  label: string;
  path: string;
  node: string;
  openssl: string;
}

interface Results {
  meta: { date: string; mode: string; nproc: number; command: string; versions: Record<string, unknown>; nodes: NodeRecord[] };
  processes: ProcessRecord[];
  runs: Array<{ round: number; workload: string; path: string; metrics: Record<string, unknown> }>;
  summary: Record<string, Record<string, Record<string, unknown>>>;
  figures: Array<{ label: string; unit: string; values: Record<string, unknown> }>;
  targets: Array<{ name: string; goal: string; met: unknown }>;
}

const positive = (x: unknown): boolean => typeof x === "number" && Number.isFinite(x) && x > 0;

/** Runs the harness to its end: exit code and output. */
async function harness(t: Teardown, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [join(ROOT, "bench", "run.mjs"), ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
  return { code, stdout, stderr };
}

t.test("bench --smoke runs one tiny scenario and reports it in the expected shape", async (t) => {
  const out = await tempDir(t, "meshproxy-bench-smoke-");
  const { code, stdout, stderr } = await harness(t, ["--smoke", "--out", out]);
  t.equal(code, 0, `the harness exits 0 (stderr:\n${stderr.slice(-3000)})`);

  t.match(stdout, /^\| figure \| unit \| direct \| meshproxy \| HAProxy \| meshproxy ÷ HAProxy \| meshproxy ÷ direct \|$/m, "prints the markdown results table");
  t.match(stdout, /^\| target \| goal \|/m, "and the targets table");
  t.ok(existsSync(join(out, "results.md")), "writes results.md");
  t.notOk(existsSync(join(out, "running.pids")), "the live PID file is gone at the end");

  const r = JSON.parse(await readFile(join(out, "results.json"), "utf8")) as Results;
  t.equal(r.meta.mode, "smoke");
  t.ok(positive(r.meta.nproc), "records the core count");
  t.ok(!Number.isNaN(Date.parse(r.meta.date)), "records the date");
  t.type(r.meta.command, "string", "records the command");
  t.type(r.meta.versions["node"], "string", "records the node version");
  t.same(
    r.meta.nodes.map((n) => [n.key, n.path, n.node]),
    [["mesh", process.execPath, process.versions.node]],
    "without --node, meshproxy runs on the harness's node, recorded with its version",
  );
  t.equal(r.meta.nodes[0]?.openssl, process.versions.openssl, "and its OpenSSL version");

  t.ok(r.processes.length >= 4, "records the processes it started (app, two sidecars, load clients)");
  for (const p of r.processes) {
    t.ok(Number.isInteger(p.pid) && p.pid > 0, `${p.name} has a PID`);
    t.not(p.exitedAt, null, `${p.name} (pid ${p.pid}) was stopped by the end of the run`);
  }
  t.ok(r.processes.some((p) => p.role === "proxy"), "the sidecars are among them");

  const lat = r.summary["latency-200"];
  t.ok(lat, "summary has the fixed-rate latency scenario");
  for (const path of ["direct", "mesh"]) {
    for (const m of ["p50Ms", "p99Ms", "p999Ms", "achievedRate"]) t.ok(positive(lat?.[path]?.[m]), `latency-200.${path}.${m} is a number > 0`);
  }
  t.ok(positive(lat?.["mesh"]?.["proxyCpuPer10k"]), "proxy CPU per 10k requests is measured for the mesh path");
  const startup = r.summary["startup"]?.["mesh"];
  for (const m of ["maxMs", "clientMs", "serverMs", "idleRssMaxMb"]) t.ok(positive(startup?.[m]), `startup.mesh.${m} is a number > 0`);

  t.ok(r.runs.length > 0 && r.runs.every((x) => typeof x.workload === "string" && typeof x.path === "string" && x.round === 1), "raw runs are kept per round, workload and path");
  t.ok(r.figures.length > 0 && r.figures.every((f) => typeof f.label === "string" && typeof f.values === "object"), "figures are the table's rows");
  t.ok(r.targets.length > 0 && r.targets.every((x) => typeof x.name === "string" && typeof x.goal === "string" && x.met !== undefined), "targets are listed with their goal and whether they were met");
});

t.test("bench --smoke --node A,B runs meshproxy on each binary side by side, a column each", async (t) => {
  const out = await tempDir(t, "meshproxy-bench-smoke-nodes-");
  // The same binary twice: the variants are told apart by position; the shape is what is checked.
  const { code, stdout, stderr } = await harness(t, ["--smoke", "--node", `${process.execPath},${process.execPath}`, "--out", out]);
  t.equal(code, 0, `the harness exits 0 (stderr:\n${stderr.slice(-3000)})`);
  const v = process.versions.node;
  const [a, b] = [`node${v}#1`, `node${v}#2`];
  t.match(stdout, new RegExp(`^\\| figure \\| unit \\| direct \\| meshproxy ${a} \\| meshproxy ${b} \\| HAProxy \\| ${a} ÷ HAProxy \\| ${b} ÷ HAProxy \\| ${b} ÷ ${a} \\|$`, "m"), "a column per binary, ratios to HAProxy each, and the second against the first");
  t.match(stdout, new RegExp(`^\\| target \\| goal \\| meshproxy ${a} \\| meshproxy ${b} \\| note \\|$`, "m"), "the targets per binary");
  const r = JSON.parse(await readFile(join(out, "results.json"), "utf8")) as Results;
  t.same(
    r.meta.nodes.map((n) => [n.key, n.label, n.node, n.openssl]),
    [
      [`mesh@${a}`, a, v, process.versions.openssl],
      [`mesh@${b}`, b, v, process.versions.openssl],
    ],
    "both binaries recorded with their Node and OpenSSL versions",
  );
  for (const key of [`mesh@${a}`, `mesh@${b}`]) {
    t.ok(positive(r.summary["latency-200"]?.[key]?.["p50Ms"]), `${key} ran the latency scenario`);
    t.ok(positive(r.summary["startup"]?.[key]?.["idleRssMaxMb"]), `${key} has its startup figures`);
  }
  t.equal(r.processes.filter((p) => p.role === "proxy").length, 4, "two sidecars per binary");
  t.ok(r.processes.every((p) => p.exitedAt !== null), "every process was stopped");
});

t.test("bench --node with a bad spec stops at once with what is wrong", async (t) => {
  for (const [spec, want] of [
    ["18", /--node 18: meshproxy needs Node 20 or newer/],
    ["latest", /--node "latest": not a major version/],
    ["/nonexistent/node", /--node \/nonexistent\/node: \/nonexistent\/node is not an executable file/],
  ] as const) {
    const { code, stderr } = await harness(t, ["--smoke", "--node", spec, "--out", await tempDir(t)]);
    t.equal(code, 2, `--node ${spec}: exit 2`);
    t.match(stderr, want, `--node ${spec}: says why`);
  }
});
