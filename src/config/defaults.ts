// Every default of the data plane, in one table: what a Snapshot leaves out is filled from here
// once, when the Snapshot is compiled (src/compile/), never with `??` where a value is used.
// The values are the ones people already know: Consul's built-in proxy, Envoy's tcp_proxy,
// router and cluster defaults (shared/reference/data-plane-anchors.md §1–§4).
import type { Limits, LoadBalancer, OutlierDetection } from "./http.js";

/** Envoy's round robin; P2C for least_request; Envoy's ring sizes (1,024 .. 8M). */
export const DEFAULT_LB: LoadBalancer = { policy: "round_robin", choiceCount: 2, ringSize: { min: 1024, max: 8_388_608 }, hashPolicies: [] };

/** Envoy's outlier-detection defaults, with Consul's panic threshold for upstream clusters (0). */
export const DEFAULT_OUTLIER_DETECTION: OutlierDetection = {
  intervalMs: 10_000,
  consecutive5xx: 5,
  enforcingConsecutive5xx: 100,
  consecutiveGatewayFailure: 5,
  enforcingConsecutiveGatewayFailure: 0,
  baseEjectionTimeMs: 30_000,
  maxEjectionTimeMs: 300_000,
  maxEjectionPercent: 10,
  panicThresholdPercent: 0,
};

/** Envoy's circuit-breaker thresholds (per cluster, default priority). */
export const DEFAULT_LIMITS: Limits = {
  maxConnections: 1024,
  maxPendingRequests: 1024,
  maxRequests: 1024,
  maxRetries: 3,
  retryBudgetPercent: 20,
  // Envoy's floor is 3; bursts of a handful of requests to a host that has just started failing
  // exceed it before outlier detection reacts. 10 is linkerd2-proxy's floor (per second there).
  minRetryConcurrency: 10,
};

/** Defaults people already know: Consul's built-in proxy and Envoy's tcp_proxy. */
export const DEFAULTS = {
  namespace: "default",
  /** Consul Enterprise's admin partition outside any other (and Consul CE's only one). */
  partition: "default",
  datacenter: "dc1",
  handshakeTimeoutMs: 10_000,
  localConnectTimeoutMs: 1_000,
  /** Envoy's cluster connect_timeout as Consul sets it (5 s), for upstreams and clusters alike. */
  upstreamConnectTimeoutMs: 5_000,
  /** Envoy tcp_proxy idle_timeout. */
  idleTimeoutMs: 3_600_000,
  /** Envoy's route timeout: how long the local app may take to answer one inbound request. */
  requestTimeoutMs: 15_000,
  /**
   * How long an upgrade (WebSocket) waits for the upstream's 101 when its route has no timeout
   * (0): Envoy's route timeout, which covers an upgrade until the response head arrives.
   */
  upgradeResponseTimeoutMs: 15_000,
  drainTimeoutMs: 15_000,
  adminAddr: { host: "127.0.0.1", port: 19000 },
  leafTtlMs: 72 * 3600 * 1000,
} as const;
