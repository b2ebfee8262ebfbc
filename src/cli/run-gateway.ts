// `meshproxy -gateway mesh -listen host:port`: a mesh gateway. Its route table comes from a route
// source (the dev state directory's catalogs and config entries, or a Consul agent with
// -http-addr): this datacenter's live service instances and subsets by the SNI their clients
// send, and every other datacenter's live gateways. It registers itself as a mesh-gateway
// (always in the dev catalog; with -register in Consul), answers /ready, /clusters and metrics on
// the admin address, and drains on SIGTERM. It never loads a leaf or the CA key:
// passthrough needs neither, so nothing here can decrypt what crosses it.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { HostAllowList, checkHost, isLoopbackHost } from "../http/browser-guard.js";
import type { AddressInfo } from "node:net";
import { Registry } from "../telemetry/prom.js";
import { createLogger, logRejection, type Logger } from "../telemetry/log.js";
import { AccessLog } from "../telemetry/access-log.js";
import { registerClusterGauges } from "../telemetry/cluster-gauges.js";
import { UnsafeStateDirError } from "../controlplane/dev/permissions.js";
import type { GatewayRouteSource } from "../config/gateway.js";
import type { HostPort } from "../config/snapshot.js";
import { listenerLimits } from "../tcp/admission.js";
import { clustersJson, clustersText } from "../admin/clusters.js";
import { GatewayListener } from "../gateway/listener.js";
import { GatewayRoutes } from "../gateway/routes.js";
import { GatewayStats } from "../gateway/stats.js";
import type { SourceTags } from "../telemetry/consul-tags.js";
import { handleReopenSignals, handleShutdownSignals } from "./signals.js";
import type { ProxyCommand } from "./program.js";

/**
 * `hosts`: the Host names a loopback-bound listener answers (null beyond loopback), as the
 * sidecar's admin API and metrics listener check them: a DNS-rebinding page on the same host
 * would otherwise read the gateway's clusters (its endpoints' addresses) and metrics.
 */
function adminHandler(registry: Registry, ready: () => boolean, gateway: () => GatewayListener | null, log: Logger, hosts: HostAllowList | null): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const wrongHost = hosts ? checkHost(req, hosts) : null;
    if (wrongHost) {
      res.writeHead(wrongHost.status, { "content-type": "text/plain", connection: "close" }).end(`${wrongHost.message}\n`);
      return;
    }
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
    if (path === "/clusters") {
      const statuses = gateway()?.clusterStatuses() ?? [];
      const json = new URLSearchParams((req.url ?? "").split("?")[1] ?? "").get("format") === "json";
      if (json) res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(clustersJson(statuses), null, 2));
      else res.writeHead(200, { "content-type": "text/plain" }).end(clustersText(statuses));
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
    res.writeHead(404, { "content-type": "text/plain" }).end("not found: the gateway's admin API serves /ready, /clusters, /stats/prometheus and /metrics\n");
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

/** The route source the flags select; only the selected one is loaded. */
async function routeSourceFor(cmd: ProxyCommand, closers: Array<() => Promise<void>>): Promise<GatewayRouteSource> {
  const c = cmd.consul;
  if (c) {
    const { AgentClient } = await import("../controlplane/consul/client.js");
    const { ConsulGatewaySource } = await import("../controlplane/consul/gateway-source.js");
    const datacenter = c.datacenter ?? cmd.datacenter;
    const client = new AgentClient({ httpAddr: c.httpAddr, ...(c.token ? { token: c.token } : {}), ...(c.tokenSource ? { tokenSource: c.tokenSource } : {}), ...(datacenter ? { datacenter } : {}), tls: c.tls });
    closers.push(() => client.close());
    return new ConsulGatewaySource({ client, service: cmd.request.service, meta: cmd.request.meta ?? {}, datacenter });
  }
  const { DevGatewaySource } = await import("../controlplane/dev/gateway-source.js");
  return new DevGatewaySource({ dataDir: cmd.dataDir, datacenter: cmd.datacenter, service: cmd.request.service, meta: cmd.request.meta ?? {} });
}

/** A wildcard address is reached on loopback from this host; port 0 means the port it bound. */
function reachable(at: { readonly host: string; readonly port: number }, bound: AddressInfo): { address: string; port: number } {
  const wildcard = at.host === "0.0.0.0" || at.host === "::" || at.host === "";
  return { address: wildcard ? "127.0.0.1" : at.host, port: at.port === 0 ? bound.port : at.port };
}

/**
 * Consul's bootstrap tags a gateway's stats with its own service (`consul connect envoy -gateway
 * mesh -service <name>`: local_cluster and consul_source_service) and the datacenter its agent is
 * in; this gateway routes in the default namespace and partition only.
 */
function gatewaySource(cmd: ProxyCommand, routes: GatewayRoutes): SourceTags {
  return { service: cmd.request.service, namespace: "default", partition: "default", datacenter: routes.datacenter };
}

