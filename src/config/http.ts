// L7 parts of the Snapshot: routes, splits, retries, timeouts, load balancing, outlier detection
// and circuit-breaker limits. Semantics follow Consul's config entries (service-router,
// service-splitter, service-resolver, service-defaults) and Envoy's behaviour; defaults are
// Envoy's (shared/reference/data-plane-anchors.md §1–§4), in defaults.ts.
export { DEFAULT_LB, DEFAULT_LIMITS, DEFAULT_OUTLIER_DETECTION } from "./defaults.js";

/** `caseInsensitive`: a service-router match's CaseInsensitive (Envoy's `case_sensitive: false`), exact and prefix only. */
export type PathMatch =
  | { readonly kind: "exact"; readonly value: string; readonly caseInsensitive?: boolean }
  | { readonly kind: "prefix"; readonly value: string; readonly caseInsensitive?: boolean }
  | { readonly kind: "regex"; readonly value: string };

/**
 * Consul's header matcher: exactly one of present/exact/prefix/suffix/contains/regex, optionally
 * inverted. `contains` and `ignoreCase` are intention permissions' only (Consul's
 * IntentionHTTPHeaderPermission); `ignoreCase` applies to exact, prefix, suffix and contains.
 */
export interface HeaderMatch {
  readonly name: string;
  readonly present?: boolean;
  readonly exact?: string;
  readonly prefix?: string;
  readonly suffix?: string;
  readonly contains?: string;
  readonly regex?: string;
  readonly invert?: boolean;
  readonly ignoreCase?: boolean;
}

export interface QueryParamMatch {
  readonly name: string;
  readonly present?: boolean;
  readonly exact?: string;
  readonly regex?: string;
}

export interface RouteMatch {
  readonly path?: PathMatch;
  readonly headers: readonly HeaderMatch[];
  readonly queryParams: readonly QueryParamMatch[];
  /** Upper-case; empty means any method. */
  readonly methods: readonly string[];
}

export interface HeaderMutation {
  /** Appended to existing values. */
  readonly add: Readonly<Record<string, string>>;
  /** Replaces existing values. */
  readonly set: Readonly<Record<string, string>>;
  readonly remove: readonly string[];
}

export const NO_HEADER_MUTATION: HeaderMutation = { add: {}, set: {}, remove: [] };

/** Envoy's retry conditions as Consul's RetryOn lists them. */
export type RetryOn = "5xx" | "gateway-error" | "reset" | "connect-failure" | "retriable-4xx" | "refused-stream" | "retriable-status-codes";

export interface RetryPolicy {
  readonly numRetries: number;
  readonly retryOn: readonly RetryOn[];
  readonly retriableStatusCodes: readonly number[];
  /** Fully jittered exponential backoff: base 25 ms, cap 250 ms (Envoy's). */
  readonly backoffBaseMs: number;
  readonly backoffMaxMs: number;
  /** Per-attempt timeout; 0 means the route timeout alone applies. */
  readonly perTryTimeoutMs: number;
}

export const NO_RETRIES: RetryPolicy = { numRetries: 0, retryOn: [], retriableStatusCodes: [], backoffBaseMs: 25, backoffMaxMs: 250, perTryTimeoutMs: 0 };

/** One leg of a split: a cluster (a service or a subset of one) and its weight. */
export interface WeightedCluster {
  readonly cluster: string;
  /** In 1/10000ths (0.01% resolution); the legs of a route sum to 10000. */
  readonly weight: number;
  readonly requestHeaders: HeaderMutation;
  readonly responseHeaders: HeaderMutation;
}

export interface RouteAction {
  readonly splits: readonly WeightedCluster[];
  /** Replaces the matched path prefix (only with a prefix match or the default route). */
  readonly prefixRewrite?: string;
  /** Whole request, all retries included; 0 disables. Envoy's default is 15 s. */
  readonly timeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly retry: RetryPolicy;
  readonly requestHeaders: HeaderMutation;
  readonly responseHeaders: HeaderMutation;
}

export interface Route {
  readonly match: RouteMatch;
  readonly action: RouteAction;
}

/** Routes of one upstream, first match wins. The last is a catch-all. */
export interface RouteTable {
  readonly routes: readonly Route[];
}

/**
 * Envoy's policies as Consul names them, plus `peak_ewma` (meshproxy's: linkerd2-proxy's
 * latency-aware P2C, picking the host with the lower peak-EWMA of response times × load).
 */
export type LbPolicy = "round_robin" | "least_request" | "random" | "ring_hash" | "maglev" | "peak_ewma";

export type HashPolicy =
  | { readonly field: "header"; readonly name: string; readonly terminal: boolean }
  | { readonly field: "cookie"; readonly name: string; readonly terminal: boolean }
  | { readonly field: "query_parameter"; readonly name: string; readonly terminal: boolean }
  | { readonly field: "source_ip"; readonly terminal: boolean };

export interface LoadBalancer {
  readonly policy: LbPolicy;
  /** least_request: hosts sampled per pick (P2C is 2). */
  readonly choiceCount: number;
  readonly ringSize: { readonly min: number; readonly max: number };
  readonly hashPolicies: readonly HashPolicy[];
}


/** Envoy outlier detection, as Consul's PassiveHealthCheck configures it. */
export interface OutlierDetection {
  readonly intervalMs: number;
  readonly consecutive5xx: number;
  readonly enforcingConsecutive5xx: number;
  readonly consecutiveGatewayFailure: number;
  /** Envoy's default is 0: gateway-failure detection off unless asked for. */
  readonly enforcingConsecutiveGatewayFailure: number;
  readonly baseEjectionTimeMs: number;
  readonly maxEjectionTimeMs: number;
  readonly maxEjectionPercent: number;
  /**
   * Below this share of available hosts the balancer ignores health (panic). Consul sets 0
   * for its upstream clusters (panic off); Envoy's own default is 50.
   */
  readonly panicThresholdPercent: number;
}


/** Envoy circuit breakers (per cluster, default priority). */
export interface Limits {
  readonly maxConnections: number;
  readonly maxPendingRequests: number;
  readonly maxRequests: number;
  readonly maxRetries: number;
  /** Retry budget: retries may be at most this share of active + pending requests… */
  readonly retryBudgetPercent: number;
  /** …but at least this many concurrent retries are always allowed. */
  readonly minRetryConcurrency: number;
}


/** An HTTP permission of an L7 intention (Consul's IntentionPermission). */
export interface Permission {
  readonly action: "allow" | "deny";
  readonly path?: PathMatch;
  readonly headers: readonly HeaderMatch[];
  readonly methods: readonly string[];
}
