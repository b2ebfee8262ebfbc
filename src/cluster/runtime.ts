// The live state of one cluster, carried across Snapshots: its hosts with their active-request
// counts, the balancer built over them, outlier detection with its sweep timer, the circuit
// breaker, and where each host's pooled connections live. A new Snapshot updates it in place,
// so ejections, counters and pools survive a weight change.
import type { Limits } from "../config/http.js";
import { DEFAULT_LB } from "../config/defaults.js";
import type { CompiledCluster } from "../compile/cluster.js";
import { PeakEwmaBalancer, createBalancer, hostKey, type Balancer, type HostState, type PickContext } from "./balancer.js";
import { OutlierDetector, availableHosts } from "./outlier.js";
import { CircuitBreaker } from "./limits.js";
import { PoolSet, type PoolTarget } from "./pools.js";
import { BackingOff, recordConnectFailure, recordConnectSuccess, type ConnectBackoffState } from "./connect-backoff.js";
import type { TlsMaterial } from "../tls/contexts.js";
import type { Pool } from "undici";
import type { OriginPool } from "../http1/client.js";
import type { ClusterSnapshotStats } from "../telemetry/cluster-gauges.js";

/**
 * One host of the cluster. The object lives as long as its key stays in the cluster: a Snapshot
 * that keeps the host updates it in place, so requests and connections still in flight, which
 * hold this object, count down the same activeRequests the balancer reads.
 */
export interface ClusterHost extends HostState, ConnectBackoffState {
  endpoint: HostState["endpoint"];
  pool: PoolTarget;
  /** PoolSet key of `pool` under the current TLS material's identityKey. */
  poolKey: string;
  /** The host's connection pool, looked up on first use; dropped when poolKey changes. */
  dispatcher?: Pool | undefined;
  /** The host's HTTP/1 core pool, the same way. */
  http1?: OriginPool | undefined;
}

/**
 * Envoy's mapping of connection outcomes in non-split outlier detection: tcp_proxy reports a
 * refused or failed connect as LocalOriginConnectFailed (counted as a 503) and an established one
 * as LocalOriginConnectSuccessFinal (counted as a 200, which ends a run of failures).
 */
const CONNECT_FAILED = { localOriginFailure: true } as const;
const now = (): number => performance.now();
const CONNECT_SUCCEEDED = { status: 200 } as const;

/** One host as the admin API's /clusters shows it. */
export interface HostStatus {
  readonly id: string;
  readonly host: string;
  readonly port: number;
  /** The control plane's view (catalog health checks). */
  readonly healthy: boolean;
  /** Ejected by outlier detection right now. */
  readonly ejected: boolean;
  /** Length of the current ejection, 0 when not ejected. */
  readonly ejectionTimeMs: number;
  /** How long the balancer still passes the host over after failed connects (connect-backoff.ts), 0 when not. */
  readonly connectBackoffMs: number;
  readonly activeRequests: number;
  readonly meta: Readonly<Record<string, string>>;
}

/** One cluster as /clusters shows it: thresholds, panic mode and every host. */
export interface ClusterStatus {
  readonly name: string;
  readonly service: string;
  readonly sni: string;
  readonly outlierDetection: boolean;
  /** No host usable (all unhealthy or ejected below the panic threshold): Envoy's lb_healthy_panic. */
  readonly panic: boolean;
  readonly limits: {
    readonly maxConnections: number;
    readonly maxPendingRequests: number;
    readonly maxRequests: number;
    /** Envoy's max_retries; applies only without a retry budget (Envoy: a budget overrides it). */
    readonly maxRetries: number;
    /** The retry budget that limits concurrent retries instead, or null when none is set. */
    readonly retryBudget: { readonly budgetPercent: number; readonly minRetryConcurrency: number } | null;
  };
  readonly activeRequests: number;
  readonly hosts: readonly HostStatus[];
}

export class ClusterRuntime {
  private cluster: CompiledCluster;
  private hosts: ClusterHost[] = [];
  private available: readonly ClusterHost[] = [];
  private balancer: Balancer;
  /** Set when the policy is peak_ewma: response times feed it. */
  private ewma: PeakEwmaBalancer | null = null;
  readonly breaker: CircuitBreaker;
  private outlier: OutlierDetector | null = null;
  private sweepTimer: NodeJS.Timeout | null = null;
  private sweepEvery = 0;
  private tls: TlsMaterial;
  /** Which available hosts are backing off after failed connects (connect-backoff.ts). */
  private readonly backingOff = new BackingOff();
  panic = false;

  /** Whether the pools offer h2: fixed for the runtime's life (the proxy replaces a runtime whose protocol changes). */
  readonly http2: boolean;

  constructor(
    cluster: CompiledCluster,
    tls: TlsMaterial,
    private readonly pools: PoolSet,
  ) {
    this.cluster = cluster;
    this.tls = tls;
    this.http2 = cluster.http2;
    this.breaker = new CircuitBreaker(cluster.limits);
    // A placeholder until update() builds the cluster's own over its hosts.
    this.balancer = createBalancer(DEFAULT_LB, []);
    this.update(cluster, tls);
  }

