// One cluster of a Snapshot, compiled: every default filled from config/defaults.ts and every
// setting the cluster runtime acts on checked, so that installing it (building the balancer,
// the breaker, the outlier detector's timer) cannot fail. A bad value is refused with the field.
import type { Cluster, Endpoint } from "../config/snapshot.js";
import type { HashPolicy, LbPolicy, Limits, LoadBalancer, OutlierDetection } from "../config/http.js";
import { DEFAULT_LB, DEFAULT_LIMITS, DEFAULTS } from "../config/defaults.js";
import { MAGLEV_TABLE_SIZE, hostKey } from "../cluster/balancer.js";
import { SnapshotError, checkInteger, checkPercent, checkTimerMs } from "../config/validate.js";

/** A cluster as the data plane uses it: no optional settings left, nothing left to check. */
export interface CompiledCluster {
  readonly name: string;
  readonly service: string;
  readonly namespace: string;
  readonly datacenter: string;
  readonly sni: string;
  readonly expectedSpiffeId: string;
  readonly endpoints: readonly Endpoint[];
  readonly lb: LoadBalancer;
  /** Null: no outlier detection (the Snapshot set none). */
  readonly outlierDetection: OutlierDetection | null;
  readonly limits: Limits;
  readonly connectTimeoutMs: number;
  /** Clusters to use, in order, when this one has no healthy endpoint left; each one exists. */
  readonly failover: readonly string[];
  /** Reached from an http2/grpc upstream: its pooled connections offer h2. */
  readonly http2: boolean;
  /** Set when the endpoints are mesh gateways (a target in another datacenter): for messages. */
  readonly meshGateway: { readonly mode: "local" | "remote"; readonly datacenter: string } | null;
}

const POLICIES: ReadonlySet<LbPolicy> = new Set(["round_robin", "least_request", "random", "ring_hash", "maglev", "peak_ewma"]);

/**
 * Envoy's upper bound of a ring's size (RingHashLbConfig.maximum_ring_size, le 8M): a ring is
 * built when the Snapshot is installed, and a larger one would take gigabytes or fail to allocate.
 */
export const MAX_RING_SIZE = 8_388_608;

function isPolicy(p: string): p is LbPolicy {
  return POLICIES.has(p as LbPolicy);
}

function compileLb(f: string, lb: LoadBalancer, hosts: number): LoadBalancer {
  const policy: string = lb.policy;
  if (!isPolicy(policy)) throw new SnapshotError(`${f}.policy`, `"${policy}" is not a load-balancing policy (${[...POLICIES].join(", ")})`);
  if (policy === "least_request" && (!Number.isInteger(lb.choiceCount) || lb.choiceCount < 1)) {
    throw new SnapshotError(`${f}.choiceCount`, `${String(lb.choiceCount)} must be an integer >= 1 (Envoy's default is 2)`);
  }
  if (policy === "ring_hash") {
    const { min, max } = lb.ringSize;
    if (!Number.isInteger(min) || !Number.isInteger(max) || min < 1 || max < min) {
      throw new SnapshotError(`${f}.ringSize`, `{min: ${String(min)}, max: ${String(max)}} must be integers with 1 <= min <= max`);
    }
    if (max > MAX_RING_SIZE) throw new SnapshotError(`${f}.ringSize.max`, `${max} is larger than Envoy's limit of ${MAX_RING_SIZE} entries`);
  }
  if (policy === "maglev" && hosts > MAGLEV_TABLE_SIZE) throw new SnapshotError(`${f}.policy`, `maglev places at most ${MAGLEV_TABLE_SIZE} hosts, the cluster has ${hosts}`);
  lb.hashPolicies.forEach((h, i) => checkHashPolicy(`${f}.hashPolicies[${i}]`, h));
  return lb;
}

function checkHashPolicy(f: string, h: HashPolicy): void {
  const field: string = h.field;
  if (h.field === "source_ip") return;
  if (field !== "header" && field !== "cookie" && field !== "query_parameter") {
    throw new SnapshotError(`${f}.field`, `"${field}" is not a hash policy field (header, cookie, query_parameter, source_ip)`);
  }
  if (typeof h.name !== "string" || h.name.length === 0) throw new SnapshotError(`${f}.name`, `a ${field} hash policy needs the ${field}'s name`);
}

