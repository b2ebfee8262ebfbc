// A small memory probe for the soak's growth questions, one cause at a time (bench/SOAK.md,
// "Is the growth a leak?"): a caller sidecar with an HTTP upstream `api` and a TCP upstream
// `echo`, their two sidecars, light steady load (keep-alive HTTP at --rate req/s and a new TLS
// connection through `echo` every second), leaves renewed as often as --ttl makes them, and
// optionally pool blow-ups (the api app hangs while --blowup-conns requests wait, then answers)
// and connection bursts (--burst-conns connections to the caller's echo upstream, held 6 s).
// Every 2 s it samples each sidecar's RSS, V8 heap used and descriptors, and writes them with
// the renewals and the phases to --out (JSON); a summary goes to stdout.
//
//   node bench/soak/probe.mjs --ttl 12s --minutes 6 --rate 200 --out /tmp/probe.json
//   node bench/soak/probe.mjs --ttl 1h --minutes 6 --blowups 3 --blowup-conns 1000 --env MALLOC_ARENA_MAX=2
//
// --blowup-hold S holds the hung requests S seconds (default 15); --app-timeout-ms N sets api's
// LocalRequestTimeoutMs, so the api sidecar answers 504 and drops the app connection after N ms,
// as in the soak's `hang` fault.
// --trim asks glibc, through gdb, to hand back every free page (malloc_trim(0)) in each sidecar
// 20 s after each event and at the end, and records RSS before and after: memory a trim returns
// was free and kept by the allocator; memory it does not return is in use (a leak if it grows).
import { mkdtemp, writeFile, rm, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { request, Agent } from "node:http";
import { connect } from "node:net";
import { parseArgs } from "node:util";
import { execFile } from "node:child_process";
import { Procs } from "../lib/procs.mjs";
import { memory } from "../lib/procstat.mjs";
import { startSidecar, configWrite } from "../lib/meshproxy.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, "..", "..");
const { values: o } = parseArgs({
  options: {
    ttl: { type: "string", default: "12s" },
    minutes: { type: "string", default: "6" },
    rate: { type: "string", default: "200" },
    blowups: { type: "string", default: "0" },
    "blowup-conns": { type: "string", default: "1000" },
    bursts: { type: "string", default: "0" },
    "burst-conns": { type: "string", default: "3000" },
    trim: { type: "boolean", default: false },
    "blowup-hold": { type: "string", default: "15" },
    "app-timeout-ms": { type: "string" },
    env: { type: "string", multiple: true, default: [] },
    "node-arg": { type: "string", multiple: true, default: [] },
    out: { type: "string", default: join(tmpdir(), "meshproxy-probe.json") },
  },
});
const env = Object.fromEntries(o.env.map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));
const durationMs = Number(o.minutes) * 60_000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T0 = Date.now();
const log = (msg) => console.log(`[t+${((Date.now() - T0) / 1000).toFixed(0).padStart(4)}s] ${msg}`);

const procs = new Procs();
process.on("exit", () => procs.killAllSync());
process.on("SIGINT", () => process.exit(130));

const dataDir = await mkdtemp(join(tmpdir(), "meshproxy-probe-"));
{
  // The dev CA as a first sidecar would create it, then the short leaf lifetime under test.
  const { ensureCa } = await import(pathToFileURL(join(ROOT, "dist", "controlplane", "dev", "state.js")).href);
  const { config } = await ensureCa(dataDir);
  const caConfig = join(dataDir, "ca", "config.json");
  await writeFile(caConfig, JSON.stringify({ trust_domain: config.trustDomain, datacenter: config.datacenter, leaf_cert_ttl: o.ttl }) + "\n", { mode: 0o644 });
}
await configWrite(procs, { root: ROOT, dataDir, file: join(dataDir, "entry.json"), entry: { Kind: "service-defaults", Name: "api", Protocol: "http", ...(o["app-timeout-ms"] ? { LocalRequestTimeoutMs: Number(o["app-timeout-ms"]) } : {}) } });

