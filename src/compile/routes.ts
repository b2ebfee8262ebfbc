// The route table of one HTTP upstream, compiled: matchers (regexes through RE2), header
// mutations, retry policies and split weights are checked and prepared once per Snapshot, so a
// request only matches, draws a leg and reads numbers. A bad route is refused with its field.
import type { Route, RouteTable, RetryOn, WeightedCluster } from "../config/http.js";
import { DEFAULTS } from "../config/defaults.js";
import { SnapshotError, checkInteger, checkOptionalTimerMs, checkTimerMs } from "../config/validate.js";
import { CompiledRoutes, RouteCompileError } from "../http/route-match.js";
import { CompiledRetry } from "../http/retry.js";
import { isEmptyMutation } from "../http/headers.js";

/** What a request that matched `route` needs, computed once. */
export interface CompiledRoute {
  readonly route: Route;
  readonly retry: CompiledRetry;
  /** Cumulative weights of the split legs, for one random draw per request. */
  readonly cumulative: Int32Array;
  readonly hasReqMutations: boolean;
  readonly hasResMutations: boolean;
  /** The leg an upgraded (long-lived) connection takes: the heaviest, the first of equals. */
  readonly upgradeLeg: WeightedCluster;
  /** How long an upgrade waits for the 101: the route timeout, or Envoy's 15 s when it has none. */
  readonly upgradeResponseTimeoutMs: number;
}

/** A RouteTable ready for requests. */
export interface CompiledRouteTable {
  readonly matcher: CompiledRoutes;
  /** In table order: the matcher's index of a route is its index here. */
  readonly routes: readonly CompiledRoute[];
}

const RETRY_ON: ReadonlySet<RetryOn> = new Set(["5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream", "retriable-status-codes"]);

function compileAction(f: string, route: Route, clusterExists: (name: string) => boolean): CompiledRoute {
  const a = route.action;
  if (a.splits.length === 0) throw new SnapshotError(`${f}.action.splits`, "a route needs at least one cluster to send requests to");
  const cumulative = new Int32Array(a.splits.length);
  let sum = 0;
  let upgradeLeg = a.splits[0]!;
  a.splits.forEach((s, i) => {
    const sf = `${f}.action.splits[${i}]`;
    if (!clusterExists(s.cluster)) throw new SnapshotError(`${sf}.cluster`, `"${s.cluster}" is not a cluster of this Snapshot`);
    // In 1/10000ths; the sum must fit the Int32Array of cumulative weights.
    checkInteger(`${sf}.weight`, s.weight, 0);
    if (s.weight > 10_000) throw new SnapshotError(`${sf}.weight`, `${s.weight} is more than 10000 (100%)`);
    cumulative[i] = sum += s.weight;
    if (s.weight > upgradeLeg.weight) upgradeLeg = s;
  });
  if (sum === 0) throw new SnapshotError(`${f}.action.splits`, "the weights add up to 0: no leg could ever be chosen");
  checkOptionalTimerMs(`${f}.action.timeoutMs`, a.timeoutMs);
  checkOptionalTimerMs(`${f}.action.idleTimeoutMs`, a.idleTimeoutMs);
  const r = a.retry;
  checkInteger(`${f}.action.retry.numRetries`, r.numRetries, 0);
  r.retryOn.forEach((on, i) => {
    if (!RETRY_ON.has(on)) throw new SnapshotError(`${f}.action.retry.retryOn[${i}]`, `"${String(on)}" is not a retry condition (${[...RETRY_ON].join(", ")})`);
  });
  r.retriableStatusCodes.forEach((code, i) => {
    if (!Number.isInteger(code) || code < 100 || code > 599) throw new SnapshotError(`${f}.action.retry.retriableStatusCodes[${i}]`, `${String(code)} is not an HTTP status code`);
  });
  checkTimerMs(`${f}.action.retry.backoffBaseMs`, r.backoffBaseMs);
  checkTimerMs(`${f}.action.retry.backoffMaxMs`, r.backoffMaxMs);
  if (r.backoffMaxMs < r.backoffBaseMs) throw new SnapshotError(`${f}.action.retry.backoffMaxMs`, `${r.backoffMaxMs} is less than backoffBaseMs (${r.backoffBaseMs})`);
  checkOptionalTimerMs(`${f}.action.retry.perTryTimeoutMs`, r.perTryTimeoutMs);
  return {
    route,
    retry: new CompiledRetry(r),
    cumulative,
    hasReqMutations: !isEmptyMutation(a.requestHeaders) || a.splits.some((s) => !isEmptyMutation(s.requestHeaders)),
    hasResMutations: !isEmptyMutation(a.responseHeaders) || a.splits.some((s) => !isEmptyMutation(s.responseHeaders)),
    upgradeLeg,
    upgradeResponseTimeoutMs: a.timeoutMs > 0 ? a.timeoutMs : DEFAULTS.upgradeResponseTimeoutMs,
  };
}

/**
 * Compiles `table`; `field` is where it sits (`upstreams[api].routes`). Every split must name a
 * cluster of the same Snapshot: a route to nowhere is a control-plane bug, refused whole rather
 * than answered 503 per request.
 */
export function compileRouteTable(field: string, table: RouteTable, clusterExists: (name: string) => boolean): CompiledRouteTable {
  let matcher: CompiledRoutes;
  try {
    matcher = new CompiledRoutes(table);
  } catch (e) {
    if (e instanceof RouteCompileError) throw new SnapshotError(`${field}[${e.routeIndex}].${e.field}`, e.reason);
    throw e;
  }
  const routes = table.routes.map((route, i) => compileAction(`${field}[${i}]`, route, clusterExists));
  return { matcher, routes };
}
