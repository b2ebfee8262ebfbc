// `meshproxy -gateway mesh -datacenter dc2 -listen host:port`: a mesh gateway fed by the dev
// control plane. Its route table comes from the state directory's catalogs: this datacenter's
// live service instances (by the SNI their clients send) and every other datacenter's live
// gateways. It registers itself in its own catalog as a mesh-gateway, answers /ready and
// metrics on the admin address, and drains on SIGTERM. It never loads a leaf or the CA key:
// passthrough needs neither, so nothing here can decrypt what crosses it.
import { watch, type FSWatcher } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { readFile } from "node:fs/promises";
import { Registry } from "prom-client";
import { createLogger, logRejection, type Logger } from "../telemetry/log.js";
import { AccessLog } from "../telemetry/access-log.js";
import { CoalescedRun } from "../controlplane/coalesce.js";
import { UnsafeStateDirError } from "../controlplane/dev/permissions.js";
import {
  catalogDir,
  deregisterInstance,
  listDatacenters,
  openStateDir,
  parseCaConfig,
  paths,
  processAlive,
  readCatalog,
  registerInstance,
  StateError,
  type CatalogEntry,
} from "../controlplane/dev/state.js";
import { DEFAULTS, type Endpoint, type HostPort } from "../config/snapshot.js";
import { formatMeshSni, parseMeshSni } from "../identity/sni.js";
import { listenerLimits } from "../tcp/admission.js";
import { GatewayListener } from "../gateway/listener.js";
import { GatewayConfigError, GatewayRoutes } from "../gateway/routes.js";
import { GatewayStats } from "../gateway/stats.js";
import type { ProxyCommand } from "./program.js";

/** What the gateway knows of the state directory, read once at start. */
interface GatewayView {
  readonly trustDomain: string;
  readonly datacenter: string;
  readonly home: string;
  readonly catalog: string;
}

function endpointOf(e: CatalogEntry): Endpoint {
  return { host: e.address, port: e.port, healthy: processAlive(e.pid), id: e.id, meta: e.meta };
}

/**
 * The route table from the catalogs. A service whose name cannot be an SNI label is left out and
 * reported (its clients could not name it anyway); the rest of the table still applies.
 */
async function readRoutes(dataDir: string, view: GatewayView, problem: (message: string) => void): Promise<GatewayRoutes> {
  const services = new Map<string, Endpoint[]>();
  const remoteGateways = new Map<string, Endpoint[]>();
  for (const dc of await listDatacenters(dataDir, view.home)) {
    const read = await readCatalog(dataDir, catalogDir(dataDir, dc, view.home));
    for (const p of read.problems) problem(p.message);
    for (const e of read.entries) {
      if (dc !== view.datacenter) {
        if (e.kind !== "mesh-gateway") continue;
        const list = remoteGateways.get(dc.toLowerCase()) ?? [];
        list.push(endpointOf(e));
        remoteGateways.set(dc.toLowerCase(), list);
        continue;
      }
      if (e.kind !== undefined) continue;
      const sni = formatMeshSni({ kind: "service", subset: null, service: e.service.toLowerCase(), namespace: DEFAULTS.namespace, partition: "default", datacenter: view.datacenter.toLowerCase(), trustDomain: view.trustDomain });
      const check = parseMeshSni(sni, view.trustDomain);
      if (check.kind !== "service") {
        problem(`service ${JSON.stringify(e.service)} (instance ${e.id}) is not routed: its name cannot be an SNI label (${check.kind === "refused" ? check.message : check.kind})`);
        continue;
      }
      const list = services.get(sni) ?? [];
      list.push(endpointOf(e));
      services.set(sni, list);
    }
  }
  return GatewayRoutes.compile({ trustDomain: view.trustDomain, datacenter: view.datacenter, services, remoteGateways });
}

function adminHandler(registry: Registry, ready: () => boolean, log: Logger): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" }).end("method not allowed\n");
      return;
    }
    if (path === "/ready") {
      const ok = ready();
      res.writeHead(ok ? 200 : 503, { "content-type": "text/plain" }).end(ok ? "LIVE\n" : "NOT READY\n");
      return;
    }
    if (path === "/stats/prometheus" || path === "/metrics") {
      registry.metrics().then(
        (text) => res.writeHead(200, { "content-type": registry.contentType }).end(text),
        (e: unknown) => {
          log.error("cannot render metrics", { error: e instanceof Error ? e.message : String(e) });
          res.writeHead(500, { "content-type": "text/plain" }).end("metrics unavailable\n");
        },
      );
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" }).end("not found: the gateway's admin API serves /ready, /stats/prometheus and /metrics\n");
  };
}

