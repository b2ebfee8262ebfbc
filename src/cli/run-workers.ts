// `meshproxy -service ... -concurrency N` (N > 1): this process is the primary (control plane,
// admin API, metrics, registration: run-sidecar.ts) and forks N workers of the same command line,
// each of which lands here too and runs the data plane (src/workers/). Exit codes and signals as
// with one process.
import cluster from "node:cluster";
import { createLogger } from "../telemetry/log.js";
import { Metrics } from "../telemetry/metrics.js";
import { listenerLimits } from "../tcp/admission.js";
import { Primary, WorkerStartError } from "../workers/primary.js";
import { runWorker } from "../workers/worker.js";
import type { ProxyCommand } from "./program.js";
import { runSidecar } from "./run-sidecar.js";

export async function runWorkers(cmd: ProxyCommand): Promise<number> {
  const log = createLogger({ level: cmd.logLevel, json: cmd.logJson, dest: cmd.logDest });
  const limits = listenerLimits(cmd.limits);
  if (cluster.isWorker) {
    return runWorker({ logger: log, proxy: { drainTimeoutMs: cmd.drainTimeoutMs, accessLog: cmd.accessLog, limits, ...(cmd.tracing ? { tracing: cmd.tracing } : {}) } });
  }
  return runSidecar({
    cmd,
    log,
    limits,
    createDataPlane: (controlPlane) => {
      const primary = new Primary({ controlPlane, metrics: new Metrics(), log, concurrency: cmd.concurrency, drainTimeoutMs: cmd.drainTimeoutMs, ...(typeof cmd.accessLog === "object" ? { accessLogFile: cmd.accessLog.file } : {}) });
      return { plane: primary, levels: primary.levels(log), gather: () => primary.aggregatedRegistry() };
    },
    unboundListener: (e) => (e instanceof WorkerStartError ? e.listener : null),
  });
}