const apps = procs.spawn("apps", process.execPath, [join(HERE, "apps.mjs"), JSON.stringify({ http: ["api"], tcp: ["echo"] })], { role: "app" });
const appInfo = JSON.parse((await apps.waitForLine((e) => e.stream === "stdout" && e.line.startsWith("{"))).line);

const renewals = new Map();
const sidecars = new Map();
async function start(name, args) {
  const info = await startSidecar(procs, { root: ROOT, name, dataDir, args, env, nodeArgs: o["node-arg"] });
  let issued = 0;
  let partial = "";
  info.handle.child.stderr.on("data", (d) => {
    partial += d;
    let nl;
    while ((nl = partial.indexOf("\n")) >= 0) {
      if (partial.slice(0, nl).includes('"issued leaf certificate"') && ++issued > 1) renewals.set(name, (renewals.get(name) ?? 0) + 1);
      partial = partial.slice(nl + 1);
    }
  });
  sidecars.set(name, info);
  return info;
}
await start("api", ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${appInfo.ports.api}`]);
await start("echo", ["-service", "echo", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${appInfo.ports.echo}`]);
const caller = await start("caller", ["-service", "caller", "-upstream", "api:0", "-upstream", "echo:0"]);
const [apiHost, apiPort] = caller.upstreams.api.split(":");
const [echoHost, echoPort] = caller.upstreams.echo.split(":");
log(`sidecars up; leaf TTL ${o.ttl}; data dir ${dataDir}`);

function get(addr, path, agent = false) {
  const [host, port] = addr.split(":");
  return new Promise((resolve, reject) => {
    const req = request({ host, port: Number(port), path, agent }, (res) => {
      let b = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (b += d));
      res.on("end", () => resolve({ status: res.statusCode, body: b }));
    });
    req.on("error", reject);
    req.end();
  });
}
const setMode = (mode) => new Promise((resolve, reject) => {
  request({ host: "127.0.0.1", port: appInfo.control, path: `/mode?instance=api&mode=${mode}`, method: "POST", agent: false }, (res) => res.resume().on("end", resolve)).on("error", reject).end();
});

// ---- steady load ----
const keepAlive = new Agent({ keepAlive: true, maxSockets: 8 });
const counts = { ok: 0, failed: 0, tlsConns: 0, tlsFailed: 0 };
const perTick = Number(o.rate) / 100;
let owed = 0;
const loadTimer = setInterval(() => {
  owed += perTick;
  for (; owed >= 1; owed--) get(`${apiHost}:${apiPort}`, "/", keepAlive).then((r) => (r.status === 200 ? counts.ok++ : counts.failed++), () => counts.failed++);
}, 10);
const tlsTimer = setInterval(() => {
  // A new connection through the TCP upstream is a new mTLS connection caller → echo.
  const s = connect(Number(echoPort), echoHost);
  s.setTimeout(5000, () => s.destroy());
  s.once("data", () => {
    counts.tlsConns++;
    s.end();
  });
  s.on("error", () => counts.tlsFailed++);
}, 1000);

// ---- samples ----
const samples = [];
const phases = [];
async function sample() {
  const t = Date.now();
  await Promise.all([...sidecars].map(async ([name, s]) => {
    const mem = memory(s.handle.pid);
    let fds = null;
    try {
      fds = (await readdir(`/proc/${s.handle.pid}/fd`)).length;
    } catch {}
    const m = await get(s.adminAddr, "/stats/prometheus").catch(() => ({ body: "" }));
    const heap = /^nodejs_heap_size_used_bytes(?:\{[^}]*\})? (\S+)/m.exec(m.body);
    samples.push({ t, name, rssMb: mem ? mem.rssKb / 1024 : null, heapMb: heap ? Number(heap[1]) / 2 ** 20 : null, fds, renewals: renewals.get(name) ?? 0 });
  }));
}
const sampler = setInterval(() => void sample(), 2000);

