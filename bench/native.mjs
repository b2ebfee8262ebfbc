#!/usr/bin/env node
// Overhead of the mesh inside the app (Connect-native) against the mesh in sidecars, side by
// side, for the same HTTP call under the same closed-loop keep-alive load:
//
//   (a) native:  load client with the native dispatcher (web) → native server (api)
//   (b) sidecar: load client, plain HTTP → web's sidecar → api's sidecar → plain HTTP app
//
// Every process of a path (load client included: in (a) it does the mesh's client work) is
// measured from /proc: requests per CPU-second of the whole path, req/s, p50 and p99 latency.
//
//   npm run build && node bench/native.mjs [--seconds 5] [--connections 50] [--rounds 2] [--write]
//
// --write puts the table into bench/RESULTS-native.md. Processes are started here, on loopback,
// in a temporary state directory, and stopped by PID at the end (also on error).
import { spawn, execFileSync } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir, cpus, loadavg } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { cpuSeconds } from "./lib/procstat.mjs";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const BIN = join(ROOT, "dist", "cli", "main.js");
const SELF = fileURLToPath(import.meta.url);

const { values: args } = parseArgs({
  options: {
    role: { type: "string" },
    "data-dir": { type: "string" },
    url: { type: "string" },
    mode: { type: "string" },
    seconds: { type: "string", default: "5" },
    connections: { type: "string", default: "50" },
    rounds: { type: "string", default: "2" },
    write: { type: "boolean", default: false },
  },
});

const BODY = "x".repeat(64);

// ---- roles of the child processes ----

if (args.role === "app") {
  const { createServer } = await import("node:http");
  const server = createServer((_req, res) => res.end(BODY));
  server.keepAliveTimeout = 60_000;
  server.listen(0, "127.0.0.1", () => console.log(`ready ${JSON.stringify({ port: server.address().port })}`));
} else if (args.role === "native-server") {
  const { Service } = await import(join(ROOT, "dist", "index.js"));
  const svc = await Service.create({ name: "api", dataDir: args["data-dir"] });
  const server = svc.createServer((_req, res) => res.end(BODY));
  server.keepAliveTimeout = 60_000;
  server.listen(0, "127.0.0.1", () => console.log(`ready ${JSON.stringify({ port: server.address().port })}`));
} else if (args.role === "load") {
  // Closed loop: `connections` requests in flight, each followed at once by the next.
  const { request, Agent } = await import("undici");
  let dispatcher;
  let svc = null;
  if (args.mode === "native") {
    const { Service } = await import(join(ROOT, "dist", "index.js"));
    svc = await Service.create({ name: "web", dataDir: args["data-dir"] });
    dispatcher = svc.dispatcher();
  } else dispatcher = new Agent({ keepAliveTimeout: 60_000 });
  const call = async () => {
    const res = await request(args.url, { dispatcher });
    await res.body.text();
    if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`);
  };
  // Until the path answers (a new instance takes a moment to reach the catalog), then a warm-up.
  for (let i = 0; ; i++) {
    try {
      await call();
      break;
    } catch (e) {
      if (i > 100) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const conns = Number(args.connections);
  const run = async (ms, record) => {
    const end = performance.now() + ms;
    let errors = 0;
    await Promise.all(
      Array.from({ length: conns }, async () => {
        while (performance.now() < end) {
          const t0 = performance.now();
          try {
            await call();
            record?.(performance.now() - t0);
          } catch {
            errors++;
          }
        }
      }),
    );
    return errors;
  };
  await run(1000, null);
  console.log("warm");
  // The parent samples CPU now; it tells us to go on stdin.
  await once(process.stdin, "data");
  const latencies = [];
  const t0 = performance.now();
  const errors = await run(Number(args.seconds) * 1000, (ms) => latencies.push(ms));
  const elapsed = (performance.now() - t0) / 1000;
  latencies.sort((a, b) => a - b);
  const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? NaN;
  console.log(`done ${JSON.stringify({ requests: latencies.length, errors, elapsed, p50: q(0.5), p99: q(0.99) })}`);
  await svc?.close();
  process.exit(0);
} else {
  await main();
}

// ---- the parent ----

function child(name, argv, children) {
  const p = spawn(process.execPath, argv, { stdio: ["pipe", "pipe", "pipe"], env: { ...process.env, CONSUL_HTTP_ADDR: "" } });
  children.push(p);
  let out = "";
  let err = "";
  p.stdout.setEncoding("utf8").on("data", (d) => (out += d));
  p.stderr.setEncoding("utf8").on("data", (d) => (err += d));
  const waitFor = (prefix) =>
    new Promise((resolve, reject) => {
      const check = () => {
        const line = out.split("\n").find((l) => l.startsWith(prefix));
        if (line !== undefined) {
          p.stdout.off("data", check);
          resolve(line.slice(prefix.length).trim());
        }
      };
      p.stdout.on("data", check);
      check();
      p.once("exit", (code) => reject(new Error(`${name} exited (${code}):\n${err.slice(-2000)}`)));
    });
  const jsonLog = (message) =>
    new Promise((resolve, reject) => {
      const check = () => {
        for (const line of err.split("\n")) {
          try {
            const l = JSON.parse(line);
            if (l["@message"] === message) {
              p.stderr.off("data", check);
              return resolve(l);
            }
          } catch {
            // not a log line
          }
        }
      };
      p.stderr.on("data", check);
      check();
      p.once("exit", (code) => reject(new Error(`${name} exited (${code}):\n${err.slice(-2000)}`)));
    });
  return { p, waitFor, jsonLog };
}

function sidecar(dataDir, args, children) {
  return child(`meshproxy ${args.join(" ")}`, [BIN, "-data-dir", dataDir, "-log-json", ...args], children);
}

async function measure(pids, load) {
  await load.waitFor("warm");
  const before = pids.map(cpuSeconds);
  load.p.stdin.write("go\n");
  const result = JSON.parse(await load.waitFor("done"));
  const after = pids.map(cpuSeconds);
  const cpu = after.reduce((s, a, i) => s + (a - before[i]), 0);
  return { ...result, cpu, rps: result.requests / result.elapsed, perCpuSecond: result.requests / cpu };
}

async function path(kind) {
  const dataDir = await mkdtemp(join(tmpdir(), "meshproxy-bench-native-"));
  const children = [];
  try {
    execFileSync(process.execPath, [BIN, "config", "write", "-data-dir", dataDir, "-"], { input: JSON.stringify({ Kind: "service-defaults", Name: "api", Protocol: "http" }) });
    const common = ["--seconds", args.seconds, "--connections", args.connections, "--data-dir", dataDir];
    if (kind === "native") {
      const server = child("native server", [SELF, "--role", "native-server", "--data-dir", dataDir], children);
      await server.waitFor("ready");
      const load = child("native load", [SELF, "--role", "load", "--mode", "native", "--url", "https://api.service.consul/", ...common], children);
      return await measure([server.p.pid, load.p.pid], load);
    }
    const app = child("app", [SELF, "--role", "app"], children);
    const { port } = JSON.parse(await app.waitFor("ready"));
    const apiSidecar = sidecar(dataDir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${port}`], children);
    await apiSidecar.jsonLog("proxy ready");
    const webSidecar = sidecar(dataDir, ["-service", "web", "-upstream", "api:0"], children);
    const ready = await webSidecar.jsonLog("proxy ready");
    const load = child("plain load", [SELF, "--role", "load", "--mode", "plain", "--url", `http://${ready["upstream.api"]}/`, ...common], children);
    return await measure([app.p.pid, apiSidecar.p.pid, webSidecar.p.pid, load.p.pid], load);
  } finally {
    for (const c of children) {
      if (c.exitCode === null && c.signalCode === null) {
        c.kill("SIGTERM");
        await once(c, "exit");
      }
    }
    await rm(dataDir, { recursive: true, force: true });
  }
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

