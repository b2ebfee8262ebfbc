// An automated canary on loopback, twice: a good v2 that `meshproxy canary` moves to 100 %, and
// a bad one (10 % of its answers are 500s) that it rolls back at the first step.
//
//   npm ci && node examples/canary/run.mjs        (or: npm run demo -- canary)
//
// Two api apps (v1, v2) with their sidecars, a web sidecar calling api, 100 requests a second
// from here through web's upstream listener, and `meshproxy canary -service api -from v1 -to v2`
// with short steps (2 s) so the whole thing takes about a minute. It prints each rollout's
// timeline (one line per decision, with the figures it was based on), the canary's own summary
// table and what the client saw, then stops everything. Exit 0 when the good rollout reached
// 100 % and the bad one was rolled back to 100 % v1.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm, writeFile, readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const BIN = fileURLToPath(new URL("../../dist/cli/main.js", import.meta.url));
const dataDir = await mkdtemp(join(tmpdir(), "meshproxy-canary-"));
const processes = [];
const env = { ...process.env, CONSUL_HTTP_ADDR: "" };

/** Runs `meshproxy <args>`; resolves with its first JSON log line whose message is `ready` (or at exit when `ready` is null). */
function meshproxy(args, ready) {
  const tool = args[0] === "config";
  const child = spawn(process.execPath, [BIN, ...args, "-data-dir", dataDir, ...(tool ? [] : ["-log-json"])], { stdio: ["ignore", "pipe", "pipe"], env });
  const proc = { child, logs: [], stdout: "", admin: null };
  processes.push(proc);
  child.stdout.setEncoding("utf8").on("data", (d) => (proc.stdout += d));
  let partial = "";
  return new Promise((resolve, reject) => {
    child.stderr.setEncoding("utf8").on("data", (d) => {
      partial += d;
      for (let nl = partial.indexOf("\n"); nl >= 0; nl = partial.indexOf("\n")) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        try {
          const l = JSON.parse(line);
          proc.logs.push(l);
          if (l["@message"] === "admin API listening") proc.admin = l.address;
          if (ready && l["@message"] === ready) resolve(Object.assign(proc, { ready: l }));
        } catch {
          process.stderr.write(line + "\n");
        }
      }
    });
    child.once("close", (code) => (ready ? reject(new Error(`meshproxy ${args.join(" ")} exited (${code}) before "${ready}"`)) : resolve(Object.assign(proc, { code }))));
  });
}

async function configWrite(entry) {
  const file = join(dataDir, `${entry.Kind}-${entry.Name}.json`);
  await writeFile(file, JSON.stringify(entry));
  const r = await meshproxy(["config", "write", file], null);
  if (r.code !== 0) throw new Error(`config write ${file} failed`);
}