  get name(): string {
    return this.cluster.name;
  }

  get config(): CompiledCluster {
    return this.cluster;
  }

  get limits(): Limits {
    return this.cluster.limits;
  }

  get ejectedCount(): number {
    return this.outlier?.stats.ejectionsActive ?? 0;
  }

  get hostCount(): number {
    return this.hosts.length;
  }

  get detector(): OutlierDetector | null {
    return this.outlier;
  }

  /**
   * Applies a new Snapshot's view of this cluster; keeps per-host counters of hosts that stay.
   * The cluster was compiled (every value checked), so nothing here can fail.
   */
  update(cluster: CompiledCluster, tls: TlsMaterial): void {
    this.cluster = cluster;
    this.tls = tls;
    const limits = cluster.limits;
    this.breaker.update(limits);
    const old = new Map(this.hosts.map((h) => [h.key, h]));
    this.hosts = cluster.endpoints.map((e) => {
      const key = hostKey(e);
      const prev = old.get(key);
      const pool: PoolTarget = {
        host: e.host,
        port: e.port,
        sni: cluster.sni,
        expectedSpiffeId: cluster.expectedSpiffeId,
        connectTimeoutMs: cluster.connectTimeoutMs,
        http2: this.http2,
        maxConnections: limits.maxConnections,
      };
      const poolKey = PoolSet.key(pool, tls);
      if (prev === undefined) return { endpoint: e, key, activeRequests: 0, pool, poolKey, connectFailures: 0, connectRetryAt: 0 };
      // Unhealthy, then healthy again: the control plane saw the instance come back, so the
      // back-off its refusals earned while it was down no longer says anything.
      if (!prev.endpoint.healthy && e.healthy) recordConnectSuccess(prev);
      prev.endpoint = e;
      prev.pool = pool;
      if (prev.poolKey !== poolKey) {
        prev.poolKey = poolKey;
        prev.dispatcher = undefined;
        prev.http1 = undefined;
      }
      return prev;
    });
    const od = cluster.outlierDetection;
    if (od) {
      if (!this.outlier) {
        this.outlier = new OutlierDetector(od);
        this.outlier.onEject = () => this.recompute();
        this.outlier.onUneject = () => this.recompute();
      }
      this.outlier.setConfig(od);
      this.outlier.setHosts(this.hosts.map((h) => h.key));
      if (this.sweepEvery !== od.intervalMs) {
        if (this.sweepTimer) clearInterval(this.sweepTimer);
        this.sweepEvery = od.intervalMs;
        this.sweepTimer = setInterval(() => this.outlier?.sweep(), od.intervalMs);
        this.sweepTimer.unref();
      }
    } else {
      this.stopSweep();
      this.outlier = null;
    }
    const lb = cluster.lb;
    // Peak-EWMA learns from responses: its estimates survive a Snapshot that keeps the hosts.
    if (lb.policy === "peak_ewma" && this.balancer instanceof PeakEwmaBalancer) this.balancer.retain(this.hosts.map((h) => h.key));
    else this.balancer = createBalancer(lb, this.hosts);
    this.ewma = this.balancer instanceof PeakEwmaBalancer ? this.balancer : null;
    this.recompute();
  }

  private recompute(): void {
    const od = this.cluster.outlierDetection;
    // Without outlier detection there is no panic threshold (Consul sets 0 for upstream clusters).
    const r = availableHosts(this.hosts, this.outlier, (h) => h.endpoint.healthy, od === null ? 0 : od.panicThresholdPercent);
    this.available = r.hosts;
    this.panic = r.panic;
    this.backingOff.invalidate();
  }

  /** What the scrape-time gauges report. */
  statsSnapshot(): ClusterSnapshotStats {
    const b = this.breaker.state;
    const limits = this.cluster.limits;
    return {
      name: this.cluster.name,
      membershipTotal: this.hosts.length,
      membershipHealthy: this.panic ? 0 : this.available.length,
      ejectionsActive: this.outlier?.stats.ejectionsActive ?? 0,
      ejectionsEnforcedTotal: this.outlier?.stats.ejectionsTotal ?? 0,
      ejectionsOverflow: this.outlier?.stats.ejectionsOverflow ?? 0,
      activeRequests: b.activeRequests,
      rqOpen: b.activeRequests >= limits.maxRequests,
    };
  }

