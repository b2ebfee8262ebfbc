#!/usr/bin/env node
// Two builds of meshproxy, each as a warm L7 sidecar pair in front of one app, measured in
// alternating wrk runs (A B, B A, A B, …) without restarting anything: the finer instrument for a
// change of a few percent on the hot path. The full harness (run.mjs) starts fresh processes per
// round and its rounds move together by ±10 % on a shared 2-core VM; here each round compares
// the two builds a few seconds apart, so the machine's drift cancels in each pair.
//
//   node bench/alternate.mjs --baseline-rev REV [--node 20|24|PATH] [--rounds 10] [--seconds 4]
//                            [--conns 50] [--post BYTES]
//
// A is the build under test (this checkout's dist/, snapshotted at the start), B is REV, built
// from `git archive`. Per run: both sidecars' CPU-seconds (user + system, /proc) per 10k
// requests and wrk's req/s. The report gives each round, the medians, and in how many rounds A
// used less CPU per request than B, with the sign test's two-sided p (no assumption about the
// noise's shape). --post BYTES sends POSTs with a body of that size (the app reads it first).
import { parseArgs } from "node:util";
import { spawnSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Procs } from "./lib/procs.mjs";
import { cpuSeconds } from "./lib/procstat.mjs";
import { startSidecar, configWrite } from "./lib/meshproxy.mjs";
import { resolveVariants } from "./lib/node-binaries.mjs";
import { buildCommit, snapshotBuild } from "./lib/builds.mjs";
import { median } from "./lib/stats.mjs";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const { values: args } = parseArgs({
  options: {
    "baseline-rev": { type: "string" },
    node: { type: "string" },
    rounds: { type: "string", default: "10" },
    seconds: { type: "string", default: "4" },
    conns: { type: "string", default: "50" },
    post: { type: "string" },
    help: { type: "boolean", short: "h" },
  },
});
const usage = "usage: node bench/alternate.mjs --baseline-rev REV [--node 20|24|PATH] [--rounds N] [--seconds S] [--conns N] [--post BYTES]";
if (args.help) {
  process.stdout.write(`${usage}\n`);
  process.exit(0);
}
const positive = (name) => {
  const n = Number(args[name]);
  if (!Number.isInteger(n) || n <= 0) {
    process.stderr.write(`bench: --${name} must be a positive whole number (got ${JSON.stringify(args[name])})\n${usage}\n`);
    process.exit(2);
  }
  return n;
};
if (!args["baseline-rev"]) {
  process.stderr.write(`bench: --baseline-rev is required: the commit to compare the build under test with\n${usage}\n`);
  process.exit(2);
}
const rounds = positive("rounds");
const seconds = positive("seconds");
const conns = positive("conns");
const postBytes = args.post === undefined ? null : positive("post");
if (spawnSync("wrk", ["-v"], { encoding: "utf8" }).error) {
  process.stderr.write("bench: `wrk` is not installed (Debian package: wrk)\n");
  process.exit(3);
}

