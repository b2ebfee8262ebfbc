// The start sequence every sidecar runs, whatever runs its data plane (one process: the Proxy;
// -concurrency N: the Primary over its workers): choose the control plane the flags select, start
// the data plane, the admin API and metrics, list the sidecar in the dev state directory, drain
// cleanly on SIGTERM/SIGINT, and turn a failed start into an exit code.
import { ControlPlaneError, type ControlPlane } from "../controlplane/controlplane.js";
import { UnsafeStateDirError } from "../controlplane/dev/permissions.js";
import { AgentClient } from "../controlplane/consul/client.js";
import { createControlPlane, devChoice, type ControlPlaneChoice } from "../controlplane/select.js";
import { AdminServer, type AdminTarget } from "../admin/server.js";
import { logRejection, type LevelControl, type Logger } from "../telemetry/log.js";
import { MetricsExposition } from "../telemetry/merge.js";
import { MetricsServer } from "../telemetry/metrics-server.js";
import type { Registry } from "../telemetry/prom.js";
import type { HostPort } from "../config/snapshot.js";
import type { Metrics } from "../telemetry/metrics.js";
import { consulPrometheusBindAddr } from "./consul-metrics-addr.js";
import { fileDescriptorLimit, RESERVED_FDS, type ListenerLimits } from "../tcp/admission.js";
import type { ProxyCommand } from "./program.js";
import { handleReopenSignals, handleShutdownSignals, type ReopenedLog } from "./signals.js";
import { deregisterSidecar, registerSidecar } from "../controlplane/dev/sidecars.js";
import { ownProcess } from "../controlplane/dev/process-identity.js";

function agentClientFor(cmd: ProxyCommand): AgentClient | null {
  const c = cmd.consul;
  if (!c || cmd.configFile !== undefined) return null;
  try {
    return new AgentClient({ httpAddr: c.httpAddr, ...(c.token ? { token: c.token } : {}), ...(c.tokenSource ? { tokenSource: c.tokenSource } : {}), ...(c.datacenter ? { datacenter: c.datacenter } : {}), tls: c.tls });
  } catch (e) {
    throw new ControlPlaneError("consul", e instanceof Error ? e.message : String(e), true);
  }
}

/** The CLI's choice, made by flags: -config-file, then -http-addr (or CONSUL_HTTP_ADDR), then the dev state directory. */
function controlPlaneFor(cmd: ProxyCommand, log: Logger, client: AgentClient | null): Promise<ControlPlane> {
  if (cmd.configFile !== undefined) return createControlPlane({ kind: "static", file: cmd.configFile }, cmd.request, log);
  if (cmd.consul && client) {
    const c = cmd.consul;
    const choice: ControlPlaneChoice = {
      kind: "consul",
      agent: { httpAddr: c.httpAddr },
      ...(cmd.request.proxyId ? { proxyId: cmd.request.proxyId } : {}),
      ...(cmd.sidecarFor ? { sidecarFor: cmd.sidecarFor } : {}),
      ...(c.register ? { register: c.registerId ? { idSuffix: c.registerId } : {} } : {}),
    };
    return createControlPlane(choice, cmd.request, log, client);
  }
  return createControlPlane(devChoice(cmd.dataDir, cmd.datacenter), cmd.request, log);
}

function flagFor(e: { readonly listener: string }, cmd: ProxyCommand): string {
  if (cmd.configFile !== undefined) return `${cmd.configFile}: ${e.listener === "public" ? "public_listener.bind" : "upstreams[].bind"}`;
  return e.listener === "public" ? "-listen" : "-upstream";
}