async function main() {
  const rounds = Number(args.rounds);
  const results = { native: [], sidecar: [] };
  for (let r = 0; r < rounds; r++) {
    // Alternate the order so that neither path always runs on a warmer (or busier) machine.
    for (const kind of r % 2 === 0 ? ["native", "sidecar"] : ["sidecar", "native"]) {
      const m = await path(kind);
      results[kind].push(m);
      console.error(`round ${r + 1} ${kind}: ${Math.round(m.rps)} req/s, ${Math.round(m.perCpuSecond)} req/CPU-s, p99 ${m.p99.toFixed(2)} ms, errors ${m.errors}`);
    }
  }
  const row = (kind, label) => {
    const ms = results[kind];
    return `| ${label} | ${Math.round(median(ms.map((m) => m.rps))).toLocaleString("en")} | ${Math.round(median(ms.map((m) => m.perCpuSecond))).toLocaleString("en")} | ${median(ms.map((m) => m.p50)).toFixed(2)} | ${median(ms.map((m) => m.p99)).toFixed(2)} | ${ms.reduce((s, m) => s + m.errors, 0)} |`;
  };
  const table = [
    `| path | req/s | requests per CPU-second (all processes) | p50 ms | p99 ms | errors |`,
    `|---|---:|---:|---:|---:|---:|`,
    row("native", "(a) native client → native server (2 processes)"),
    row("sidecar", "(b) app → sidecar → sidecar → app (4 processes)"),
  ].join("\n");
  const ratio = median(results.native.map((m) => m.perCpuSecond)) / median(results.sidecar.map((m) => m.perCpuSecond));
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? "?"}, load average ${loadavg()[0].toFixed(2)} at the end, Node ${process.version}`;
  const summary = `${table}\n\nNative does ${ratio.toFixed(2)}× the requests per CPU-second of the sidecar path. Closed loop, ${args.connections} requests in flight, HTTP/1.1 keep-alive, ${args.seconds} s per run after a 1 s warm-up, median of ${rounds} round(s); ${machine}.`;
  console.log(summary);
  if (args.write) {
    const md = `# Native vs sidecar overhead\n\nWritten by \`node bench/native.mjs --write\` (see the script's header for what is measured). Every process of a path is counted, the load client included: in (a) it does the mesh's client work (routing, balancing, mTLS origination), in (b) the sidecars do. The machine is shared (see the load average): compare the two rows of one run, not runs with each other.\n\n${summary}\n`;
    await writeFile(join(ROOT, "bench", "RESULTS-native.md"), md);
  }
}
