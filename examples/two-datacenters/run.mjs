// Two datacenters on loopback with the dev control plane, joined by mesh gateways.
//
//   npm ci && node examples/two-datacenters/run.mjs
//
// dc2 runs two apps with their sidecars: db (TCP echo) and api (HTTP). Each datacenter runs a
// mesh gateway. dc1 runs two web sidecars with the same upstreams, `db.service.dc2` and
// `api.service.dc2`, one in mesh gateway mode local (web → gateway dc1 → gateway dc2 → db) and
// one in mode remote (web → gateway dc2 → db). The script sends a TCP line and an HTTP request
// through each, prints which gateways carried them, stops everything and exits 0 only if all
// four crossed. Every process is the `meshproxy` binary, started as you would start it; they
// share one temporary state directory (one CA, a catalog per datacenter).
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer as createHttpServer } from "node:http";
import { createServer as createTcpServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const BIN = fileURLToPath(new URL("../../dist/cli/main.js", import.meta.url));
const dataDir = await mkdtemp(join(tmpdir(), "meshproxy-two-dcs-"));
const processes = [];

/** Starts `meshproxy <args>` and resolves with its first JSON log line whose message is `ready`. */
function meshproxy(name, args, ready) {
  const child = spawn(process.execPath, [BIN, "-data-dir", dataDir, "-log-json", "-admin-addr", "127.0.0.1:0", ...args], { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, CONSUL_HTTP_ADDR: "" } });
  const lines = [];
  const proc = { name, child, lines, admin: null };
  processes.push(proc);
  let partial = "";
  return new Promise((resolve, reject) => {
    child.stderr.setEncoding("utf8").on("data", (d) => {
      partial += d;
      for (let nl = partial.indexOf("\n"); nl >= 0; nl = partial.indexOf("\n")) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        lines.push(line);
        let l;
        try {
          l = JSON.parse(line);
        } catch {
          continue;
        }
        if (l["@message"] === "admin API listening") proc.admin = l.address;
        if (l["@message"] === ready) resolve(Object.assign(proc, { ready: l }));
      }
    });
    child.once("exit", (code) => reject(new Error(`${name} exited (${code}) before it was ready:\n${lines.join("\n")}`)));
  });
}

async function listen(server) {
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return server.address().port;
}

/** A line over TCP through `addr` (host:port), half-closed; resolves with everything that came back. */
function tcpRoundTrip(addr, line) {
  const i = addr.lastIndexOf(":");
  return new Promise((resolve) => {
    const s = connect({ host: addr.slice(0, i), port: Number(addr.slice(i + 1)), allowHalfOpen: true });
    let got = "";
    s.setEncoding("utf8").on("data", (d) => (got += d));
    s.on("error", () => undefined);
    s.once("close", () => resolve(got));
    s.setTimeout(5000, () => s.destroy());
    s.end(line);
  });
}

async function httpGet(url) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
    return `${res.status} ${await res.text()}`;
  } catch (e) {
    return `failed: ${e.message}`;
  }
}

/** Retries `attempt` until `ok` says yes, for a few seconds (gateways register within a second). */
async function within(ms, attempt, ok) {
  const deadline = Date.now() + ms;
  for (;;) {
    const r = await attempt();
    if (ok(r) || Date.now() > deadline) return r;
    await new Promise((res) => setTimeout(res, 200));
  }
}

async function forwarded(gateway) {
  const text = await (await fetch(`http://${gateway.admin}/stats/prometheus`)).text();
  return text
    .split("\n")
    .filter((l) => l.startsWith("meshproxy_gateway_forwarded_total{"))
    // The route (envoy_cluster_name) and the count; the Consul labels after it are for dashboards.
    .map((l) => `    ${l.replace(/,[a-z_]+="[^"]*"/g, "")}`)
    .join("\n");
}

