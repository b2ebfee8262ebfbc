// Envoy's circuit breakers for one cluster, default priority
// (shared/reference/data-plane-anchors.md §2): plain counters against thresholds, refused
// acquisitions counted as overflows. Local to this proxy, like Envoy's.
import type { Limits } from "../config/http.js";

export interface BreakerState {
  activeRequests: number;
  pending: number;
  connections: number;
  activeRetries: number;
  /** upstream_rq_active_overflow (Envoy's newer name; older ones counted these as pending). */
  rqOverflow: number;
  /** upstream_rq_pending_overflow */
  pendingOverflow: number;
  /** upstream_cx_overflow */
  cxOverflow: number;
  /** upstream_rq_retry_overflow */
  retryOverflow: number;
  /**
   * Releases with nothing acquired: the count stays at 0 rather than going negative (which would
   * raise the limit for everyone), and this records that a caller released twice.
   */
  releaseUnderflows: number;
}

type Gauge = "activeRequests" | "pending" | "connections" | "activeRetries";

/**
 * Each successful tryAcquire* must be matched by exactly one release* of the same kind. A retry
 * attempt takes a retry slot (tryAcquireRetry) in addition to the request (and pending) slots any
 * attempt takes, as in Envoy where the router checks the retry breaker and the pool the others.
 */
export class CircuitBreaker {
  private limits: Limits;
  private readonly s: BreakerState = {
    activeRequests: 0,
    pending: 0,
    connections: 0,
    activeRetries: 0,
    rqOverflow: 0,
    pendingOverflow: 0,
    cxOverflow: 0,
    retryOverflow: 0,
    releaseUnderflows: 0,
  };

  constructor(limits: Limits) {
    this.limits = limits;
  }

  /** New thresholds apply to the next acquisitions; what is held stays held. */
  update(limits: Limits): void {
    this.limits = limits;
  }

  get state(): Readonly<BreakerState> {
    return this.s;
  }

  tryAcquireRequest(): boolean {
    if (this.s.activeRequests < this.limits.maxRequests) {
      this.s.activeRequests++;
      return true;
    }
    this.s.rqOverflow++;
    return false;
  }

  releaseRequest(): void {
    this.release("activeRequests");
  }

  tryAcquirePending(): boolean {
    if (this.s.pending < this.limits.maxPendingRequests) {
      this.s.pending++;
      return true;
    }
    this.s.pendingOverflow++;
    return false;
  }

  releasePending(): void {
    this.release("pending");
  }

  tryAcquireConnection(): boolean {
    if (this.s.connections < this.limits.maxConnections) {
      this.s.connections++;
      return true;
    }
    this.s.cxOverflow++;
    return false;
  }

  releaseConnection(): void {
    this.release("connections");
  }

  /** How many retries may run at once right now: the budget, or maxRetries without one. */
  maxRetriesNow(): number {
    const l = this.limits;
    if (l.retryBudgetPercent > 0) {
      // A budget overrides maxRetries: a share of the load in flight, with a floor so a quiet
      // cluster can still retry.
      const budget = Math.floor((l.retryBudgetPercent / 100) * (this.s.activeRequests + this.s.pending));
      return Math.max(l.minRetryConcurrency, budget);
    }
    return l.maxRetries;
  }

  tryAcquireRetry(): boolean {
    if (this.s.activeRetries < this.maxRetriesNow()) {
      this.s.activeRetries++;
      return true;
    }
    this.s.retryOverflow++;
    return false;
  }

  releaseRetry(): void {
    this.release("activeRetries");
  }

  private release(gauge: Gauge): void {
    if (this.s[gauge] > 0) this.s[gauge]--;
    else this.s.releaseUnderflows++;
  }
}
