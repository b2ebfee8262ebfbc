// -concurrency N at steady state, and the primary's cost per new connection.
//
//   node bench/workers.mjs steady <N> [warmS=15] [measureS=10]
//     a dev-mode sidecar pair at -concurrency N, L7 (service-defaults protocol http), wrk -t1 -c50
//     for warmS (every worker's V8 optimises the path) and then measureS: req/s and CPU-seconds
//     per 10k requests of both sidecars' process trees.
//   node bench/workers.mjs handoff [connections=3000]
//     a -concurrency 2 client sidecar in front of a -concurrency 1 server sidecar; new TCP
//     connections, 8 at a time, into the client's upstream listener: CPU per 10k connections of
//     the client's primary (the round-robin handoff) and of its workers.
//
// Needs wrk (steady) and a built dist/. Prints one JSON line. Everything it starts is stopped.
import { spawn, execFileSync } from "node:child_process";
import { createServer as httpServer } from "node:http";
import { createServer as tcpServer, connect } from "node:net";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { cpuSeconds } from "./lib/procstat.mjs";

const BIN = join(dirname(fileURLToPath(import.meta.url)), "..", "dist", "cli", "main.js");
const [mode, ...rest] = process.argv.slice(2);
const dir = mkdtempSync(join(tmpdir(), "meshproxy-workers-"));
const children = [];
const load = () => readFileSync("/proc/loadavg", "utf8").split(" ")[0];

/** Own CPU seconds of one process (procstat's cpuSeconds sums the tree). */
function ownCpu(pid) {
  const s = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
}

function sidecar(concurrency, args) {
  const p = spawn(process.execPath, [BIN, "-data-dir", dir, "-log-json", "-admin-addr", "127.0.0.1:0", "-concurrency", String(concurrency), ...args], { stdio: ["ignore", "ignore", "pipe"] });
  children.push(p);
  let buf = "";
  return new Promise((resolve, reject) => {
    p.once("exit", (code) => reject(new Error(`meshproxy ${args.join(" ")} exited ${code}`)));
    p.stderr.setEncoding("utf8").on("data", (d) => {
      buf += d;
      // Each worker logs its own "proxy ready"; the primary's comes once all serve.
      for (const l of buf.split("\n")) if (l.includes('"proxy ready"') && !l.includes('"meshproxy.worker_')) resolve({ p, ready: JSON.parse(l) });
    });
  });
}

function wrk(url, seconds) {
  return new Promise((resolve, reject) => {
    const w = spawn("wrk", ["-t1", "-c50", `-d${seconds}s`, url]);
    children.push(w);
    let out = "";
    w.stdout.on("data", (d) => (out += d));
    w.once("error", reject);
    w.once("close", () => resolve(Number(/(\d+) requests in/.exec(out)?.[1] ?? 0)));
  });
}

async function steady(n, warmS, measureS) {
  const app = httpServer((q, r) => {
    q.resume();
    r.end("ok\n");
  }).listen(0, "127.0.0.1");
  await new Promise((r) => app.once("listening", r));
  const server = await sidecar(n, ["-service", "apphttp", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.address().port}`]);
  writeFileSync(join(dir, "sd.json"), JSON.stringify({ Kind: "service-defaults", Name: "apphttp", Protocol: "http" }));
  execFileSync(process.execPath, [BIN, "config", "write", join(dir, "sd.json"), "-data-dir", dir]);
  const client = await sidecar(n, ["-service", "web", "-upstream", "apphttp:0"]);
  const url = `http://${client.ready["upstream.apphttp"]}/`;
  await wrk(url, warmS);
  const before = cpuSeconds(server.p.pid) + cpuSeconds(client.p.pid);
  const requests = await wrk(url, measureS);
  const cpu = cpuSeconds(server.p.pid) + cpuSeconds(client.p.pid) - before;
  app.close();
  return { mode: "steady", concurrency: n, requests, req_per_s: Math.round(requests / measureS), cpu_s_per_10k: +((cpu / requests) * 1e4).toFixed(3), load: load() };
}

async function handoff(total) {
  const app = tcpServer((s) => s.pipe(s)).listen(0, "127.0.0.1");
  await new Promise((r) => app.once("listening", r));
  await sidecar(1, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.address().port}`]);
  const web = await sidecar(2, ["-service", "web", "-upstream", "db:0"]);
  const [host, port] = web.ready["upstream.db"].split(":");
  const one = () =>
    new Promise((resolve, reject) => {
      const s = connect({ host, port: Number(port) }, () => s.end("x"));
      s.on("data", () => {});
      s.once("close", resolve);
      s.once("error", reject);
    });
  for (let i = 0; i < 200; i++) await one();
  const workers = readFileSync(`/proc/${web.p.pid}/task/${web.p.pid}/children`, "utf8").trim().split(/\s+/).map(Number);
  const p0 = ownCpu(web.p.pid);
  const w0 = workers.map(ownCpu);
  const t0 = performance.now();
  let started = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (started < total) {
        started++;
        await one();
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const primary = ownCpu(web.p.pid) - p0;
  const worker = workers.reduce((a, pid, i) => a + ownCpu(pid) - w0[i], 0);
  app.close();
  return { mode: "handoff", connections: total, per_s: Math.round(total / seconds), primary_cpu_s_per_10k: +((primary / total) * 1e4).toFixed(3), workers_cpu_s_per_10k: +((worker / total) * 1e4).toFixed(2), load: load() };
}

try {
  const num = (i, d) => (rest[i] === undefined ? d : Number(rest[i]));
  if (mode === "steady") console.log(JSON.stringify(await steady(num(0, 1), num(1, 15), num(2, 10))));
  else if (mode === "handoff") console.log(JSON.stringify(await handoff(num(0, 3000))));
  else {
    process.stderr.write("usage: node bench/workers.mjs steady <N> [warmS] [measureS] | handoff [connections]\n");
    process.exitCode = 2;
  }
} finally {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGTERM");
  await new Promise((r) => setTimeout(r, 1000));
  rmSync(dir, { recursive: true, force: true });
  process.exit();
}
