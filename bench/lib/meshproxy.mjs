// meshproxy sidecars as the harness runs them: `node dist/cli/main.js` with JSON logs, port-0
// listeners, an admin API on a free port, and the dev control plane in the given data dir.
// Startup to ready = spawn → the "proxy ready" log line. `node` is the Node binary that runs
// meshproxy (bench/run.mjs --node); by default the harness's own.
import { join } from "node:path";

export function startSidecar(procs, { root, name, dataDir, args, node = process.execPath, nodeArgs = [], env = {} }) {
  const bin = join(root, "dist", "cli", "main.js");
  const h = procs.spawn(name, node, [...nodeArgs, bin, "-data-dir", dataDir, "-log-json", "-admin-addr", "127.0.0.1:0", ...args], {
    role: "proxy",
    env: { ...process.env, CONSUL_HTTP_ADDR: "", ...env },
  });
  return h
    // With -concurrency N each worker logs its own "proxy ready" (module meshproxy.worker_<i>);
    // the sidecar is ready when the primary's comes, once every worker serves.
    .waitForLine((e) => e.stream === "stderr" && e.line.includes('"proxy ready"') && !e.line.includes('"meshproxy.worker_'), 20_000)
    .then(async (e) => {
      const ready = JSON.parse(e.line);
      const upstreams = {};
      for (const [k, v] of Object.entries(ready)) if (k.startsWith("upstream.")) upstreams[k.slice(9)] = String(v);
      const admin = JSON.parse((await h.waitForLine((l) => l.stream === "stderr" && l.line.includes('"admin API listening"'), 5000)).line);
      return { handle: h, readyMs: e.at - h.spawnedAt, public: typeof ready.public === "string" ? ready.public : null, upstreams, adminAddr: String(admin.address) };
    });
}

/**
 * A mesh gateway: `meshproxy -gateway mesh -datacenter <dc> -listen 127.0.0.1:0`, ready at its
 * "gateway ready" log line (which names the listen address). The data dir must already hold the CA.
 */
export function startGateway(procs, { root, name, dataDir, datacenter, node = process.execPath, nodeArgs = [], env = {} }) {
  const bin = join(root, "dist", "cli", "main.js");
  const h = procs.spawn(name, node, [...nodeArgs, bin, "-gateway", "mesh", "-datacenter", datacenter, "-listen", "127.0.0.1:0", "-data-dir", dataDir, "-log-json", "-admin-addr", "127.0.0.1:0"], {
    role: "proxy",
    env: { ...process.env, CONSUL_HTTP_ADDR: "", ...env },
  });
  return h
    .waitForLine((e) => e.stream === "stderr" && e.line.includes('"gateway ready"'), 20_000)
    .then(async (e) => {
      const ready = JSON.parse(e.line);
      const admin = JSON.parse((await h.waitForLine((l) => l.stream === "stderr" && l.line.includes('"admin API listening"'), 5000)).line);
      return { handle: h, readyMs: e.at - h.spawnedAt, listen: String(ready.listen), adminAddr: String(admin.address) };
    });
}

/** Whether the meshproxy build in `root` knows a flag (its --help lists it). */
export async function supportsFlag(root, flag) {
  const { execFile } = await import("node:child_process");
  return new Promise((resolve) => {
    execFile(process.execPath, [join(root, "dist", "cli", "main.js"), "--help"], (_err, stdout, stderr) => resolve(`${stdout}${stderr}`.includes(flag)));
  });
}

/** `meshproxy config write <file> -data-dir <dir>`, as an operator would. Resolves with its duration (ms). */
export async function configWrite(procs, { root, dataDir, file, entry, node = process.execPath }) {
  const { writeFile } = await import("node:fs/promises");
  await writeFile(file, JSON.stringify(entry, null, 2));
  const h = procs.spawn("meshproxy-config-write", node, [join(root, "dist", "cli", "main.js"), "config", "write", file, "-data-dir", dataDir], { role: "tool" });
  const { code } = await h.exited;
  if (code !== 0) throw new Error(`meshproxy config write ${file} failed (exit ${code}): ${h.stderr()}`);
  return performance.now() - h.spawnedAt;
}

/** Connections a mesh gateway has forwarded so far (meshproxy_gateway_forwarded_total, every route), or null. */
export async function gatewayForwarded(adminAddr) {
  const { get } = await import("node:http");
  const [host, port] = adminAddr.split(":");
  return new Promise((resolve) => {
    get({ host, port: Number(port), path: "/stats/prometheus", agent: false }, (res) => {
      let b = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (b += d));
      res.on("end", () => {
        let n = 0;
        for (const line of b.split("\n")) if (line.startsWith("meshproxy_gateway_forwarded_total{")) n += Number(line.slice(line.lastIndexOf(" ") + 1));
        resolve(n);
      });
    }).on("error", () => resolve(null));
  });
}

/** The sidecar's config dump (admin API). */
export async function configDump(adminAddr) {
  const { get } = await import("node:http");
  const [host, port] = adminAddr.split(":");
  return new Promise((resolve, reject) => {
    get({ host, port: Number(port), path: "/config_dump", agent: false }, (res) => {
      let b = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (b += d));
      res.on("end", () => {
        try {
          resolve(JSON.parse(b));
        } catch (e) {
          reject(e);
        }
      });
    }).on("error", reject);
  });
}
