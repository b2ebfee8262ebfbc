// Native apps and a sidecar in one mesh, on loopback with the dev control plane.
//
//   npm ci && npm run build && node examples/native/run.mjs
//
// It starts, in a temporary state directory of its own:
//   - api: a native server (node:https, server.mjs), and orders: a native Express server
//     (express-server.mjs) when express is installed (`npm install` in examples/native);
//   - db: a plain HTTP app behind a meshproxy sidecar;
//   - shop: a plain HTTP client behind a meshproxy sidecar with `api` as its upstream;
//   - web and evil: native clients (client.mjs), with an intention denying evil → api;
//   - stock: a native gRPC server (grpc.mjs) when @grpc/grpc-js can be imported, called by web.
// It makes every crossing: native → native, native → sidecar, sidecar → native, and one the deny
// intention refuses; prints each; stops everything and exits 0 only if each behaved.
import { spawn, execFileSync } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, get as httpGet } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
// In your app: `from "meshproxy"`; the examples run from a checkout without installing it.
import { Service } from "../../dist/index.js";
import { startServer } from "./server.mjs";
import { get } from "./client.mjs";
import { countStock, startGrpcServer } from "./grpc.mjs";

const BIN = fileURLToPath(new URL("../../dist/cli/main.js", import.meta.url));
const dataDir = await mkdtemp(join(tmpdir(), "meshproxy-native-"));
const children = [];
const closers = [];

/** Starts a meshproxy sidecar and resolves with its `proxy ready` log line (upstream addresses in it). */
function sidecar(args) {
  const child = spawn(process.execPath, [BIN, "-data-dir", dataDir, "-log-json", "-admin-addr", "127.0.0.1:0", ...args], { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, CONSUL_HTTP_ADDR: "" } });
  children.push(child);
  let partial = "";
  const lines = [];
  return new Promise((resolve, reject) => {
    child.stderr.setEncoding("utf8").on("data", (d) => {
      partial += d;
      for (let nl = partial.indexOf("\n"); nl >= 0; nl = partial.indexOf("\n")) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        lines.push(line);
        try {
          const l = JSON.parse(line);
          if (l["@message"] === "proxy ready") resolve(l);
        } catch {
          // not a log line
        }
      }
    });
    child.once("exit", (code) => reject(new Error(`sidecar ${args.join(" ")} exited (${code}) before it was ready:\n${lines.join("\n")}`)));
  });
}

function plainGet(url) {
  return new Promise((resolve) => {
    const req = httpGet(url, { timeout: 5000 }, (res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (d) => (body += d));
      res.on("end", () => resolve(`${res.statusCode} ${body.trim()}`));
    });
    req.on("timeout", () => req.destroy(new Error("timed out")));
    req.on("error", (e) => resolve(`failed: ${e.message}`));
  });
}

/** A new instance reaches the catalog within a moment: retry until `ok` or a few seconds pass. */
async function within(attempt, ok, ms = 8000) {
  const deadline = Date.now() + ms;
  for (;;) {
    let r;
    try {
      r = await attempt();
    } catch (e) {
      r = `failed: ${e.cause?.message ?? e.message}`;
    }
    if (ok(r) || Date.now() > deadline) return r;
    await new Promise((res) => setTimeout(res, 100));
  }
}

async function hasExpress() {
  try {
    await import("express");
    return true;
  } catch {
    return false;
  }
}

/** The app's own grpc-js, when there is one (a devDependency of this checkout). */
async function grpcJs() {
  try {
    return await import("@grpc/grpc-js");
  } catch {
    return null;
  }
}

let exitCode = 1;
try {
  execFileSync(process.execPath, [BIN, "intention", "create", "--deny", "evil", "api", "--data-dir", dataDir], { stdio: "ignore" });

  const api = await startServer({ name: "api", dataDir });
  closers.push(() => new Promise((r) => api.server.close(r)), () => api.svc.close());
  let orders = null;
  if (await hasExpress()) {
    const { startExpressServer } = await import("./express-server.mjs");
    orders = await startExpressServer({ name: "orders", dataDir });
    closers.push(() => new Promise((r) => orders.server.close(r)), () => orders.svc.close());
  }

  const grpc = await grpcJs();
  let stock = null;
  if (grpc) {
    stock = await startGrpcServer(grpc, { name: "stock", dataDir });
    closers.push(stock.close);
  }

  const dbApp = createServer((req, res) => res.end(`db (behind a sidecar) answered ${req.method} ${req.url}`));
  dbApp.listen(0, "127.0.0.1");
  await once(dbApp, "listening");
  closers.push(() => new Promise((r) => dbApp.close(r)));
  await sidecar(["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${dbApp.address().port}`]);
  // shop only calls out: its sidecar has an upstream listener and no public one.
  const shop = await sidecar(["-service", "shop", "-upstream", "api:0"]);

  const web = await Service.create({ name: "web", dataDir });
  const evil = await Service.create({ name: "evil", dataDir });
  closers.push(() => web.close(), () => evil.close());

  console.log(`native apps and sidecars on loopback, state directory ${dataDir}`);
  console.log(`  api: native node:https server, 127.0.0.1:${api.port}`);
  console.log(orders ? `  orders: native Express server, 127.0.0.1:${orders.port}` : "  orders: skipped (express is not installed: `npm install` in examples/native)");
  console.log("  db: plain HTTP app behind a meshproxy sidecar; shop: plain HTTP client behind a sidecar");
  console.log("  web, evil: native clients; an intention denies evil → api");
  console.log(stock ? `  stock: native gRPC server, 127.0.0.1:${stock.port}` : "  stock: skipped (@grpc/grpc-js cannot be imported)");
  console.log("");

  const crossings = [
    ["native → native   web → api", () => get(web, "https://api.service.consul/hello"), (r) => r === "200 api (node:https) answered GET /hello for web"],
    ["native → sidecar  web → db's sidecar → db", () => get(web, "https://db.service.consul/rows"), (r) => r === "200 db (behind a sidecar) answered GET /rows"],
    ["sidecar → native  shop → shop's sidecar → api", () => plainGet(`http://${shop["upstream.api"]}/cart`), (r) => r === "200 api (node:https) answered GET /cart for shop"],
    ["denied            evil → api (intention deny)", () => get(evil, "https://api.service.consul/hello"), (r) => r.startsWith("503 [UF]")],
  ];
  if (stock) crossings.push(["native gRPC       web → stock", () => countStock(grpc, web, "stock", 7), (r) => r === "OK stock has 3 of item 7 for web"]);
  if (orders) crossings.push(["native → Express  web → orders", () => get(web, "https://orders.service.consul/orders/7"), (r) => r === "200 orders (express) answered order 7 for web"]);
  let behaved = 0;
  for (const [what, attempt, ok] of crossings) {
    const r = await within(attempt, ok);
    const good = ok(r);
    behaved += Number(good);
    console.log(`${what}: ${r} ${good ? "ok" : "NOT AS EXPECTED"}`);
  }
  console.log("");
  console.log(`${behaved} of ${crossings.length} crossings behaved`);
  exitCode = behaved === crossings.length ? 0 : 1;
} catch (e) {
  console.error(e instanceof Error ? e.message : e);
} finally {
  for (const close of closers.reverse()) await close().catch(() => undefined);
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      await once(child, "exit");
    }
  }
  await rm(dataDir, { recursive: true, force: true });
  console.log("stopped everything");
}
process.exitCode = exitCode;
