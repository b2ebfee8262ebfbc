// prom-client's metric classes and process metrics, without the rest of the package. Its index
// also loads Summary (with tdigest and bintrees), the Pushgateway client, the cluster aggregator
// and, through its process_cpu_* collector, all of @opentelemetry/api (44 modules, for
// exemplars we never enable): ~1.5–2 MB of RSS on an idle sidecar (bench/PERF-LOG.md,
// 2026-12-02 memory). The classes are the very ones the index exports (the same files, one
// module cache), so a Registry from "prom-client" and these mix freely.
import { createRequire } from "node:module";
import type * as PromClient from "prom-client";

/** A collector from prom-client/lib/metrics: registers its metrics on the registry. */
type ProcessCollector = (registry: PromClient.Registry, config: { readonly eventLoopMonitoringPrecision: number }) => void;

/** `require` as typed for the prom-client files loaded through it: what prom-client declares for each. */
interface PromClientRequire {
  (id: "prom-client/lib/registry"): typeof PromClient.Registry;
  (id: "prom-client/lib/counter"): typeof PromClient.Counter;
  (id: "prom-client/lib/gauge"): typeof PromClient.Gauge;
  (id: "prom-client/lib/histogram"): typeof PromClient.Histogram;
  (id: `prom-client/lib/metrics/${string}`): ProcessCollector;
}
const requirePromClient: PromClientRequire = createRequire(import.meta.url);

export const Registry = requirePromClient("prom-client/lib/registry");
export const Counter = requirePromClient("prom-client/lib/counter");
export const Gauge = requirePromClient("prom-client/lib/gauge");
export const Histogram = requirePromClient("prom-client/lib/histogram");
export type Registry = PromClient.Registry;
export type Counter<T extends string = string> = PromClient.Counter<T>;
export type Gauge<T extends string = string> = PromClient.Gauge<T>;
export type Histogram<T extends string = string> = PromClient.Histogram<T>;

/** prom-client's default collectors (lib/defaultMetrics.js) other than process_cpu_*, in its order. */
const COLLECTORS = ["processStartTime", "osMemoryHeap", "processOpenFileDescriptors", "processMaxFileDescriptors", "eventLoopLag", "processResources", "processHandles", "processRequests", "heapSizeAndUsed", "heapSpacesSizeAndUsed", "version", "gc"] as const;

/**
 * The process_* and nodejs_* families prom-client's collectDefaultMetrics registers, under the
 * same names and help: prom-client's own collectors, and process_cpu_* counted here the way its
 * collector counts them without exemplars (the only reason it loads @opentelemetry/api).
 */
export function collectProcessMetrics(registry: Registry): void {
  processCpu(registry);
  for (const name of COLLECTORS) requirePromClient(`prom-client/lib/metrics/${name}`)(registry, { eventLoopMonitoringPrecision: 10 });
}

function processCpu(registry: Registry): void {
  const registers = [registry];
  let last = process.cpuUsage();
  // Registered first, as prom-client does: its collect() sets all three at each scrape.
  const user = new Counter({
    name: "process_cpu_user_seconds_total",
    help: "Total user CPU time spent in seconds.",
    registers,
    collect() {
      const now = process.cpuUsage();
      const userMicros = now.user - last.user;
      const systemMicros = now.system - last.system;
      last = now;
      user.inc(userMicros / 1e6);
      system.inc(systemMicros / 1e6);
      both.inc((userMicros + systemMicros) / 1e6);
    },
  });
  const system = new Counter({ name: "process_cpu_system_seconds_total", help: "Total system CPU time spent in seconds.", registers });
  const both = new Counter({ name: "process_cpu_seconds_total", help: "Total user and system CPU time spent in seconds.", registers });
}
