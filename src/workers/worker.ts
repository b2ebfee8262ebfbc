// One worker of -concurrency N: a whole data plane (public and upstream listeners, clusters,
// pools, outlier detection, its own metrics registry) on its own event loop and heap, fed
// Snapshots by the primary. Nothing per connection is shared with another worker, as Envoy's
// workers share nothing per connection. The primary decides when to drain: a signal sent to the
// whole process group (Ctrl-C in a terminal) is left to it.
import { Counter } from "prom-client";
import { Proxy, ListenerBindError, type ProxyOptions } from "../proxy.js";
import { logRejection, type LevelControl, type Logger } from "../telemetry/log.js";
import { RelayedControlPlane } from "./relayed-control-plane.js";
import { isToWorker, WORKER_CONTROL_PLANE_ENV, WORKER_INDEX_ENV, type FromWorker, type ToWorker } from "./protocol.js";
import type { Metrics } from "../telemetry/metrics.js";
import type { ClusterRequestReading } from "../telemetry/http-stats.js";

function send(m: FromWorker): void {
  // The channel is gone when the primary is: node:cluster then ends this process.
  if (process.connected) process.send?.(m);
}

/**
 * Envoy's per-worker listener stat (listener.<address>.worker_<N>.downstream_cx_total, with the
 * worker as the envoy_worker_id tag): the sum over workers is the listener's count, the split
 * shows how connections spread. Copied from the listener's own counter at scrape time.
 */
function registerWorkerListenerStats(metrics: Metrics, index: string): void {
  const registry = metrics.registry;
  new Counter({
    name: "envoy_listener_worker_downstream_cx_total",
    help: "Downstream connections accepted, per worker (-concurrency)",
    labelNames: ["envoy_listener_address", "envoy_worker_id"],
    registers: [registry],
    async collect() {
      const listener = registry.getSingleMetric("envoy_listener_downstream_cx_total");
      if (!listener) return;
      const values = (await listener.get()).values;
      this.reset();
      for (const v of values) this.inc({ envoy_listener_address: String(v.labels["envoy_listener_address"] ?? ""), envoy_worker_id: index }, v.value);
    },
  });
}

export interface WorkerOptions {
  /** The process's root logger; the worker logs as its child `worker_<index>`. */
  readonly logger: Logger & LevelControl;
  /** The proxy's options but its control plane (the primary's relay) and logger. */
  readonly proxy: Omit<ProxyOptions, "controlPlane" | "logger" | "metrics">;
}

/** Runs this process as a worker until the primary has it drain (or goes away); the exit code. */
export async function runWorker(opts: WorkerOptions): Promise<number> {
  const index = process.env[WORKER_INDEX_ENV] ?? "0";
  const root = opts.logger;
  const log: Logger = root.child(`worker_${index}`);
  const ignoreSignal = (signal: NodeJS.Signals) => log.debug("signal left to the primary, which drains every worker", { signal });
  process.on("SIGINT", ignoreSignal);
  process.on("SIGTERM", ignoreSignal);
  // A terminal's hangup reaches the whole process group: the primary warns and eats it, so do we.
  process.on("SIGHUP", ignoreSignal);
  const cp = new RelayedControlPlane(process.env[WORKER_CONTROL_PLANE_ENV] ?? "relayed");
  const proxy = new Proxy({ ...opts.proxy, controlPlane: cp, logger: log });
  registerWorkerListenerStats(proxy.metrics, index);
  // Each worker writes the -access-log file itself (appending, a line at a time): each reopens
  // it, when the primary forwards SIGUSR1 or when the signal reaches the process group.
  const reopenLogs = (): void => {
    proxy.reopenLogs().then(
      (r) => {
        if (r !== null) log.info("access log reopened", { file: r.file });
      },
      logRejection(log, "reopening the access log", "warn"),
    );
  };
  process.on("SIGUSR1", reopenLogs);
  const stopped = new Promise<void>((resolve) => proxy.once("stopped", resolve));
  proxy.on("snapshot", (s: { version: number }) => send({ t: "applied", version: s.version }));

  let drainAsked = false;
  const onMessage = (m: unknown): void => {
    if (!isToWorker(m)) return;
    handle(m);
  };
  const handle = (m: ToWorker): void => {
    switch (m.t) {
      case "snapshot":
        return cp.deliver(m.snapshot);
      case "drain":
        drainAsked = true;
        return void proxy.stop().catch(logRejection(log, "draining"));
      case "clusters":
        return send({ t: "clusters", id: m.id, clusters: proxy.clusters() });
      case "metrics":
        return void proxy.metrics.registry.getMetricsAsJSON().then(
          (metrics) => send({ t: "metrics", id: m.id, metrics }),
          (e: unknown) => {
            // Logged here; the scrape goes on without this worker rather than waiting for it.
            logRejection(log, "collecting metrics for the primary's scrape")(e);
            send({ t: "metrics", id: m.id, metrics: [] });
          },
        );
      case "readings": {
        const http = proxy.metrics.http;
        const readings: Array<readonly [string, ClusterRequestReading]> = [];
        for (const name of http.clusterNames()) {
          const r = http.reading(name);
          if (r) readings.push([name, r]);
        }
        return send({ t: "readings", id: m.id, readings });
      }
      case "log-level":
        return root.setLevel(m.level);
      case "reopen-logs":
        return reopenLogs();
      case "health-check":
        // The worker's relayed control plane keeps no health check: this is its server state.
        return void proxy.setHealthCheckFailed(m.failed).catch(logRejection(log, "following the primary's health check"));
    }
  };
  process.on("message", onMessage);
  send({ t: "hello" });
  try {
    const addresses = await proxy.start();
    send({ t: "ready", addresses });
    await stopped;
    send({ t: "stopped" });
    return 0;
  } catch (e) {
    // Told to drain before the first Snapshot came: nothing was served, nothing failed.
    if (drainAsked) return 0;
    const msg = e instanceof Error ? e.message : String(e);
    send({ t: "failed", error: msg, listener: e instanceof ListenerBindError ? e.listener : null });
    await proxy.stop().catch(logRejection(log, "stopping after a failed start", "debug"));
    return 1;
  } finally {
    process.off("message", onMessage);
    process.off("SIGINT", ignoreSignal);
    process.off("SIGTERM", ignoreSignal);
    process.off("SIGHUP", ignoreSignal);
    process.off("SIGUSR1", reopenLogs);
    // Closes the IPC channel, so the process can end; the primary reads the exit.
    process.disconnect?.();
  }
}