function compileLimits(f: string, l: Limits): Limits {
  // Envoy's thresholds are uint32: 0 is allowed (it refuses everything), a fraction or a negative is not.
  checkInteger(`${f}.maxConnections`, l.maxConnections, 0);
  checkInteger(`${f}.maxPendingRequests`, l.maxPendingRequests, 0);
  checkInteger(`${f}.maxRequests`, l.maxRequests, 0);
  checkInteger(`${f}.maxRetries`, l.maxRetries, 0);
  checkPercent(`${f}.retryBudgetPercent`, l.retryBudgetPercent);
  checkInteger(`${f}.minRetryConcurrency`, l.minRetryConcurrency, 0);
  return l;
}

function compileOutlier(f: string, od: OutlierDetection): OutlierDetection {
  // The sweep runs on a timer of this interval: 0 or a value past node's timer range would spin.
  checkTimerMs(`${f}.intervalMs`, od.intervalMs);
  checkInteger(`${f}.consecutive5xx`, od.consecutive5xx, 0);
  checkPercent(`${f}.enforcingConsecutive5xx`, od.enforcingConsecutive5xx);
  checkInteger(`${f}.consecutiveGatewayFailure`, od.consecutiveGatewayFailure, 0);
  checkPercent(`${f}.enforcingConsecutiveGatewayFailure`, od.enforcingConsecutiveGatewayFailure);
  checkTimerMs(`${f}.baseEjectionTimeMs`, od.baseEjectionTimeMs);
  checkTimerMs(`${f}.maxEjectionTimeMs`, od.maxEjectionTimeMs);
  checkPercent(`${f}.maxEjectionPercent`, od.maxEjectionPercent);
  checkPercent(`${f}.panicThresholdPercent`, od.panicThresholdPercent);
  return od;
}

/**
 * One endpoint per address. The runtime keeps a host's state (health, active requests, back-off,
 * ejection) by its address, so two instances at one address were one host whose health was the
 * last one listed: an instance restarted on its port under a new id, next to the dead one's
 * registration not yet removed (critical), was refused as unhealthy. What listens there is one
 * process; it is healthy when any instance registered at that address is.
 */
function oneHostPerAddress(endpoints: readonly Endpoint[]): readonly Endpoint[] {
  const byKey = new Map<string, number>();
  const out: Endpoint[] = [];
  for (const e of endpoints) {
    const at = byKey.get(hostKey(e));
    if (at === undefined) {
      byKey.set(hostKey(e), out.length);
      out.push(e);
    } else if (!out[at]!.healthy && e.healthy) out[at] = e;
  }
  return out.length === endpoints.length ? endpoints : out;
}

/**
 * Fills and checks one cluster. `field` is where it sits in the Snapshot (`clusters[db]`); the
 * cluster's failover names are checked against the other clusters by compileSnapshot.
 */
export function compileCluster(c: Cluster, http2: boolean, field = `clusters[${c.name}]`): CompiledCluster {
  const connectTimeoutMs = c.connectTimeoutMs ?? DEFAULTS.upstreamConnectTimeoutMs;
  checkTimerMs(`${field}.connectTimeoutMs`, connectTimeoutMs);
  const endpoints = oneHostPerAddress(c.endpoints);
  return {
    name: c.name,
    service: c.service,
    namespace: c.namespace,
    datacenter: c.datacenter,
    sni: c.sni,
    expectedSpiffeId: c.expectedSpiffeId,
    endpoints,
    lb: compileLb(`${field}.lb`, c.lb ?? DEFAULT_LB, endpoints.length),
    outlierDetection: c.outlierDetection ? compileOutlier(`${field}.outlierDetection`, c.outlierDetection) : null,
    limits: compileLimits(`${field}.limits`, c.limits ?? DEFAULT_LIMITS),
    connectTimeoutMs,
    failover: c.failover ?? [],
    http2,
    meshGateway: c.meshGateway ?? null,
  };
}