async function startAdmin(target: AdminTarget, cmd: ProxyCommand, log: Logger, levels: LevelControl, exposition: MetricsExposition): Promise<AdminServer | null> {
  if (!cmd.admin) return null;
  const admin = new AdminServer(target, { exposition, logLevel: levels, log: log.child("admin") });
  try {
    const a = await admin.listen(cmd.admin.host, cmd.admin.port);
    log.info("admin API listening", { address: `${a.address}:${a.port}` });
    return admin;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const where = `${cmd.admin.host}:${cmd.admin.port}`;
    if (err.code === "EADDRINUSE" && !cmd.adminExplicit) {
      // Several sidecars on one machine all default to 19000; only an explicit address is a promise.
      const a = await admin.listen(cmd.admin.host, 0);
      log.warn("default admin address in use (another sidecar?); using a free port, set -admin-addr to choose", { wanted: where, address: `${a.address}:${a.port}` });
      return admin;
    }
    throw new Error(`-admin-addr ${where}: ${err.code === "EADDRINUSE" ? "address already in use (another sidecar's admin API?); choose another with -admin-addr" : err.message}`, { cause: e });
  }
}

/** Binds the metrics listener; `source` names the setting that chose the address, for the error. */
async function startMetrics(exposition: MetricsExposition, at: HostPort, source: string, log: Logger, refused: Metrics["adminRejected"]): Promise<MetricsServer> {
  const server = new MetricsServer(exposition, refused);
  try {
    const a = await server.listen(at.host, at.port);
    log.info("metrics listening", { address: `${a.address}:${a.port}`, path: "/metrics" });
    return server;
  } catch (e) {
    const inUse = e instanceof Error && "code" in e && e.code === "EADDRINUSE";
    const why = inUse ? "address already in use; choose another" : e instanceof Error ? e.message : String(e);
    throw new Error(`${source} ${at.host}:${at.port}: ${why}`, { cause: e });
  }
}

/**
 * Consul agent mode without -metrics-addr: the registration may ask for a listener. Read once the
 * proxy runs (the registration then exists); a failure here costs the listener, not the proxy,
 * and the admin API still serves the same metrics.
 */
async function startConsulMetrics(client: AgentClient, cmd: ProxyCommand, exposition: MetricsExposition, log: Logger, refused: Metrics["adminRejected"]): Promise<MetricsServer | null> {
  try {
    const at = await consulPrometheusBindAddr(client, cmd.request.proxyId, cmd.sidecarFor);
    return at ? await startMetrics(exposition, at, "Proxy.Config.envoy_prometheus_bind_addr", log, refused) : null;
  } catch (e) {
    log.error("metrics listener not started; metrics stay available on the admin API at /stats/prometheus", { error: e instanceof Error ? e.message : String(e) });
    return null;
  }
}

/**
 * Dev control plane: every sidecar, with or without a public listener, lists its admin address
 * under <data-dir>/sidecars/, so `meshproxy canary` can read what each caller saw. Not fatal:
 * the proxy serves without it.
 */
async function registerDevSidecar(cmd: ProxyCommand, admin: AdminServer | null, log: Logger): Promise<string | null> {
  const at = admin?.address();
  if (cmd.consul || cmd.configFile !== undefined || !at) return null;
  const id = cmd.request.proxyId ?? `${cmd.request.service}-sidecar-proxy-${process.pid}`;
  const host = at.address === "0.0.0.0" || at.address === "::" ? "127.0.0.1" : at.address.includes(":") ? `[${at.address}]` : at.address;
  try {
    await registerSidecar(cmd.dataDir, { id, service: cmd.request.service, admin: `${host}:${at.port}`, ...ownProcess() });
    return id;
  } catch (e) {
    log.warn("could not list this sidecar's admin address in the state directory; meshproxy canary will not see its figures", { error: e instanceof Error ? e.message : String(e) });
    return null;
  }
}

/** What runs the data plane: the Proxy itself, or under -concurrency N the Primary over its workers. */
export interface DataPlane extends AdminTarget {
  /** Resolves once the data plane serves the first Snapshot; rejects when a listener cannot bind. */
  start(): Promise<unknown>;
  /** SIGUSR1: reopen the -access-log file; resolves with what was reopened, or null when nothing here writes one. */
  reopenLogs?(): Promise<ReopenedLog | null>;
  /** "stopped" is emitted once stop() has drained everything. */
  once(event: "stopped", listener: () => void): unknown;
}

/** A data plane, made over the control plane, with what the admin API and metrics read from it. */
export interface DataPlaneParts {
  readonly plane: DataPlane;
  /** What POST /logging sets. */
  readonly levels: LevelControl;
  /** What a scrape renders; absent: the plane's own registry. */
  readonly gather?: () => Promise<Registry>;
}