export async function runGateway(cmd: ProxyCommand): Promise<number> {
  const log = createLogger({ level: cmd.logLevel, json: cmd.logJson, dest: cmd.logDest });
  if (!cmd.gateway) throw new Error("runGateway needs -gateway mesh");
  const gw = cmd.gateway;
  const registry = new Registry();
  const stats = new GatewayStats(registry);
  const accessLog = new AccessLog(cmd.accessLog);
  const servers: Server[] = [];
  let gateway: GatewayListener | null = null;
  let source: GatewayRouteSource | null = null;
  const closers: Array<() => Promise<void>> = [];
  let stopping = false;
  registerClusterGauges(registry, () => gateway?.clusterStats() ?? []);
  const signals = handleShutdownSignals(log);
  // The gateway runs until it is stopped, also while it waits for a first readable table (the
  // route source's polls and watches do not hold the event loop): node would end it with code 13.
  const keepAlive = setInterval(() => undefined, 2 ** 30);
  const reopen = handleReopenSignals(log, async () => {
    await accessLog.reopen();
    return accessLog.path === null ? null : { file: accessLog.path };
  });
  try {
    source = await routeSourceFor(cmd, closers);
    // The newest table that compiled; one that arrives before the listener exists is its first.
    const table: { latest: GatewayRoutes | null } = { latest: null };
    const started = source.start(
      (cfg) => {
        // Throws on a table that cannot be right; the source reports it and keeps the previous one.
        const routes = GatewayRoutes.compile(cfg);
        table.latest = routes;
        stats.setSource(gatewaySource(cmd, routes));
        gateway?.apply(routes);
      },
      (message) => {
        stats.controlPlaneErrors.labels(cmd.consul ? "consul" : "dev", "gateway-routes").inc();
        log.warn("gateway configuration problem", { control_plane: cmd.consul ? "consul" : "dev", error: message });
      },
    );
    // A signal while the first table is still awaited (an agent that never answers) stops the wait.
    const first = await Promise.race([started, signals.requested.then(() => null)]);
    if (first === null) {
      log.info("stopped before the gateway was ready");
      return 0;
    }
    const routes = table.latest ?? GatewayRoutes.compile(first);
    stats.setSource(gatewaySource(cmd, routes));
    const limits = listenerLimits(cmd.limits);
    gateway = await GatewayListener.start(routes, { host: gw.listen.host, port: gw.listen.port, stats, log: log.child("gateway"), accessLog, maxConnections: limits.maxConnections, maxPendingHellos: limits.maxTlsHandshakes });
    const addr = gateway.address;
    const lan = reachable(gw.address ?? { host: addr.address, port: addr.port }, addr);
    const wan = gw.wanAddress ? reachable(gw.wanAddress, addr) : undefined;
    if (gw.register) {
      await source.register({ lan, ...(wan ? { wan } : {}) });
      log.info("registered mesh gateway", { service: cmd.request.service, lan: `${lan.address}:${lan.port}`, ...(wan ? { wan: `${wan.address}:${wan.port}` } : {}) });
    }
    const handler = (at: HostPort) => adminHandler(registry, () => !stopping, () => gateway, log, isLoopbackHost(at.host) ? new HostAllowList(at.host) : null);
    if (cmd.admin) {
      const admin = createServer(handler(cmd.admin));
      servers.push(admin);
      const a = await listenHttp(admin, cmd.admin, cmd.adminExplicit, "-admin-addr", log);
      log.info("admin API listening", { address: `${a.address}:${a.port}` });
    }
    if (cmd.metrics) {
      const m = createServer(handler(cmd.metrics));
      servers.push(m);
      const a = await listenHttp(m, cmd.metrics, true, "-metrics-addr", log);
      log.info("metrics listening", { address: `${a.address}:${a.port}`, path: "/metrics" });
    }
    log.info("gateway ready", { mode: "mesh", listen: `${addr.address}:${addr.port}`, datacenter: routes.datacenter, trust_domain: routes.trustDomain });
    await signals.requested;
    stopping = true;
    // Leave the catalog first so other gateways stop sending here, then let connections finish.
    await source.deregister();
    log.info("draining", { open_connections: gateway.openConnections, timeout_ms: cmd.drainTimeoutMs });
    await gateway.drain(cmd.drainTimeoutMs);
    await source.close();
    log.info("stopped");
    return 0;
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    log.error("cannot start", { error: msg });
    process.stderr.write(`meshproxy: ${msg}\n`);
    return e instanceof UnsafeStateDirError ? 2 : 1;
  } finally {
    stopping = true;
    await source?.close().catch(logRejection(log, "stopping the route source"));
    await source?.deregister().catch(logRejection(log, "deregistering the gateway"));
    await gateway?.close();
    for (const s of servers) s.close();
    for (const close of closers) await close().catch(logRejection(log, "closing the agent client"));
    accessLog.close();
    signals.dispose();
    reopen.dispose();
    clearInterval(keepAlive);
  }
}