async function listenHttp(server: Server, at: HostPort, explicit: boolean, flag: string, log: Logger): Promise<AddressInfo> {
  const attempt = (port: number) =>
    new Promise<AddressInfo>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, at.host, () => {
        server.off("error", reject);
        resolve(server.address() as AddressInfo);
      });
    });
  try {
    return await attempt(at.port);
  } catch (e) {
    const code = e instanceof Error && "code" in e ? e.code : undefined;
    if (code === "EADDRINUSE" && !explicit) {
      const a = await attempt(0);
      log.warn("default admin address in use (a sidecar?); using a free port, set -admin-addr to choose", { wanted: `${at.host}:${at.port}`, address: `${a.address}:${a.port}` });
      return a;
    }
    throw new Error(`${flag} ${at.host}:${at.port}: ${code === "EADDRINUSE" ? "address already in use; choose another" : e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
}

async function readView(dataDir: string, datacenter: string | undefined): Promise<GatewayView> {
  await openStateDir(dataDir);
  const file = paths(dataDir).caConfig;
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    // The gateway never makes a CA: a mesh without one has no trust domain to route.
    throw new StateError(file, `cannot be read (${e instanceof Error ? e.message : String(e)}); start a sidecar first (it creates the dev CA), or give the -data-dir the mesh uses`);
  }
  const cfg = parseCaConfig(text, file);
  const dc = datacenter ?? cfg.datacenter;
  return { trustDomain: cfg.trustDomain.toLowerCase(), datacenter: dc, home: cfg.datacenter, catalog: catalogDir(dataDir, dc, cfg.datacenter) };
}

export async function runGateway(cmd: ProxyCommand): Promise<number> {
  const log = createLogger({ level: cmd.logLevel, json: cmd.logJson });
  if (!cmd.gateway) throw new Error("runGateway needs -gateway mesh");
  const bind = cmd.gateway.listen;
  const registry = new Registry();
  const stats = new GatewayStats(registry);
  const accessLog = new AccessLog(cmd.accessLog);
  const servers: Server[] = [];
  const watchers: FSWatcher[] = [];
  let poll: NodeJS.Timeout | null = null;
  let gateway: GatewayListener | null = null;
  let registered: { id: string; catalog: string } | null = null;
  let stopping = false;
  let stopRequested: () => void = () => undefined;
  const stopSignal = new Promise<void>((resolve) => (stopRequested = resolve));
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      log.warn("second signal; exiting without draining", { signal: sig });
      process.exit(1);
    }
    log.info("shutting down", { signal: sig });
    stopRequested();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    const view = await readView(cmd.dataDir, cmd.datacenter);
    let current: GatewayRoutes | null = null;
    // Each problem is said once while it lasts, as the dev control plane does.
    let reported = new Set<string>();
    let seen = new Set<string>();
    const problem = (message: string): void => {
      seen.add(message);
      if (!reported.has(message)) log.warn("gateway configuration problem", { error: message });
    };
    const refresher = new CoalescedRun(async () => {
      seen = new Set();
      try {
        const routes = await readRoutes(cmd.dataDir, view, problem);
        gateway?.apply(routes);
        current = routes;
      } catch (e) {
        // A table that does not compile never replaces a good one.
        problem(`${e instanceof GatewayConfigError || e instanceof StateError ? e.message : String(e)}; ${current ? "the previous routes stay in force" : "the gateway is not serving until it is fixed"}`);
      }
      reported = seen;
    }, () => stopping);
    const refresh = (): void => {
      refresher.run().catch(logRejection(log, "re-reading the catalogs"));
    };
    await refresher.run();
    if (!current) throw new Error(`cannot build the gateway's routes from ${cmd.dataDir}; see the warnings above`);
    const limits = listenerLimits(cmd.limits);
    gateway = await GatewayListener.start(current, { host: bind.host, port: bind.port, stats, log: log.child("gateway"), accessLog, maxConnections: limits.maxConnections, maxPendingHellos: limits.maxTlsHandshakes });
    const addr = gateway.address;
    // The address other datacenters' gateways dial: a wildcard bind is reached on loopback here.
    const address = addr.address === "0.0.0.0" || addr.address === "::" ? "127.0.0.1" : addr.address;
    const id = `${cmd.request.service}-${view.datacenter}-${process.pid}`;
    await registerInstance(cmd.dataDir, { id, service: cmd.request.service, address, port: addr.port, protocol: "tcp", pid: process.pid, meta: { ...cmd.request.meta }, kind: "mesh-gateway" }, view.catalog);
    registered = { id, catalog: view.catalog };
    log.info("registered mesh gateway", { id, datacenter: view.datacenter, address: `${address}:${addr.port}` });
    for (const dir of [paths(cmd.dataDir).catalog, view.catalog]) {
      try {
        watchers.push(watch(dir, { persistent: false }, refresh).on("error", () => undefined));
      } catch {
        // polling below still sees every change
      }
    }
    // Other datacenters' catalogs may appear at any time; the poll finds them and dead processes.
    poll = setInterval(refresh, 500);
    poll.unref();
    const handler = adminHandler(registry, () => !stopping, log);
    if (cmd.admin) {
      const admin = createServer(handler);
      servers.push(admin);
      const a = await listenHttp(admin, cmd.admin, cmd.adminExplicit, "-admin-addr", log);
      log.info("admin API listening", { address: `${a.address}:${a.port}` });
    }
    if (cmd.metrics) {
      const m = createServer(handler);
      servers.push(m);
      const a = await listenHttp(m, cmd.metrics, true, "-metrics-addr", log);
      log.info("metrics listening", { address: `${a.address}:${a.port}`, path: "/metrics" });
    }
    log.info("gateway ready", { mode: "mesh", listen: `${addr.address}:${addr.port}`, datacenter: view.datacenter, trust_domain: view.trustDomain });
    await stopSignal;
    stopping = true;
    // Leave the catalog first so other gateways stop sending here, then let connections finish.
    await deregisterInstance(cmd.dataDir, id, view.catalog);
    registered = null;
    log.info("draining", { open_connections: gateway.openConnections, timeout_ms: cmd.drainTimeoutMs });
    await gateway.drain(cmd.drainTimeoutMs);
    await refresher.settled();
    log.info("stopped");
    return 0;
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    log.error("cannot start", { error: msg });
    process.stderr.write(`meshproxy: ${msg}\n`);
    return e instanceof UnsafeStateDirError ? 2 : 1;
  } finally {
    stopping = true;
    if (poll) clearInterval(poll);
    for (const w of watchers) w.close();
    if (registered) await deregisterInstance(cmd.dataDir, registered.id, registered.catalog).catch(logRejection(log, "deregistering the gateway"));
    await gateway?.close();
    for (const s of servers) s.close();
    accessLog.close();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