async function blowup(i) {
  const n = Number(o["blowup-conns"]);
  log(`blow-up ${i}: api hangs, ${n} requests wait on ${n} connections`);
  phases.push({ t: Date.now(), what: `blowup ${i} start` });
  await setMode("hang");
  const many = new Agent({ keepAlive: true, maxSockets: n });
  const all = Array.from({ length: n }, () => get(`${apiHost}:${apiPort}`, "/", many).catch(() => null));
  await sleep(Number(o["blowup-hold"]) * 1000);
  await setMode("ok");
  await Promise.all(all);
  many.destroy();
  phases.push({ t: Date.now(), what: `blowup ${i} released` });
}
async function burst(i) {
  const n = Number(o["burst-conns"]);
  log(`burst ${i}: ${n} connections to the caller's echo upstream, held 6 s`);
  phases.push({ t: Date.now(), what: `burst ${i} start` });
  const socks = [];
  for (let k = 0; k < n; k++) {
    const s = connect(Number(echoPort), echoHost);
    s.on("error", () => {});
    socks.push(s);
  }
  await sleep(6000);
  for (const s of socks) s.destroy();
  phases.push({ t: Date.now(), what: `burst ${i} closed` });
}

const trims = [];
function gdbTrim(pid) {
  return new Promise((resolve) => execFile("gdb", ["-p", String(pid), "-batch", "-ex", "call (int)malloc_trim(0)"], { timeout: 60_000 }, () => resolve()));
}
async function trim(label) {
  if (!o.trim) return;
  for (const [name, s] of sidecars) {
    const before = memory(s.handle.pid);
    await gdbTrim(s.handle.pid);
    const after = memory(s.handle.pid);
    if (!before || !after) continue;
    const row = { t: Date.now(), label, name, rssBeforeMb: before.rssKb / 1024, rssAfterMb: after.rssKb / 1024 };
    trims.push(row);
    log(`${label}: ${name} RSS ${row.rssBeforeMb.toFixed(1)} MB, after malloc_trim(0) ${row.rssAfterMb.toFixed(1)} MB`);
  }
}

// Events spread evenly after a 60 s warm-up, leaving the last fifth quiet.
const events = [...Array.from({ length: Number(o.blowups) }, (_, i) => () => blowup(i + 1)), ...Array.from({ length: Number(o.bursts) }, (_, i) => () => burst(i + 1))];
const gap = events.length ? (durationMs * 0.8 - 60_000) / events.length : 0;
await sleep(60_000);
phases.push({ t: Date.now(), what: "warm" });
await trim("warm");
for (const [i, ev] of events.entries()) {
  const at = Date.now();
  await ev();
  await sleep(20_000);
  await trim(`after event ${i + 1}`);
  await sleep(Math.max(0, gap - (Date.now() - at)));
}
await sleep(Math.max(0, durationMs - (Date.now() - T0)));
clearInterval(loadTimer);
clearInterval(tlsTimer);
clearInterval(sampler);
await sample();
await trim("end");
keepAlive.destroy();

// ---- summary: RSS and heap per sidecar at the minute marks, growth per renewal over the quiet tail ----
const out = { params: o, counts, renewals: Object.fromEntries(renewals), phases, samples, trims };
await writeFile(o.out, JSON.stringify(out, null, 1));
console.log(`requests ok ${counts.ok} failed ${counts.failed}; new TLS connections ${counts.tlsConns} (failed ${counts.tlsFailed}); renewals ${JSON.stringify(out.renewals)}`);
for (const name of sidecars.keys()) {
  const mine = samples.filter((s) => s.name === name);
  const at = (ms) => mine.reduce((best, s) => (Math.abs(s.t - T0 - ms) < Math.abs(best.t - T0 - ms) ? s : best));
  const marks = [];
  for (let m = 1; m * 60_000 <= durationMs; m++) marks.push(at(m * 60_000));
  console.log(`${name.padEnd(7)} RSS MB ${marks.map((s) => s.rssMb.toFixed(1)).join(" ")} | heap MB ${marks.map((s) => (s.heapMb ?? 0).toFixed(1)).join(" ")} | fds ${marks.map((s) => s.fds).join(" ")} | renewals ${mine.at(-1).renewals}`);
}
console.log(`samples in ${o.out}`);
await rm(dataDir, { recursive: true, force: true });
process.exit(0);