/** An api app; `failEvery` > 0 makes every n-th answer a 500. */
async function app(name) {
  const state = { failEvery: 0, n: 0 };
  const server = createServer((req, res) => {
    req.resume();
    const status = state.failEvery > 0 && ++state.n % state.failEvery === 0 ? 500 : 200;
    res.writeHead(status, { "content-type": "text/plain" }).end(`${name} ${status}\n`);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return Object.assign(state, { server, port: server.address().port });
}

/** 100 requests a second through `url` until stop(); counts answers by status. */
function traffic(url) {
  const seen = { sent: 0, byStatus: {}, failed: 0 };
  const timer = setInterval(() => {
    seen.sent++;
    fetch(url)
      .then(async (r) => {
        await r.text();
        seen.byStatus[r.status] = (seen.byStatus[r.status] ?? 0) + 1;
      })
      .catch(() => seen.failed++);
  }, 10);
  return { seen, stop: () => clearInterval(timer) };
}

function timeline(proc) {
  const start = Date.parse(proc.logs[0]?.["@timestamp"] ?? new Date().toISOString());
  const at = (l) => `+${((Date.parse(l["@timestamp"]) - start) / 1000).toFixed(1).padStart(5)}s`;
  for (const l of proc.logs) {
    if (l["@message"] === "canary decision") console.log(`  ${at(l)}  step ${l.step} (${l.weight}%): ${l.decision.padEnd(4)} requests=${l.requests} errors=${l.errors} error_rate=${(l.error_rate * 100).toFixed(2)}% p99=${l.p99_ms ?? "-"}ms`);
    else if (["starting the rollout", "canary step", "rolling back", "rolled back", "rollout done"].includes(l["@message"])) console.log(`  ${at(l)}  ${l["@message"]}${l.weight !== undefined ? ` (${l.weight}%)` : ""}${l.reason ? `: ${l.reason}` : ""}`);
  }
}

let ok = false;
try {
  const v1 = await app("v1");
  const v2 = await app("v2");
  await configWrite({ Kind: "service-defaults", Name: "api", Protocol: "http" });
  await configWrite({ Kind: "service-resolver", Name: "api", DefaultSubset: "v1", Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2" } } });
  await configWrite({ Kind: "service-splitter", Name: "api", Splits: [{ Weight: 100, ServiceSubset: "v1" }, { Weight: 0, ServiceSubset: "v2" }] });
  await meshproxy(["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${v1.port}`, "-meta", "version=v1", "-admin-addr", "127.0.0.1:0"], "proxy ready");
  await meshproxy(["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${v2.port}`, "-meta", "version=v2", "-admin-addr", "127.0.0.1:0"], "proxy ready");
  const web = await meshproxy(["-service", "web", "-upstream", "api:0", "-admin-addr", "127.0.0.1:0"], "proxy ready");
  const url = `http://${web.ready["upstream.api"]}/`;
  console.log(`meshproxy canary demo: api v1 and v2 behind their sidecars, web → api at 100 req/s (state ${dataDir})`);
  const flags = ["canary", "-service", "api", "-from", "v1", "-to", "v2", "-steps", "5,25,50,100", "-interval", "2s", "-max-error-rate", "0.01", "-max-p99", "2s", "-min-requests", "30"];

  console.log("\n1. a good v2");
  let load = traffic(url);
  const good = await meshproxy(flags, null);
  load.stop();
  timeline(good);
  process.stdout.write(good.stdout);
  console.log(`  exit ${good.code}; the client saw ${JSON.stringify(load.seen.byStatus)}, ${load.seen.failed} failed`);

  console.log("\n2. a bad v2: every 10th answer is a 500");
  await configWrite({ Kind: "service-splitter", Name: "api", Splits: [{ Weight: 100, ServiceSubset: "v1" }, { Weight: 0, ServiceSubset: "v2" }] });
  v2.failEvery = 10;
  load = traffic(url);
  const bad = await meshproxy(flags, null);
  load.stop();
  timeline(bad);
  process.stdout.write(bad.stdout);
  console.log(`  exit ${bad.code}; the client saw ${JSON.stringify(load.seen.byStatus)}, ${load.seen.failed} failed`);
  const split = JSON.parse(await readFile(join(dataDir, "config", "service-splitter", "api.json"), "utf8"));
  console.log(`  the split now: ${split.Splits.map((s) => `${s.ServiceSubset} ${s.Weight}%`).join(", ")} (${split.Meta["meshproxy-canary-status"]})`);
  ok = good.code === 0 && bad.code === 1 && split.Splits.find((s) => s.ServiceSubset === "v1")?.Weight === 100;
  for (const a of [v1, v2]) a.server.close();
} finally {
  for (const p of processes) if (p.child.exitCode === null) p.child.kill("SIGTERM");
  await Promise.all(processes.map((p) => (p.child.exitCode === null && p.child.signalCode === null ? once(p.child, "close") : null)));
  await rm(dataDir, { recursive: true, force: true });
  console.log(ok ? "\ngood rollout done, bad rollout rolled back; stopped everything" : "\nthe demo did not go as expected; stopped everything");
}
process.exitCode = ok ? 0 : 1;
