// `meshproxy demo`: a complete mesh on loopback in one process — two small apps, their
// sidecars and the dev control plane — with a request crossing it over mTLS every second.
import { createServer, type Server } from "node:http";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { AddressInfo } from "node:net";
import { request } from "undici";
import { Proxy } from "../proxy.js";
import { DevControlPlane } from "../controlplane/dev/dev.js";
import { createLogger } from "../telemetry/log.js";

function listen(server: Server): Promise<AddressInfo> {
  return new Promise((res, rej) => {
    server.once("error", rej);
    server.listen(0, "127.0.0.1", () => res(server.address() as AddressInfo));
  });
}

export async function runDemo(o: { dataDir?: string; count?: number; interval: number }, out = (s: string) => void process.stdout.write(s)): Promise<number> {
  const ownDir = !o.dataDir;
  const dataDir = resolve(o.dataDir ?? (await mkdtemp(join(tmpdir(), "meshproxy-demo-"))));
  const log = createLogger({ level: "warn" });

  // The "api" app: it sees plain HTTP from its sidecar and says who it is.
  let served = 0;
  const api = createServer((req, res) => {
    served++;
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ service: "api", message: "hello from api", path: req.url, served }));
  });
  const apiAddr = await listen(api);

  const apiSidecar = new Proxy({
    logger: log,
    drainTimeoutMs: 2000,
    controlPlane: new DevControlPlane({
      dataDir,
      logger: log,
      request: { service: "api", publicListener: { bind: { host: "127.0.0.1", port: 0 }, localApp: { host: "127.0.0.1", port: apiAddr.port } }, upstreams: [] },
    }),
  });
  const apiAddrs = await apiSidecar.start();

  const webSidecar = new Proxy({
    logger: log,
    drainTimeoutMs: 2000,
    controlPlane: new DevControlPlane({
      dataDir,
      logger: log,
      pollMs: 250,
      request: { service: "web", upstreams: [{ name: "api", bind: { host: "127.0.0.1", port: 0 } }] },
    }),
  });
  const webAddrs = await webSidecar.start();
  const upstream = webAddrs.upstreams["api"]!;
  const snap = webSidecar.snapshot!;

  out(
    [
      "meshproxy demo: a local mesh on loopback",
      `  dev control plane  ${dataDir} (trust domain ${snap.trust.trustDomain})`,
      `  web app            (this process) → ${upstream}  web sidecar upstream "api"`,
      `                       ══ mTLS: web ${snap.identity.spiffeId} ══▶`,
      `  api sidecar        ${apiAddrs.public}  public listener → api app 127.0.0.1:${apiAddr.port}`,
      "",
      "Try from another terminal:",
      `  curl http://${upstream}/hello`,
      `  MESHPROXY_DATA_DIR=${dataDir} npx meshproxy intention create -deny web api`,
      `  MESHPROXY_DATA_DIR=${dataDir} npx meshproxy intention delete web api`,
      "Ctrl-C stops the mesh.",
      "",
    ].join("\n"),
  );

  let sent = 0;
  let failures = 0;
  let stopping = false;
  let timer: NodeJS.Timeout | null = null;
  const finished = new Promise<void>((resolveDone) => {
    const failed = (e: unknown) => {
      out(`demo: ${e instanceof Error ? e.message : String(e)}\n`);
      resolveDone();
    };
    const tick = async () => {
      if (stopping) return resolveDone();
      sent++;
      const t0 = performance.now();
      try {
        // A new connection each time, so an intention change shows on the next request.
        const res = await request(`http://${upstream}/hello`, { reset: true, headersTimeout: 3000, bodyTimeout: 3000 });
        const body = await res.body.text();
        out(`[${sent}] web → api over mTLS: ${res.statusCode} ${body} (${(performance.now() - t0).toFixed(1)} ms)\n`);
      } catch (e) {
        failures++;
        out(`[${sent}] web → api failed: ${(e as Error).message} (denied by an intention? see: meshproxy intention list)\n`);
      }
      if (o.count !== undefined && sent >= o.count) return resolveDone();
      timer = setTimeout(() => {
        tick().catch(failed);
      }, o.interval);
    };
    tick().catch(failed);
    const stop = () => {
      stopping = true;
      if (timer) clearTimeout(timer);
      resolveDone();
    };
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
  });
  await finished;
  out("stopping the mesh...\n");
  await Promise.all([webSidecar.stop(), apiSidecar.stop()]);
  await new Promise<void>((r) => api.close(() => r()));
  if (ownDir) await rm(dataDir, { recursive: true, force: true });
  out(`done: ${sent} requests, ${sent - failures} answered, ${failures} failed\n`);
  return o.count !== undefined && failures > 0 ? 1 : 0;
}
