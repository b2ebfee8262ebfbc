#!/usr/bin/env node
// The soak and chaos harness (issue 16). `npm run soak -- --duration 1h`, `npm run soak -- --short`
// (CI: about three minutes, every fault kind once, a lighter load).
//
// On loopback, with the dev control plane in a temp directory, it starts a mesh of real meshproxy
// processes: api (HTTP, subsets v1 ×2 and v2, split by a service-splitter), echo (L4, two
// instances), ledger (L4 in dc2, reached through the mesh gateways of dc1 and dc2), and the
// callers web (all three), intruder (api; the intentions flip it between allow and deny) and
// tight (api and echo, under a low `ulimit -n`). An open-loop load (load.mjs) runs through them
// while a seeded chaos schedule (schedule.mjs, printed first) injects faults one at a time. Every
// failure is classified against the faults' windows and blast radii (check.mjs); RSS, descriptors,
// heap and event-loop lag of every sidecar are sampled and judged for growth; the report goes to
// --out (report.md, report.json, resources.svg). Exit 1 when anything failed that no fault
// explains, a denied caller was served, a sidecar grew or died on its own.
import { parseArgs } from "node:util";
import { mkdtemp, mkdir, writeFile, readFile, rm, chmod } from "node:fs/promises";
import { tmpdir, machine } from "node:os";
import { existsSync } from "node:fs";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { request } from "node:http";
import { randomUUID } from "node:crypto";
import { Procs } from "../lib/procs.mjs";
import { memory, tcpSocketStates, descriptors, notConnections } from "../lib/procstat.mjs";
import { startSidecar, startGateway, configWrite } from "../lib/meshproxy.mjs";
import { buildSchedule, renderSchedule, KINDS } from "./schedule.mjs";
import { classify, wronglyAllowed, leakCheck, LEAK_BOUNDS, LEAK_WINDOWS } from "./check.mjs";
import { renderPlot } from "./plot.mjs";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const BIN = join(ROOT, "dist", "cli", "main.js");
const HERE = join(ROOT, "bench", "soak");

const HELP = `usage: npm run soak -- [--short] [--duration 1h|20m|300s] [--seed N] [--out DIR]

  --short          CI mode: 3 minutes, every fault kind once, 150 req/s, a 1,000-connection burst
  --duration D     run length (default 1h; --short: 3m)
  --seed N         the chaos schedule's seed (default: from the clock; printed first)
  --out DIR        report.md, report.json, resources.svg (default bench/out/soak)
  --rate N         web → api requests per second (default 600; --short 150)
  --burst N        connections in the burst (default 10000; --short 1000)
  --allocator A    jemalloc (default: as the container image runs meshproxy, Debian's libjemalloc2
                   preloaded) or glibc (Node's own malloc, as a bare \`node\` on a VM runs it)
`;

