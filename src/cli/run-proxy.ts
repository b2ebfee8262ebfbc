// `meshproxy -service ...`: build the control plane the flags select, start the proxy and its
// admin API, and drain cleanly on SIGTERM/SIGINT (run-sidecar.ts).
import { Proxy, ListenerBindError } from "../proxy.js";
import { createLogger } from "../telemetry/log.js";
import { listenerLimits } from "../tcp/admission.js";
import type { ProxyCommand } from "./program.js";
import { runSidecar } from "./run-sidecar.js";

export async function runProxy(cmd: ProxyCommand): Promise<number> {
  // -concurrency N: a primary and N worker processes (run-workers.ts); 1 is this one process.
  if (cmd.concurrency > 1) return (await import("./run-workers.js")).runWorkers(cmd);
  const log = createLogger({ level: cmd.logLevel, json: cmd.logJson, dest: cmd.logDest });
  const limits = listenerLimits(cmd.limits);
  return runSidecar({
    cmd,
    log,
    limits,
    createDataPlane: (controlPlane) => ({
      plane: new Proxy({ controlPlane, logger: log, drainTimeoutMs: cmd.drainTimeoutMs, accessLog: cmd.accessLog, limits, ...(cmd.tracing ? { tracing: cmd.tracing } : {}) }),
      levels: log,
    }),
    unboundListener: (e) => (e instanceof ListenerBindError ? e.listener : null),
  });
}
