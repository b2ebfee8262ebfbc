// `meshproxy -service ... -concurrency N` (N > 1): this process is the primary (control plane,
// admin API, metrics, registration) and forks N workers of the same command line, each of which
// lands here too and runs the data plane (src/workers/). Exit codes and signals as with one process.
import cluster from "node:cluster";
import { createLogger, logRejection } from "../telemetry/log.js";
import { Metrics } from "../telemetry/metrics.js";
import { MetricsExposition } from "../telemetry/merge.js";
import type { MetricsServer } from "../telemetry/metrics-server.js";
import type { AdminServer } from "../admin/server.js";
import { fileDescriptorLimit, listenerLimits, RESERVED_FDS } from "../tcp/admission.js";
import { UnsafeStateDirError } from "../controlplane/dev/permissions.js";
import { deregisterSidecar } from "../controlplane/dev/sidecars.js";
import { Primary, WorkerStartError } from "../workers/primary.js";
import { runWorker } from "../workers/worker.js";
import type { ProxyCommand } from "./program.js";
import { handleShutdownSignals } from "./signals.js";
import { agentClientFor, controlPlaneFor, flagFor, registerDevSidecar, startAdmin, startConsulMetrics, startMetrics } from "./run-proxy.js";

export async function runWorkers(cmd: ProxyCommand): Promise<number> {
  const log = createLogger({ level: cmd.logLevel, json: cmd.logJson, dest: cmd.logDest });
  const limits = listenerLimits(cmd.limits);
  if (cluster.isWorker) {
    return runWorker({ logger: log, proxy: { drainTimeoutMs: cmd.drainTimeoutMs, accessLog: cmd.accessLog, limits, ...(cmd.tracing ? { tracing: cmd.tracing } : {}) } });
  }
  let primary: Primary | null = null;
  let admin: AdminServer | null = null;
  let metrics: MetricsServer | null = null;
  let exposition: MetricsExposition | null = null;
  let sidecarId: string | null = null;
  const signals = handleShutdownSignals(log, () => {
    primary?.stop().catch(logRejection(log, "shutdown"));
  });
  try {
    const client = agentClientFor(cmd);
    const fds = fileDescriptorLimit();
    if (fds !== null && limits.maxConnections * 2 + RESERVED_FDS > fds) {
      log.warn("-max-connections is more than the file-descriptor limit can hold (two per proxied connection); raise ulimit -n or lower it", { max_connections: limits.maxConnections, fd_limit: fds });
    }
    const own = new Metrics();
    primary = new Primary({ controlPlane: await controlPlaneFor(cmd, log, client), metrics: own, log, concurrency: cmd.concurrency, drainTimeoutMs: cmd.drainTimeoutMs });
    const p = primary;
    const stopped = new Promise<void>((resolve) => p.once("stopped", resolve));
    exposition = new MetricsExposition(own.registry, cmd.appMetricsUrl ? { url: cmd.appMetricsUrl } : null, log, () => p.aggregatedRegistry());
    admin = await startAdmin(p, cmd, log, p.levels(log), exposition);
    if (cmd.metrics) metrics = await startMetrics(exposition, cmd.metrics, "-metrics-addr", log, own.adminRejected);
    if (signals.received === 0) await p.start();
    if (signals.received === 0) sidecarId = await registerDevSidecar(cmd, admin, log);
    if (signals.received === 0 && !cmd.metrics && client && (cmd.request.proxyId || cmd.sidecarFor)) metrics = await startConsulMetrics(client, cmd, exposition, log, own.adminRejected);
    if (signals.received > 0) await p.stop();
    await stopped;
    log.info("stopped");
    return 0;
  } catch (e) {
    const msg = e instanceof WorkerStartError && e.listener !== null ? `${flagFor({ listener: e.listener }, cmd)}: ${e.message}` : e instanceof Error ? e.message : String(e);
    log.error("cannot start", { error: msg });
    process.stderr.write(`meshproxy: ${msg}\n`);
    await primary?.stop().catch(logRejection(log, "stopping after a failed start", "debug"));
    return e instanceof UnsafeStateDirError ? 2 : 1;
  } finally {
    if (sidecarId !== null) await deregisterSidecar(cmd.dataDir, sidecarId).catch(logRejection(log, "removing the sidecar's admin registration"));
    admin?.close();
    metrics?.close();
    await exposition?.close();
    signals.dispose();
  }
}