const { values: o } = parseArgs({
  options: {
    short: { type: "boolean", default: false },
    duration: { type: "string" },
    seed: { type: "string" },
    out: { type: "string", default: join(ROOT, "bench", "out", "soak") },
    rate: { type: "string" },
    burst: { type: "string" },
    allocator: { type: "string", default: "jemalloc" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (o.help) {
  process.stdout.write(HELP);
  process.exit(0);
}

function parseDuration(s) {
  const m = /^(\d+(?:\.\d+)?)(h|m|s)?$/.exec(s ?? "");
  if (!m) throw new Error(`--duration ${s}: give a number with h, m or s, like 1h, 20m or 300s`);
  return Number(m[1]) * { h: 3600, m: 60, s: 1 }[m[2] ?? "s"];
}

const short = o.short;

// The sidecars run as the container image runs them (Dockerfile): its NODE_OPTIONS, and jemalloc
// preloaded. With glibc's malloc the RSS after a spike stays near the spike's level and creeps up
// spike after spike (bench/SOAK.md, "Is the growth a leak?"), so RSS would measure the allocator,
// not the memory meshproxy holds.
const JEMALLOC = `/usr/lib/${machine()}-linux-gnu/libjemalloc.so.2`; // Debian's multiarch path, as the Dockerfile's
if (o.allocator !== "jemalloc" && o.allocator !== "glibc") throw new Error(`--allocator ${o.allocator}: give jemalloc or glibc`);
if (o.allocator === "jemalloc" && !existsSync(JEMALLOC)) throw new Error(`--allocator jemalloc: ${JEMALLOC} is missing; install Debian's libjemalloc2 (.ci/run does) or pass --allocator glibc`);
const SIDECAR_ENV = { NODE_OPTIONS: "--max-semi-space-size=4", ...(o.allocator === "jemalloc" ? { LD_PRELOAD: JEMALLOC } : {}) };
const P = {
  durationS: parseDuration(o.duration ?? (short ? "3m" : "1h")),
  seed: o.seed !== undefined ? Number(o.seed) : Date.now() % 1_000_000,
  allocator: o.allocator,
  rate: Number(o.rate ?? (short ? 150 : 600)),
  sideRate: short ? 10 : 20,
  echoStreams: short ? 10 : 40,
  ledgerStreams: short ? 3 : 8,
  burstN: Number(o.burst ?? (short ? 1000 : 10_000)),
  fdxN: short ? 300 : 400,
  tightNofile: 256,
  warmupS: short ? 20 : 60,
  cooldownS: short ? 15 : 30,
  gapS: short ? 3 : 25,
  sampleMs: short ? 2000 : 5000,
  // Three minutes are too short for RSS to settle after a burst (allocators keep what they got):
  // the short mode gates on descriptors and heap and reports RSS; a full run gates on all three.
  leakGate: short ? ["fdsNet", "heapMb"] : ["rssMb", "heapMb", "fdsNet"],
  // The leak check skips samples this close after a fault; after a burst longer: RSS takes about a
  // minute to come back down from 10,000 connections' worth of buffers.
  quietMs: short ? 2000 : 10_000,
  quietAfterBurstMs: short ? 2000 : 60_000,
  settleMs: 3000, // a fault's effects may outlast it by this much (catalog poll, outlier detection)
  propagationMs: 3000, // an intention change reaches every sidecar within this (1 s poll + margin)
  appTimeoutMs: 4000, // api's LocalRequestTimeoutMs: a hung app is answered 504 after this
  opts: { down: short ? 3 : 6, drainTimeout: 3, hold: short ? 6 : 20, burstHold: short ? 3 : 6 },
};
if (!Number.isFinite(P.seed)) throw new Error("--seed must be a number");

const events = buildSchedule({ seed: P.seed, durationS: P.durationS, warmupS: P.warmupS, cooldownS: P.cooldownS, gapS: P.gapS, opts: P.opts });
const missing = Object.keys(KINDS).filter((k) => !events.some((e) => e.kind === k));
console.log(`meshproxy soak: seed ${P.seed}, ${P.durationS} s${short ? " (short)" : ""}, web→api ${P.rate} req/s, burst ${P.burstN}`);
console.log(`chaos schedule (${events.length} events; rerun with --seed ${P.seed} --duration ${P.durationS}s for the same one):`);
console.log(renderSchedule(events));
if (missing.length) console.log(`  (not in this schedule, the run is too short for them: ${missing.join(", ")})`);

const procs = new Procs({ pidFile: join(o.out, "pids") });
process.on("exit", () => procs.killAllSync());
process.on("SIGINT", () => {
  procs.killAllSync();
  process.exit(130);
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (msg) => console.log(`[t+${((Date.now() - T0) / 1000).toFixed(0).padStart(5)}s] ${msg}`);
let T0 = Date.now();

// ---- the dev control plane, with a short-lived leaf so every sidecar renews about once a minute ----
await mkdir(o.out, { recursive: true });
const dataDir = await mkdtemp(join(tmpdir(), "meshproxy-soak-"));
await chmod(dataDir, 0o700);
{
  const { createRootCa } = await import(pathToFileURL(join(ROOT, "dist", "identity", "ca.js")).href);
  const trustDomain = `${randomUUID()}.consul`;
  const ca = await createRootCa(trustDomain);
  await mkdir(join(dataDir, "ca"), { mode: 0o755 });
  await writeFile(join(dataDir, "ca", "root.pem"), ca.certPem, { mode: 0o644 });
  await writeFile(join(dataDir, "ca", "root.key"), ca.keyPem, { mode: 0o600 });
  await writeFile(join(dataDir, "ca", "config.json"), JSON.stringify({ trust_domain: trustDomain, datacenter: "dc1", leaf_cert_ttl: "90s" }) + "\n", { mode: 0o644 });
}
const entries = [
  { Kind: "service-defaults", Name: "api", Protocol: "http", LocalRequestTimeoutMs: P.appTimeoutMs },
  { Kind: "service-resolver", Name: "api", DefaultSubset: "v1", Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2" } }, Failover: { v2: { ServiceSubset: "v1" } } },
  { Kind: "service-splitter", Name: "api", Splits: [{ Weight: 90, ServiceSubset: "v1" }, { Weight: 10, ServiceSubset: "v2" }] },
];
const BASE_WEIGHTS = "v1:90,v2:10";
for (const [i, entry] of entries.entries()) await configWrite(procs, { root: ROOT, dataDir, file: join(dataDir, `entry-${i}.json`), entry });

// ---- apps ----
const apps = procs.spawn("apps", process.execPath, [join(HERE, "apps.mjs"), JSON.stringify({ http: ["api-v1a", "api-v1b", "api-v2"], tcp: ["echo-a", "echo-b", "ledger"] })], { role: "app" });
const appInfo = JSON.parse((await apps.waitForLine((e) => e.stream === "stdout" && e.line.startsWith("{"))).line);
const setMode = (instance, mode) => post(`127.0.0.1:${appInfo.control}`, `/mode?instance=${instance}&mode=${mode}`);

// ---- sidecars ----
/** name → { spec, handle, info, expectedExit } */
const sidecars = new Map();
const unexpectedExits = [];
const renewals = new Map(); // name → leaves issued beyond each process's first
const errorLines = new Map(); // name → { count, first: [] }

function watchLogs(name, handle) {
  let partial = "";
  let issued = 0;
  handle.child.stderr.on("data", (d) => {
    partial += d;
    let nl;
    while ((nl = partial.indexOf("\n")) >= 0) {
      const line = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      if (line.includes('"issued leaf certificate"') && ++issued > 1) renewals.set(name, (renewals.get(name) ?? 0) + 1);
      if (line.includes('"level":"error"') || line.includes('"level":"ERROR"')) {
        const e = errorLines.get(name) ?? { count: 0, first: [] };
        e.count++;
        if (e.first.length < 5) e.first.push(line.slice(0, 400));
        errorLines.set(name, e);
      }
    }
  });
}

async function start(name) {
  const s = sidecars.get(name);
  const { kind, args, prlimit } = s.spec;
  const common = { root: ROOT, name, dataDir, env: SIDECAR_ENV };
  const info =
    kind === "gateway"
      ? await startGateway(procs, { ...common, datacenter: args.datacenter })
      : await startSidecar(procs, { ...common, args, ...(prlimit ? { node: "prlimit", nodeArgs: [`--nofile=${prlimit}:${prlimit}`, process.execPath] } : {}) });
  s.handle = info.handle;
  s.info = info;
  s.expectedExit = false;
  watchLogs(name, info.handle);
  const h = info.handle;
  h.exited.then(({ code, signal }) => {
    if (!s.expectedExit && !stopping) {
      unexpectedExits.push({ name, pid: h.pid, code, signal, at: Date.now(), stderr: h.stderr().slice(-2000) });
      log(`UNEXPECTED EXIT: ${name} (pid ${h.pid}) code ${code} signal ${signal}`);
    }
  });
  return info;
}
let stopping = false;

// A sidecar restarted after a kill comes back under the same instance id (-proxy-id), as a unit
// file or a container restart does, so the catalog holds one entry per instance, not one per pid.
function define(name, spec) {
  if (spec.kind !== "gateway") spec = { ...spec, args: [...spec.args, "-proxy-id", `${name}-sidecar-proxy`] };
  sidecars.set(name, { spec, handle: null, info: null, expectedExit: false });
}
const drain = ["-drain-timeout", `${P.opts.drainTimeout}s`];
for (const [name, version] of [["api-v1a", "v1"], ["api-v1b", "v1"], ["api-v2", "v2"]]) {
  define(name, { args: ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${appInfo.ports[name]}`, "-meta", `version=${version}`, ...drain] });
}
for (const name of ["echo-a", "echo-b"]) define(name, { args: ["-service", "echo", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${appInfo.ports[name]}`, ...drain] });
define("ledger", { args: ["-service", "ledger", "-datacenter", "dc2", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${appInfo.ports.ledger}`, ...drain] });
define("gw-dc1", { kind: "gateway", args: { datacenter: "dc1" } });
define("gw-dc2", { kind: "gateway", args: { datacenter: "dc2" } });
define("web", { args: ["-service", "web", "-upstream", "api:0", "-upstream", "echo:0", "-upstream", "ledger.service.dc2:0", "-mesh-gateway-mode", "local"] });
define("intruder", { args: ["-service", "intruder", "-upstream", "api:0"] });
// tight: a low descriptor limit and a -max-connections that limit cannot hold (the log warns), so
// the fdx fault really runs it out of descriptors instead of stopping at the listener's cap.
define("tight", { args: ["-service", "tight", "-upstream", "api:0", "-upstream", "echo:0", "-max-connections", "2000"], prlimit: P.tightNofile });

for (const name of sidecars.keys()) {
  await start(name);
}
const web = sidecars.get("web").info;
log(`mesh up: ${[...sidecars.keys()].join(", ")}; web upstreams ${JSON.stringify(web.upstreams)}`);

// ---- load ----
const upstreamOf = (name, svc) => {
  const u = sidecars.get(name).info.upstreams;
  return u[svc] ?? u[`${svc}.service.dc2`] ?? Object.entries(u).find(([k]) => k.startsWith(svc))?.[1];
};
const loadCfg = {
  http: [
    { caller: "web", service: "api", target: upstreamOf("web", "api"), rate: P.rate, connections: 1024, slowEvery: 20, slowMs: 400 },
    { caller: "intruder", service: "api", target: upstreamOf("intruder", "api"), rate: P.sideRate, connections: 4, recordOk: true },
    { caller: "tight", service: "api", target: upstreamOf("tight", "api"), rate: P.sideRate, connections: 4 },
  ],
  tcp: [
    { caller: "web", service: "echo", target: upstreamOf("web", "echo"), streams: P.echoStreams, pingMs: 250 },
    { caller: "web", service: "ledger", target: upstreamOf("web", "ledger"), streams: P.ledgerStreams, pingMs: 500 },
    { caller: "tight", service: "echo", target: upstreamOf("tight", "echo"), streams: 2, pingMs: 500 },
  ],
};
const load = procs.spawn("load", process.execPath, [join(HERE, "load.mjs"), JSON.stringify(loadCfg)], { role: "load", stdin: "pipe" });
const failures = [];
const oks = [];
const ticks = [];
const bursts = new Map();
const burstWaiters = new Map();
{
  let partial = "";
  load.child.stdout.on("data", (d) => {
    partial += d;
    let nl;
    while ((nl = partial.indexOf("\n")) >= 0) {
      const m = JSON.parse(partial.slice(0, nl));
      partial = partial.slice(nl + 1);
      if (m.type === "fail") failures.push(m);
      else if (m.type === "ok") oks.push(m);
      else if (m.type === "tick") ticks.push(m);
      else if (m.type === "burst") {
        bursts.set(m.id, m);
        burstWaiters.get(m.id)?.(m);
      }
    }
  });
}
T0 = Date.now();
log("load started");

// ---- sampling ----
const samples = [];
async function scrape(adminAddr) {
  const text = await get(adminAddr, "/stats/prometheus").catch(() => "");
  const vals = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const sp = line.lastIndexOf(" ");
    const brace = line.indexOf("{");
    const name = brace >= 0 && brace < sp ? line.slice(0, brace) : line.slice(0, sp);
    const v = Number(line.slice(sp + 1));
    if (Number.isFinite(v)) vals[name] = (vals[name] ?? 0) + v;
  }
  return vals;
}
async function sampleOnce() {
  const running = [...sidecars].filter(([, s]) => s.handle?.running);
  // Every sidecar's descriptors first, then the host's TCP states, so no socket is newer than them.
  const fds = await Promise.all(running.map(([, s]) => descriptors(s.handle.pid)));
  const tcp = await tcpSocketStates();
  await Promise.all(
    running.map(async ([name, s], i) => {
      const h = s.handle;
      const mem = memory(h.pid);
      const d = fds[i];
      const m = await scrape(s.info.adminAddr);
      samples.push({
        t: Date.now(),
        name,
        pid: h.pid,
        rssMb: mem?.rssKb != null ? mem.rssKb / 1024 : null,
        fds: d ? d.fds : null,
        // Descriptors that are not a live TCP connection: instances gain and lose connections as
        // others die and drain, and an HTTP pool shares few upstream connections among many
        // downstream ones, so counting connections from the metrics cannot say what a leak is.
        fdsNet: d ? notConnections(d, tcp) : null,
        // What survived the last full GC (meshproxy_heap_live_bytes, 0 before the first one): heap
        // used at the instant of a scrape counts garbage and swings by tens of MB under load.
        heapMb: m.meshproxy_heap_live_bytes ? m.meshproxy_heap_live_bytes / 2 ** 20 : null,
        lagMs: m.nodejs_eventloop_lag_p99_seconds != null ? m.nodejs_eventloop_lag_p99_seconds * 1000 : null,
      });
    }),
  );
}
let sampling = true;
const sampler = (async () => {
  while (sampling) {
    await sampleOnce();
    await sleep(P.sampleMs);
  }
})();

// ---- chaos ----
const executed = [];
let burstSeq = 0;
async function runEvent(ev) {
  const rec = { ...ev, t0: Date.now(), t1: null, settleMs: P.settleMs, note: "" };
  executed.push(rec);
  log(`#${ev.n} ${ev.kind} ${ev.target}`);
  switch (ev.kind) {
    case "kill":
    case "drain": {
      const s = sidecars.get(ev.target);
      s.expectedExit = true;
      const signal = ev.kind === "kill" ? "SIGKILL" : "SIGTERM";
      process.kill(s.handle.pid, signal);
      const t = Date.now();
      const { code } = await s.handle.exited;
      rec.note = `${signal}; exited ${code === null ? "by signal" : `code ${code}`} after ${Date.now() - t} ms`;
      if (ev.kind === "kill") await sleep(P.opts.down * 1000);
      const info = await start(ev.target);
      rec.note += `; restarted, ready in ${info.readyMs.toFixed(0)} ms`;
      break;
    }
    case "hang":
    case "reset":
      await setMode(ev.target, ev.kind);
      await sleep(P.opts.hold * 1000);
      await setMode(ev.target, "ok");
      break;
    case "weights": {
      const r = await post(web.adminAddr, `/splits/api?weights=${ev.target}`);
      await sleep(P.opts.hold * 1000);
      const back = await post(web.adminAddr, `/splits/api?weights=${BASE_WEIGHTS}`);
      rec.note = `admin answered ${r.status}, ${back.status} to the restore`;
      if (r.status !== 202 || back.status !== 202) rec.problem = `POST /splits/api answered ${r.status} ${r.body} / ${back.status} ${back.body}`;
      break;
    }
    case "deny":
      await cli(["intention", "create", "-deny", "-replace", "intruder", "api"]);
      await sleep(P.opts.hold * 1000);
      // From here the allow may be written at any moment: a 2xx is no longer wrong.
      rec.allowAt = Date.now();
      await cli(["intention", "create", "-allow", "-replace", "intruder", "api"]);
      break;
    case "corrupt": {
      const files = [join(dataDir, "intentions.json"), join(dataDir, "config", "service-splitter", "api.json")];
      const saved = await Promise.all(files.map((f) => readFile(f, "utf8")));
      await Promise.all(files.map((f) => writeFile(f, '{ "default_action": "allow", "intentions": [ oops')));
      await sleep(P.opts.hold * 1000);
      await Promise.all(files.map((f, i) => writeFile(f, saved[i])));
      break;
    }
    case "burst":
    case "fdx": {
      const id = ++burstSeq;
      const target = ev.kind === "burst" ? upstreamOf("web", "echo") : upstreamOf("tight", "echo");
      const n = ev.kind === "burst" ? P.burstN : P.fdxN;
      const done = new Promise((r) => burstWaiters.set(id, r));
      load.child.stdin.write(JSON.stringify({ type: "burst", id, target, n, holdMs: P.opts.burstHold * 1000 }) + "\n");
      const b = await done;
      rec.note = `${n} connections: ${b.greeted} reached the app, ${b.refused} refused, ${b.closedEarly} closed while held`;
      break;
    }
    case "rootRotation": {
      const out = await cli(["ca", "rotate"]);
      const [, id, subject] = /Active root:\s+(\S+) \((CN=[^)]*)\)/.exec(out) ?? [];
      const { onNew, waitedMs } = await untilEverySidecarIssuedBy(subject);
      const running = [...sidecars.values()].filter((s) => s.spec.kind !== "gateway" && s.handle?.running).length;
      rec.note = `new root ${id}; ${onNew.length} of ${running} sidecars on a leaf from it after ${waitedMs} ms`;
      if (onNew.length < running) rec.problem = `still on the previous root after ${waitedMs} ms: ${[...sidecars.keys()].filter((n) => sidecars.get(n).spec.kind !== "gateway" && !onNew.includes(n)).join(", ")}`;
      break;
    }
  }
  rec.t1 = Date.now();
  if (rec.note) log(`#${ev.n} done: ${rec.note}`);
}

const progress = setInterval(() => {
  const last = ticks.slice(-10);
  const sum = (f) => last.reduce((a, t) => a + Object.values(t.flows).reduce((b, x) => b + x[f], 0), 0);
  log(`load last 10 s: ${sum("ok")} ok, ${sum("fail")} failed, ${sum("shed")} shed; ${failures.length} failures so far`);
}, short ? 15_000 : 60_000);

for (const ev of events) {
  const wait = T0 + ev.at * 1000 - Date.now();
  if (wait > 0) await sleep(wait);
  await runEvent(ev);
}
const endAt = T0 + P.durationS * 1000;
if (endAt > Date.now()) await sleep(endAt - Date.now());
clearInterval(progress);

// ---- end: counters, stop, verdicts ----
const counters = {};
const COUNTERS = [
  "meshproxy_inbound_rejected_total",
  "meshproxy_outbound_rejected_total",
  "meshproxy_control_plane_errors_total",
  "meshproxy_snapshots_rejected_total",
  "envoy_listener_downstream_cx_overflow",
  "envoy_listener_downstream_cx_overload_reject",
  "envoy_cluster_upstream_cx_connect_fail",
  "envoy_cluster_upstream_cx_connect_timeout",
  "envoy_cluster_upstream_cx_overflow",
  "envoy_cluster_upstream_rq_timeout",
  "envoy_cluster_upstream_rq_retry",
  "envoy_cluster_upstream_rq_retry_overflow",
  "envoy_cluster_upstream_rq_pending_overflow",
  "envoy_cluster_outlier_detection_ejections_enforced_total",
  "meshproxy_gateway_rejected_total",
];
for (const [name, s] of sidecars) {
  if (!s.handle?.running) continue;
  const m = await scrape(s.info.adminAddr);
  counters[name] = Object.fromEntries(COUNTERS.filter((k) => m[k]).map((k) => [k, m[k]]));
}
stopping = true;
sampling = false;
await sampler;
await procs.stop(load);
await procs.stopAll();
await rm(dataDir, { recursive: true, force: true });

const { unexplained, byEvent, kindsByEvent } = classify(failures, executed, { appTimeoutMs: P.appTimeoutMs });
const allowed = wronglyAllowed(oks, executed, { propagationMs: P.propagationMs });
const half = T0 + (P.durationS * 1000) / 2;
const leaks = leakCheck(samples, { fromMs: half, toMs: T0 + P.durationS * 1000, events: executed, quietMs: P.quietMs, quietAfterBurstMs: P.quietAfterBurstMs, warmupMs: P.warmupS * 1000, gate: P.leakGate });
const leaking = leaks.filter((v) => v.leak);
const totals = { sent: 0, ok: 0, fail: 0, shed: 0 };
const perFlow = {};
for (const t of ticks)
  for (const [k, f] of Object.entries(t.flows)) {
    perFlow[k] ??= { sent: 0, ok: 0, fail: 0, shed: 0, p99max: 0 };
    for (const key of ["sent", "ok", "fail", "shed"]) {
      perFlow[k][key] += f[key];
      totals[key] += f[key];
    }
    if (f.p99 > perFlow[k].p99max) perFlow[k].p99max = f.p99;
  }
const verdict = unexplained.length === 0 && allowed.length === 0 && leaking.length === 0 && unexpectedExits.length === 0;

// ---- report ----
const fmt = (x, d = 1) => (x == null ? "–" : Number(x).toFixed(d));
const stat = (name, key) => {
  const v = samples.filter((s) => s.name === name && typeof s[key] === "number").map((s) => s[key]);
  return v.length ? { min: Math.min(...v), max: Math.max(...v), last: v[v.length - 1] } : null;
};
const md = [];
md.push(`# meshproxy soak: ${verdict ? "PASS" : "FAIL"}`, "");
md.push(`seed ${P.seed}, ${P.durationS} s${short ? " (short mode)" : ""}, started ${new Date(T0).toISOString()}, Node ${process.version}, sidecars on ${o.allocator === "jemalloc" ? "jemalloc (LD_PRELOAD, as the image runs them)" : "glibc's malloc (--allocator glibc)"} with NODE_OPTIONS=${SIDECAR_ENV.NODE_OPTIONS}`, "");
md.push(`**${unexplained.length} unexplained failures, ${allowed.length} wrongly allowed requests, ${leaking.length ? `growth in ${leaking.map((v) => v.name).join(", ")}` : "no growth"}, ${unexpectedExits.length} unexpected exits.**`, "");
md.push("## Load", "", "| flow | started | ok | failed | shed by the generator | worst 1 s p99 (ms) |", "|---|---|---|---|---|---|");
for (const [k, f] of Object.entries(perFlow)) md.push(`| ${k} | ${f.sent} | ${f.ok} | ${f.fail} | ${f.shed} | ${k.includes("echo") || k.includes("ledger") ? "–" : fmt(f.p99max)} |`);
md.push("", "(TCP flows: started = streams opened, ok = echoes received.)", "");
md.push("## Chaos schedule as run", "", "| # | at (s) | fault | target | took (s) | failures it explains | note |", "|---|---|---|---|---|---|---|");
for (const e of executed) md.push(`| ${e.n} | ${((e.t0 - T0) / 1000).toFixed(0)} | ${e.kind} | ${e.target} | ${((e.t1 - e.t0) / 1000).toFixed(1)} | ${byEvent.get(e.n) ?? 0}${kindsByEvent.get(e.n) ? ` (${topKinds(kindsByEvent.get(e.n))})` : ""} | ${e.note}${e.problem ? ` **${e.problem}**` : ""} |`);
md.push("", `Leaf renewals (issued leaves beyond each process's first; leaf TTL 90 s): ${[...sidecars.keys()].filter((n) => !n.startsWith("gw")).map((n) => `${n} ${renewals.get(n) ?? 0}`).join(", ")}.`, "");
md.push("## Unexplained failures", "");
if (unexplained.length === 0) md.push("None.", "");
else {
  md.push("| start (s) | took (ms) | caller → service | status / error | flags | instance |", "|---|---|---|---|---|---|");
  for (const r of unexplained.slice(0, 60)) md.push(`| ${((r.start - T0) / 1000).toFixed(2)} | ${r.end - r.start} | ${r.caller} → ${r.service} | ${r.status || ""} ${r.error ?? ""} | ${r.flags ?? ""} | ${r.instance ?? ""} |`);
  if (unexplained.length > 60) md.push(`| … ${unexplained.length - 60} more in report.json | | | | | |`);
  md.push("");
}
md.push("## Wrongly allowed", "", allowed.length ? allowed.slice(0, 30).map((r) => `- intruder request ${r.id} at t+${((r.start - T0) / 1000).toFixed(2)} s served by ${r.instance}`).join("\n") : "None.", "");
md.push("## Unexpected exits", "", unexpectedExits.length ? unexpectedExits.map((x) => `- ${x.name} pid ${x.pid}: code ${x.code} signal ${x.signal}\n\n\`\`\`\n${x.stderr.slice(-1500)}\n\`\`\``).join("\n") : "None.", "");
md.push("## Resources per sidecar", "", "![resources](resources.svg)", "");
md.push("| sidecar | RSS MB min / max / last | fds min / max / last | live heap MB min / max / last | event-loop lag p99 max (ms) | second-half growth: RSS MB, live heap MB, descriptors not on a live TCP connection (limit) | verdict |", "|---|---|---|---|---|---|---|");
for (const name of sidecars.keys()) {
  const r = stat(name, "rssMb");
  const f = stat(name, "fds");
  const h = stat(name, "heapMb");
  const l = stat(name, "lagMs");
  const v = leaks.find((x) => x.name === name);
  const g = (k) => (v?.metrics?.[k] ? `${fmt(v.metrics[k].growth)} (${fmt(v.metrics[k].limit, 0)}${v.metrics[k].gating ? "" : ", not gating"})` : "–");
  md.push(`| ${name} | ${r ? `${fmt(r.min)} / ${fmt(r.max)} / ${fmt(r.last)}` : "–"} | ${f ? `${f.min} / ${f.max} / ${f.last}` : "–"} | ${h ? `${fmt(h.min)} / ${fmt(h.max)} / ${fmt(h.last)}` : "–"} | ${l ? fmt(l.max) : "–"} | ${g("rssMb")}, ${g("heapMb")}, ${g("fdsNet")} | ${v ? (v.judged ? (v.leak ? "**GROWS**" : "flat") : v.why) : "–"} |`);
}
md.push("", `Leak rule: over the run's second half, cut into ${LEAK_WINDOWS} windows, the growth (from the first window's median to the last's, scaled to the span) of each sidecar's process with the most quiet samples in it (after its own warm-up of ${P.warmupS} s; only quiet samples, none during a fault or within ${P.quietMs / 1000} s after it, ${P.quietAfterBurstMs / 1000} s after a burst) must stay under ${Object.values(LEAK_BOUNDS).map((b) => `${b.what} max(${b.abs}, ${b.rel * 100} % of its mean)`).join("; ")}, or not keep rising (every window but at most one up on the one before by the limit / ${2 * LEAK_WINDOWS}): a one-time step is reported, not failed. Gating here: ${P.leakGate.join(", ")}.`, "");
md.push("## Error counters per sidecar (at the end; restarted sidecars count from their restart)", "");
for (const [name, c] of Object.entries(counters)) md.push(`- ${name}: ${Object.keys(c).length ? Object.entries(c).map(([k, v]) => `${k} ${v}`).join(", ") : "none"}${errorLines.get(name) ? `; ${errorLines.get(name).count} error log lines` : ""}`);
md.push("");
const errorSamples = [...errorLines].flatMap(([n, e]) => e.first.slice(0, 2).map((l) => `- ${n}: \`${l.replace(/`/g, "'")}\``));
if (errorSamples.length) md.push("First error log lines:", "", ...errorSamples, "");
const report = md.join("\n");
await writeFile(join(o.out, "report.md"), report);
await writeFile(join(o.out, "report.json"), JSON.stringify({ params: P, verdict, totals, perFlow, executed, byEvent: Object.fromEntries(byEvent), unexplained, wronglyAllowed: allowed, unexpectedExits, leaks, counters, renewals: Object.fromEntries(renewals), errorLines: Object.fromEntries(errorLines), failures: failures.length, samples }, null, 1));
await writeFile(
  join(o.out, "resources.svg"),
  renderPlot({
    samples,
    events: executed,
    t0: T0,
    title: `meshproxy soak, seed ${P.seed}, ${P.durationS} s: resources per sidecar (numbered marks: chaos events)`,
    panels: [
      { key: "rssMb", label: "RSS (MB)" },
      { key: "fds", label: "open file descriptors" },
      { key: "heapMb", label: "V8 heap live after a full GC (MB)" },
      { key: "lagMs", label: "event-loop lag p99 (ms)" },
    ],
  }),
);
console.log("\n" + report);
console.log(`report: ${join(o.out, "report.md")}`);
process.exit(verdict ? 0 : 1);

// ---- small HTTP and CLI helpers ----
function topKinds(m) {
  return [...m].sort((a, b) => b[1] - a[1]).slice(0, 3).map(([k, n]) => `${n}× ${k}`).join(", ");
}
function get(addr, path) {
  return new Promise((res, rej) => {
    const [host, port] = addr.split(":");
    request({ host, port: Number(port), path, agent: false, timeout: 5000 }, (r) => {
      let b = "";
      r.setEncoding("utf8");
      r.on("data", (d) => (b += d));
      r.on("end", () => res(b));
    })
      .on("error", rej)
      .on("timeout", function () {
        this.destroy(new Error("timeout"));
      })
      .end();
  });
}
function post(addr, path) {
  return new Promise((res, rej) => {
    const [host, port] = addr.split(":");
    request({ host, port: Number(port), path, method: "POST", agent: false }, (r) => {
      let b = "";
      r.setEncoding("utf8");
      r.on("data", (d) => (b += d));
      r.on("end", () => res({ status: r.statusCode, body: b }));
    })
      .on("error", rej)
      .end();
  });
}
async function cli(args) {
  const h = procs.spawn("meshproxy-cli", process.execPath, [BIN, ...args, "-data-dir", dataDir], { role: "tool" });
  const { code } = await h.exited;
  if (code !== 0) throw new Error(`meshproxy ${args.join(" ")} failed (exit ${code}): ${h.stderr()}`);
  return h.stdout();
}

/**
 * Polls every running sidecar's /certs until all of them at once have a leaf issued by `subject`
 * (a root rotation's new root), for 30 s at most: the sidecars on it at the last poll, and how
 * long it took. All at once: a sidecar that went back to a leaf of the old root (a renewal that
 * raced the rotation) is not counted. Gateways pass TLS through and have no leaf.
 */
async function untilEverySidecarIssuedBy(subject) {
  const t0 = Date.now();
  for (;;) {
    const names = [...sidecars.keys()].filter((n) => sidecars.get(n).spec.kind !== "gateway" && sidecars.get(n).handle?.running);
    const onNew = [];
    for (const n of names) {
      const body = await get(sidecars.get(n).info.adminAddr, "/certs").catch(() => "");
      try {
        if (JSON.parse(body).leaf?.issuer === subject) onNew.push(n);
      } catch {
        // not answering JSON (restarting): not on the new root yet
      }
    }
    if (onNew.length === names.length || Date.now() - t0 > 30_000) return { onNew, waitedMs: Date.now() - t0 };
    await sleep(250);
  }
}
