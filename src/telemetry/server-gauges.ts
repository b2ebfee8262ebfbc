// Envoy's server.* stats (shared/reference/data-plane-anchors.md §5), read at scrape time, so
// dashboards and alerts built on envoy_server_live and envoy_server_uptime work unchanged.
import { Gauge, type Registry } from "./prom.js";

/** Envoy's server.state values. */
export const SERVER_STATE = { live: 0, draining: 1, preInitializing: 2, initializing: 3 } as const;
export type ServerState = keyof typeof SERVER_STATE;

export interface ServerView {
  state(): ServerState;
  /** Connections open on all listeners. */
  totalConnections(): number;
}

/**
 * With -concurrency N each worker registers these and one scrape aggregates them (prom-client's
 * AggregatorRegistry): live while every worker is (min), the least ready worker's state (max),
 * the oldest worker's uptime (max), concurrency and connections summed (each worker is 1 of N).
 */
export function registerServerGauges(registry: Registry, server: ServerView, startedAt = Date.now()): void {
  const registers = [registry];
  new Gauge({
    name: "envoy_server_live",
    help: "1 when the proxy is serving (ready and not draining), else 0",
    registers,
    aggregator: "min",
    collect() {
      this.set(server.state() === "live" ? 1 : 0);
    },
  });
  new Gauge({
    name: "envoy_server_state",
    help: "0 live, 1 draining, 2 pre-initializing, 3 initializing (Envoy's server.state)",
    registers,
    aggregator: "max",
    collect() {
      this.set(SERVER_STATE[server.state()]);
    },
  });
  new Gauge({
    name: "envoy_server_uptime",
    help: "Seconds since the proxy started",
    registers,
    aggregator: "max",
    collect() {
      this.set(Math.floor((Date.now() - startedAt) / 1000));
    },
  });
  // One event loop per process does the proxying: each counts 1, and with -concurrency N the
  // summed aggregate is N (Envoy's --concurrency).
  new Gauge({ name: "envoy_server_concurrency", help: "Workers (event loops) handling connections", registers, aggregator: "sum" }).set(1);
  new Gauge({
    name: "envoy_server_total_connections",
    help: "Connections open on all listeners",
    registers,
    collect() {
      this.set(server.totalConnections());
    },
  });
}
