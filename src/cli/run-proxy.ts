// `meshproxy -service ...`: build the control plane the flags select, start the proxy and its
// admin API, and drain cleanly on SIGTERM/SIGINT.
import { Proxy, ListenerBindError } from "../proxy.js";
import { DevControlPlane } from "../controlplane/dev/dev.js";
import { StaticControlPlane } from "../controlplane/static/static.js";
import { ControlPlaneError, type ControlPlane } from "../controlplane/controlplane.js";
import { ConsulControlPlane } from "../controlplane/consul/consul.js";
import { AgentClient } from "../controlplane/consul/client.js";
import { AdminServer } from "../admin/server.js";
import { createLogger, type Logger } from "../telemetry/log.js";
import type { ProxyCommand } from "./program.js";

function controlPlaneFor(cmd: ProxyCommand, log: Logger): ControlPlane {
  if (cmd.configFile !== undefined) return new StaticControlPlane({ file: cmd.configFile, logger: log });
  if (cmd.consul) {
    const c = cmd.consul;
    let client: AgentClient;
    try {
      client = new AgentClient({ httpAddr: c.httpAddr, ...(c.token ? { token: c.token } : {}), ...(c.datacenter ? { datacenter: c.datacenter } : {}), tls: c.tls });
    } catch (e) {
      throw new ControlPlaneError("consul", (e as Error).message, true);
    }
    return new ConsulControlPlane({
      client,
      logger: log,
      request: cmd.request,
      // As Consul's CLI: -proxy-id (or CONNECT_PROXY_ID) selects agent mode even next to -service.
      ...(cmd.request.proxyId ? { proxyId: cmd.request.proxyId } : {}),
      ...(cmd.sidecarFor ? { sidecarFor: cmd.sidecarFor } : {}),
      ...(c.register ? { register: c.registerId ? { idSuffix: c.registerId } : {} } : {}),
    });
  }
  return new DevControlPlane({ dataDir: cmd.dataDir, request: cmd.request, logger: log });
}

function flagFor(e: ListenerBindError, cmd: ProxyCommand): string {
  if (cmd.configFile !== undefined) return `${cmd.configFile}: ${e.listener === "public" ? "public_listener.bind" : "upstreams[].bind"}`;
  return e.listener === "public" ? "-listen" : "-upstream";
}

async function startAdmin(proxy: Proxy, cmd: ProxyCommand, log: Logger): Promise<AdminServer | null> {
  if (!cmd.admin) return null;
  const admin = new AdminServer(proxy);
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
    throw new Error(`-admin-addr ${where}: ${err.code === "EADDRINUSE" ? "address already in use (another sidecar's admin API?); choose another with -admin-addr" : err.message}`);
  }
}

export async function runProxy(cmd: ProxyCommand): Promise<number> {
  const log = createLogger({ level: cmd.logLevel, json: cmd.logJson });
  let proxy: Proxy | null = null;
  let admin: AdminServer | null = null;
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      log.warn("second signal; exiting without draining", { signal: sig });
      process.exit(1);
    }
    log.info("shutting down", { signal: sig });
    void proxy?.stop();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    proxy = new Proxy({ controlPlane: controlPlaneFor(cmd, log), logger: log, drainTimeoutMs: cmd.drainTimeoutMs });
    const stopped = new Promise<void>((resolve) => proxy!.once("stopped", resolve));
    admin = await startAdmin(proxy, cmd, log);
    if (signals === 0) await proxy.start();
    if (signals > 0) await proxy.stop();
    await stopped;
    log.info("stopped");
    return 0;
  } catch (e) {
    const msg = e instanceof ListenerBindError ? `${flagFor(e, cmd)}: ${e.message}` : (e as Error).message;
    log.error("cannot start", { error: msg });
    process.stderr.write(`meshproxy: ${msg}\n`);
    await proxy?.stop().catch(() => {});
    return 1;
  } finally {
    admin?.close();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}