let exitCode = 1;
const apps = [];
try {
  // The apps in dc2: db echoes what it gets after a prefix; api answers HTTP.
  const db = createTcpServer({ allowHalfOpen: true }, (s) => {
    s.write("db (dc2) got: ");
    s.pipe(s);
  });
  const api = createHttpServer((req, res) => res.end(`api (dc2) answered ${req.method} ${req.url}`));
  apps.push(db, api);
  const dbPort = await listen(db);
  const apiPort = await listen(api);

  // db's sidecar makes the CA on first use; the others share it.
  await meshproxy("db sidecar (dc2)", ["-service", "db", "-datacenter", "dc2", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${dbPort}`], "proxy ready");
  const write = spawn(process.execPath, [BIN, "config", "write", "-data-dir", dataDir, "-"], { stdio: ["pipe", "ignore", "inherit"] });
  write.stdin.end(JSON.stringify({ Kind: "service-defaults", Name: "api", Protocol: "http" }));
  const [writeCode] = await once(write, "exit");
  if (writeCode !== 0) throw new Error("meshproxy config write failed");
  await meshproxy("api sidecar (dc2)", ["-service", "api", "-datacenter", "dc2", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${apiPort}`], "proxy ready");
  const gw2 = await meshproxy("mesh gateway dc2", ["-gateway", "mesh", "-datacenter", "dc2", "-listen", "127.0.0.1:0"], "gateway ready");
  const gw1 = await meshproxy("mesh gateway dc1", ["-gateway", "mesh", "-datacenter", "dc1", "-listen", "127.0.0.1:0"], "gateway ready");
  const upstreams = ["-upstream", "db.service.dc2:0", "-upstream", "api.service.dc2:0"];
  const webLocal = await meshproxy("web sidecar (dc1), mode local", ["-service", "web", "-datacenter", "dc1", "-proxy-id", "web-local", ...upstreams, "-mesh-gateway-mode", "local"], "proxy ready");
  const webRemote = await meshproxy("web sidecar (dc1), mode remote", ["-service", "web", "-datacenter", "dc1", "-proxy-id", "web-remote", ...upstreams, "-mesh-gateway-mode", "remote"], "proxy ready");

  console.log(`two datacenters on loopback, state directory ${dataDir}`);
  console.log(`  dc2: db app 127.0.0.1:${dbPort}, api app 127.0.0.1:${apiPort}, their sidecars, gateway ${gw2.ready.listen}`);
  console.log(`  dc1: gateway ${gw1.ready.listen}, web sidecars in mode local and mode remote`);
  console.log("");

  let crossed = 0;
  for (const [mode, web, path] of [
    ["local", webLocal, "web → gateway dc1 → gateway dc2 → db/api sidecar"],
    ["remote", webRemote, "web → gateway dc2 → db/api sidecar"],
  ]) {
    const dbAddr = web.ready["upstream.db"];
    const apiAddr = web.ready["upstream.api"];
    const line = `hello from web in dc1, mode ${mode}\n`;
    const tcp = await within(5000, () => tcpRoundTrip(dbAddr, line), (r) => r.length > 0);
    const http = await within(5000, () => httpGet(`http://${apiAddr}/orders?mode=${mode}`), (r) => r.startsWith("200 "));
    const tcpOk = tcp === `db (dc2) got: ${line}`;
    const httpOk = http === `200 api (dc2) answered GET /orders?mode=${mode}`;
    crossed += Number(tcpOk) + Number(httpOk);
    console.log(`mode ${mode}: ${path}`);
    console.log(`  TCP  ${dbAddr} → ${JSON.stringify(tcp)} ${tcpOk ? "ok" : "NOT CROSSED"}`);
    console.log(`  HTTP ${apiAddr} → ${JSON.stringify(http)} ${httpOk ? "ok" : "NOT CROSSED"}`);
  }
  console.log("");
  console.log(`what the gateways forwarded (they read the SNI only; mTLS runs from web's sidecar to db's and api's):`);
  console.log(`  gateway dc1:\n${await forwarded(gw1)}`);
  console.log(`  gateway dc2:\n${await forwarded(gw2)}`);
  console.log("");
  console.log(`${crossed} of 4 crossed`);
  exitCode = crossed === 4 ? 0 : 1;
} catch (e) {
  console.error(`two-datacenters: ${e.message}`);
} finally {
  // Sidecars and gateways first (they deregister on SIGTERM), then the apps and the directory.
  for (const p of [...processes].reverse()) {
    if (p.child.exitCode === null && p.child.signalCode === null) {
      p.child.kill("SIGTERM");
      await once(p.child, "exit");
    }
  }
  for (const a of apps) {
    a.closeAllConnections?.();
    a.close();
  }
  await rm(dataDir, { recursive: true, force: true });
  console.log("stopped everything");
}
process.exit(exitCode);