  /** Per-host state for the admin API; computed on request, nothing kept. */
  hostsSnapshot(): ClusterStatus {
    const l = this.cluster.limits;
    return {
      name: this.cluster.name,
      service: this.cluster.service,
      sni: this.cluster.sni,
      outlierDetection: this.outlier !== null,
      panic: this.panic,
      limits: {
        maxConnections: l.maxConnections,
        maxPendingRequests: l.maxPendingRequests,
        maxRequests: l.maxRequests,
        maxRetries: l.maxRetries,
        retryBudget: l.retryBudgetPercent > 0 ? { budgetPercent: l.retryBudgetPercent, minRetryConcurrency: l.minRetryConcurrency } : null,
      },
      activeRequests: this.breaker.state.activeRequests,
      hosts: this.hosts.map((h) => ({
        id: h.endpoint.id,
        host: h.endpoint.host,
        port: h.endpoint.port,
        healthy: h.endpoint.healthy,
        ejected: this.outlier?.isEjected(h.key) ?? false,
        ejectionTimeMs: this.outlier?.ejectionTimeMs(h.key) ?? 0,
        connectBackoffMs: Math.max(0, Math.round(h.connectRetryAt - performance.now())),
        activeRequests: h.activeRequests,
        meta: h.endpoint.meta,
      })),
    };
  }

  /** Keys of the pools this cluster uses, for PoolSet.retain. */
  poolKeys(): string[] {
    return this.hosts.map((h) => h.poolKey);
  }

  /** A host for one attempt, or null when none is available (all unhealthy, ejected or tried). */
  pick(ctx: PickContext): ClusterHost | null {
    const hosts = this.available;
    if (hosts.length === 0) return null;
    const off = this.backingOff.of(hosts, now);
    // A host neither tried nor backing off first; with none, the tried ones stay the last resort.
    if (off !== null && off.size < hosts.length) {
      const tried = ctx.exclude;
      if (tried === undefined || tried.size === 0) return this.balancer.pick(hosts, { ...ctx, exclude: off });
      const exclude = new Set([...off, ...tried]);
      if (hosts.some((h) => !exclude.has(h.key))) return this.balancer.pick(hosts, { ...ctx, exclude });
    }
    return this.balancer.pick(hosts, ctx);
  }

  /** Healthy-and-not-ejected hosts left, excluding those already tried. */
  hasAvailable(exclude?: ReadonlySet<string>): boolean {
    if (!exclude || exclude.size === 0) return this.available.length > 0;
    return this.available.some((h) => !exclude.has(h.key));
  }

  /** Cached per host until a Snapshot changes what its pool is keyed by (TLS material, limits). */
  poolFor(h: ClusterHost): Pool {
    return (h.dispatcher ??= this.pools.get(h.pool, this.tls));
  }

  /** The HTTP/1 core's pool for `h` (an HTTP/1.1 cluster), cached as poolFor's. */
  http1PoolFor(h: ClusterHost): OriginPool {
    return (h.http1 ??= this.pools.getHttp1(h.pool, this.tls));
  }

  /** A request or connection to `h` starts; pair with end(h). */
  begin(h: ClusterHost): void {
    h.activeRequests++;
  }

  end(h: ClusterHost): void {
    if (h.activeRequests > 0) h.activeRequests--;
  }

  /** One connect attempt's outcome, for outlier detection (TCP and upgrades; pooled HTTP reports per request). */
  reportConnect(h: ClusterHost, ok: boolean): void {
    this.outlier?.reportResult(h.key, ok ? CONNECT_SUCCEEDED : CONNECT_FAILED);
    if (!ok) this.connectFailed(h);
    else this.connectSucceeded(h);
  }

  /** A connect to `h` failed (refused, timed out, wrong identity): the balancer passes it over for a while. */
  connectFailed(h: ClusterHost): void {
    recordConnectFailure(h, performance.now(), Math.random);
    this.backingOff.invalidate();
  }

  private connectSucceeded(h: ClusterHost): void {
    if (h.connectFailures === 0) return;
    recordConnectSuccess(h);
    this.backingOff.invalidate();
  }

  /** Whether response times are wanted (peak_ewma); the router measures only then. */
  get learnsLatency(): boolean {
    return this.ewma !== null;
  }

  /** Time to the response head of one request to `h`. */
  observeLatency(h: ClusterHost, ms: number): void {
    this.ewma?.observe(h.key, ms);
  }

  reportResult(h: ClusterHost, r: { status?: number; localOriginFailure?: boolean }): void {
    this.outlier?.reportResult(h.key, r);
    if (r.status !== undefined) this.connectSucceeded(h);
  }

  /** Why nothing could be picked, for the 503 body and the log. */
  describeUnavailable(): string {
    const total = this.hosts.length;
    const gw = this.cluster.meshGateway;
    if (gw) {
      if (total === 0) return `cluster "${this.name}": no mesh gateway in ${gw.datacenter} for mode ${gw.mode}`;
      return `cluster "${this.name}": no healthy mesh gateway in ${gw.datacenter} (mode ${gw.mode}; ${total} registered: each counts as healthy while it is up and ${this.cluster.service} has a healthy instance in ${this.cluster.datacenter})`;
    }
    if (total === 0) return `cluster "${this.name}": no instances registered`;
    const unhealthy = this.hosts.filter((h) => !h.endpoint.healthy).length;
    const ejected = this.ejectedCount;
    return `cluster "${this.name}": no healthy instances (${total} total, ${unhealthy} unhealthy, ${ejected} ejected by outlier detection)`;
  }

  private stopSweep(): void {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = null;
    this.sweepEvery = 0;
  }

  close(): void {
    this.stopSweep();
  }
}
