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

export function registerServerGauges(registry: Registry, server: ServerView, startedAt = Date.now()): void {
  const registers = [registry];
  new Gauge({
    name: "envoy_server_live",
    help: "1 when the proxy is serving (ready and not draining), else 0",
    registers,
    collect() {
      this.set(server.state() === "live" ? 1 : 0);
    },
  });
  new Gauge({
    name: "envoy_server_state",
    help: "0 live, 1 draining, 2 pre-initializing, 3 initializing (Envoy's server.state)",
    registers,
    collect() {
      this.set(SERVER_STATE[server.state()]);
    },
  });
  new Gauge({
    name: "envoy_server_uptime",
    help: "Seconds since the proxy started",
    registers,
    collect() {
      this.set(Math.floor((Date.now() - startedAt) / 1000));
    },
  });
  // One event loop does all the proxying: Envoy's worker count is 1 here.
  new Gauge({ name: "envoy_server_concurrency", help: "Worker threads handling connections", registers }).set(1);
  new Gauge({
    name: "envoy_server_total_connections",
    help: "Connections open on all listeners",
    registers,
    collect() {
      this.set(server.totalConnections());
    },
  });
}