const log = (s) => process.stderr.write(`${s}\n`);
const procs = new Procs();
const tmp = await mkdtemp(join(tmpdir(), "meshproxy-alternate-"));
process.on("exit", () => {
  procs.killAllSync();
  rmSync(tmp, { recursive: true, force: true });
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(130));

const node = args.node ? resolveVariants(args.node, { cacheDir: join(ROOT, "bench", "out", "node"), log })[0].path : process.execPath;
const underTest = await snapshotBuild(ROOT, ROOT, join(tmp, "a"));
const built = await buildCommit(ROOT, args["baseline-rev"], "--baseline-rev", join(tmp, "b-src"), log);
const baseline = await snapshotBuild(ROOT, built.src, join(tmp, "b"));

const app = procs.spawn("app", process.execPath, [join(ROOT, "bench", "lib", "app-server.mjs"), "0", "app"], { role: "app" });
const appPort = JSON.parse((await app.waitForLine((e) => e.stream === "stdout" && e.line.startsWith('{"listening"'), 10_000)).line).listening;

/** One build's L7 pair in its own state directory: the app as service "apphttp" with Protocol http. */
async function pair(label, root) {
  const dataDir = join(tmp, `data-${label}`);
  await configWrite(procs, { root, dataDir, node, file: join(tmp, `defaults-${label}.json`), entry: { Kind: "service-defaults", Name: "apphttp", Protocol: "http" } });
  const server = await startSidecar(procs, { root, name: `server-${label}`, dataDir, node, args: ["-service", "apphttp", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${appPort}`] });
  const client = await startSidecar(procs, { root, name: `client-${label}`, dataDir, node, args: ["-service", "clientl7", "-upstream", "apphttp:0"] });
  const target = client.upstreams.apphttp;
  if (!target) throw new Error(`the ${label} client sidecar reported no upstream listener for apphttp`);
  return { label, target, pids: [client.handle.pid, server.handle.pid] };
}

let script = null;
if (postBytes !== null) {
  script = join(tmp, "post.lua");
  await writeFile(script, `wrk.method = "POST"\nwrk.body = string.rep("x", ${postBytes})\nwrk.headers["Content-Type"] = "application/octet-stream"\n`);
}

/** One wrk run against a pair: its CPU-seconds per 10k requests (both sidecars) and req/s. */
function run(p, secs) {
  const cpu0 = p.pids.reduce((a, pid) => a + (cpuSeconds(pid) ?? NaN), 0);
  const r = spawnSync("wrk", ["-t1", `-c${conns}`, `-d${secs}s`, "--timeout", "5s", ...(script ? ["-s", script] : []), `http://${p.target}/`], { encoding: "utf8" });
  const cpu1 = p.pids.reduce((a, pid) => a + (cpuSeconds(pid) ?? NaN), 0);
  const requests = Number(/(\d+) requests in/.exec(r.stdout)?.[1]);
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(r.stdout)?.[1]);
  const errors = /Non-2xx or 3xx responses: (\d+)|Socket errors: .*/.exec(r.stdout)?.[0];
  if (r.status !== 0 || !(requests > 0)) throw new Error(`wrk against ${p.label} failed (exit ${r.status}): ${r.stderr || r.stdout}`);
  if (errors) throw new Error(`wrk against ${p.label}: ${errors}; the comparison needs every request answered`);
  return { cpuPer10k: ((cpu1 - cpu0) / requests) * 1e4, rps };
}

/** Two-sided sign test: the chance of a split at least this uneven if neither build were cheaper. */
function signTestP(wins, n) {
  const k = Math.min(wins, n - wins);
  let tail = 0;
  let c = 1; // C(n, 0)
  for (let i = 0; i <= k; i++) {
    tail += c;
    c = (c * (n - i)) / (i + 1);
  }
  return Math.min(1, (2 * tail) / 2 ** n);
}

try {
  const a = await pair("A", underTest);
  const b = await pair(`B`, baseline);
  log(`bench: A = this checkout's dist/, B = ${built.sha}; node ${spawnSync(node, ["-v"], { encoding: "utf8" }).stdout.trim()}; ${rounds} rounds of ${seconds} s each, wrk -t1 -c${conns}${postBytes !== null ? `, POST ${postBytes} bytes` : ""}`);
  for (const p of [a, b]) run(p, 2); // warm-up: JIT, pools, connections
  const rows = [];
  for (let i = 0; i < rounds; i++) {
    const order = i % 2 === 0 ? [a, b] : [b, a];
    const got = {};
    for (const p of order) got[p.label] = run(p, seconds);
    rows.push(got);
    log(`round ${String(i + 1).padStart(2)}: A ${got.A.cpuPer10k.toFixed(3)} CPU-s/10k ${Math.round(got.A.rps)} req/s | B ${got.B.cpuPer10k.toFixed(3)} CPU-s/10k ${Math.round(got.B.rps)} req/s (${order.map((p) => p.label).join(" then ")})`);
  }
  const wins = rows.filter((r) => r.A.cpuPer10k < r.B.cpuPer10k).length;
  const mA = median(rows.map((r) => r.A.cpuPer10k));
  const mB = median(rows.map((r) => r.B.cpuPer10k));
  const rA = median(rows.map((r) => r.A.rps));
  const rB = median(rows.map((r) => r.B.rps));
  const ratios = rows.map((r) => r.A.cpuPer10k / r.B.cpuPer10k);
  const summary = {
    baseline: built.sha,
    node,
    rounds,
    seconds,
    conns,
    ...(postBytes !== null ? { postBytes } : {}),
    medianCpuPer10k: { A: mA, B: mB },
    medianRps: { A: rA, B: rB },
    medianPairedCpuRatio: median(ratios),
    roundsACheaper: wins,
    signTestP: signTestP(wins, rounds),
    rows,
  };
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  log(
    `A against B (${built.sha}): CPU per request ${((median(ratios) - 1) * 100).toFixed(1)} % (median of the rounds' ratios; medians ${mA.toFixed(3)} against ${mB.toFixed(3)} CPU-s/10k), ` +
      `req/s ${Math.round(rA)} against ${Math.round(rB)}; A cheaper in ${wins} of ${rounds} rounds (sign test p = ${summary.signTestP.toFixed(3)})`,
  );
} finally {
  await procs.stopAll({ graceMs: 2000 });
  await rm(tmp, { recursive: true, force: true });
}