export interface SidecarStart {
  readonly cmd: ProxyCommand;
  readonly log: Logger;
  /** The limits the data plane enforces; checked here against the file-descriptor limit. */
  readonly limits: ListenerLimits;
  /** Makes the data plane (not started yet) over the control plane the flags chose. */
  readonly createDataPlane: (controlPlane: ControlPlane) => DataPlaneParts;
  /** The listener a failed start could not bind, so the error can name the flag that chose its address; null: not a bind failure. */
  readonly unboundListener: (e: unknown) => string | null;
}

/** Runs the sidecar until it is stopped; resolves with the exit code. */
export async function runSidecar({ cmd, log, limits, createDataPlane, unboundListener }: SidecarStart): Promise<number> {
  let plane: DataPlane | null = null;
  let admin: AdminServer | null = null;
  let metrics: MetricsServer | null = null;
  let exposition: MetricsExposition | null = null;
  let sidecarId: string | null = null;
  const signals = handleShutdownSignals(log, () => {
    plane?.stop().catch(logRejection(log, "shutdown"));
  });
  // SIGHUP is eaten with a warning; SIGUSR1 reopens the access log (the workers' under -concurrency).
  const reopen = handleReopenSignals(log, async () => (await plane?.reopenLogs?.()) ?? null);
  // A sidecar runs until it is stopped, even when nothing else holds the event loop: no admin API
  // (-admin-addr ""), no listener (only -service), or waiting for a configuration to be fixed
  // (the watches' polls do not hold it). Without this node ends with code 13, mid-await.
  const keepAlive = setInterval(() => undefined, 2 ** 30);
  try {
    const client = agentClientFor(cmd);
    const fds = fileDescriptorLimit();
    if (fds !== null && limits.maxConnections * 2 + RESERVED_FDS > fds) {
      log.warn("-max-connections is more than the file-descriptor limit can hold (two per proxied connection); raise ulimit -n or lower it", { max_connections: limits.maxConnections, fd_limit: fds });
    }
    const parts = createDataPlane(await controlPlaneFor(cmd, log, client));
    const p = parts.plane;
    plane = p;
    const stopped = new Promise<void>((resolve) => p.once("stopped", resolve));
    exposition = new MetricsExposition(p.metrics.registry, cmd.appMetricsUrl ? { url: cmd.appMetricsUrl } : null, log, parts.gather);
    admin = await startAdmin(p, cmd, log, parts.levels, exposition);
    if (cmd.metrics) metrics = await startMetrics(exposition, cmd.metrics, "-metrics-addr", log, p.metrics.adminRejected);
    // Listed before "proxy ready": a tool started on that line (meshproxy canary) finds every
    // sidecar. A start that fails removes the listing again (finally).
    if (signals.received === 0) sidecarId = await registerDevSidecar(cmd, admin, log);
    if (signals.received === 0) await p.start();
    if (signals.received === 0 && !cmd.metrics && client && (cmd.request.proxyId || cmd.sidecarFor)) metrics = await startConsulMetrics(client, cmd, exposition, log, p.metrics.adminRejected);
    if (signals.received > 0) await p.stop();
    await stopped;
    log.info("stopped");
    return 0;
  } catch (e) {
    const listener = unboundListener(e);
    const why = e instanceof Error ? e.message : String(e);
    const msg = listener !== null ? `${flagFor({ listener }, cmd)}: ${why}` : why;
    log.error("cannot start", { error: msg });
    process.stderr.write(`meshproxy: ${msg}\n`);
    await plane?.stop().catch(logRejection(log, "stopping after a failed start", "debug"));
    // A state directory others could write is a setup mistake to fix, like a bad flag: 2.
    return e instanceof UnsafeStateDirError ? 2 : 1;
  } finally {
    clearInterval(keepAlive);
    if (sidecarId !== null) await deregisterSidecar(cmd.dataDir, sidecarId).catch(logRejection(log, "removing the sidecar's admin registration"));
    admin?.close();
    metrics?.close();
    await exposition?.close();
    signals.dispose();
    reopen.dispose();
  }
}
