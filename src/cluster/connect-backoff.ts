// Connect back-off: a host that refused a connection (or could not be reached, or answered with
// the wrong identity) is passed over by the balancer for a while, as linkerd2-proxy passes over an
// endpoint that is reconnecting (exponential from 100 ms, jitter 0.1;
// shared/reference/data-plane-anchors.md §7). Without it, a killed instance keeps its share of
// new requests until the control plane notices it is gone (the dev catalog polls every second,
// Consul's health checks take longer), and each of those requests needs a retry, which the retry
// budget refuses once they bunch. Envoy leaves this to outlier detection, whose default 10 %
// ejection cap ejects nothing in a cluster of fewer than ten hosts.
//
// It is a preference, not a filter: when every host is backing off, the balancer picks among them
// anyway (a refused connect costs a round trip on loopback; refusing outright would be an outage
// of its own). The back-off ends early when the host answers, and when the control plane reports
// the host healthy again after reporting it unhealthy (a restarted instance).

/** First back-off after a failed connect; doubles with each failure in a row. */
export const CONNECT_BACKOFF_BASE_MS = 100;
/** Longest back-off: a host still refusing is tried (with a real request) this often. */
export const CONNECT_BACKOFF_MAX_MS = 10_000;
const JITTER = 0.1;

export interface ConnectBackoffState {
  /** Connect failures in a row; 0 when the last attempt got through. */
  connectFailures: number;
  /** performance.now() until which the balancer passes the host over. */
  connectRetryAt: number;
}

/** The back-off after the n-th failure in a row (n ≥ 1), before jitter. */
export function backoffMs(n: number): number {
  return Math.min(CONNECT_BACKOFF_MAX_MS, CONNECT_BACKOFF_BASE_MS * 2 ** Math.min(n - 1, 30));
}

/**
 * Records a failed connect: the host is passed over for the next back-off. Failures while it is
 * already backing off come from connects started before the first one failed (a pool's waiters
 * all refused at once): they are one incident, not a run, and leave the back-off as it is.
 */
export function recordConnectFailure(h: ConnectBackoffState, now: number, random: () => number): void {
  if (h.connectRetryAt > now) return;
  h.connectFailures++;
  const jitter = 1 + JITTER * (2 * random() - 1);
  h.connectRetryAt = now + backoffMs(h.connectFailures) * jitter;
}

/** Records a connection that got through (or a response on one): the back-off is over. */
export function recordConnectSuccess(h: ConnectBackoffState): void {
  h.connectFailures = 0;
  h.connectRetryAt = 0;
}

/**
 * The keys of the hosts backing off, computed when the set can have changed (a failure, a
 * success, a new host set: invalidate) or when the earliest back-off in it runs out, not at every
 * pick: a dead instance that stays in the catalog backs off for good, and the picks meanwhile
 * should not each scan the hosts and build a set.
 */
export class BackingOff {
  private keys: Set<string> | null = null;
  /** When the earliest back-off in `keys` ends (the set changes then). */
  private until = Infinity;
  private stale = false;

  invalidate(): void {
    this.stale = true;
  }

  /** The keys of `hosts` backing off now, or null when none is; `now` is read only when the set may have changed. */
  of(hosts: readonly (ConnectBackoffState & { readonly key: string })[], now: () => number): ReadonlySet<string> | null {
    if (!this.stale && this.keys === null) return null;
    const t = now();
    if (!this.stale && t < this.until) return this.keys;
    this.stale = false;
    this.keys = null;
    this.until = Infinity;
    for (const h of hosts) {
      if (h.connectRetryAt <= t) continue;
      (this.keys ??= new Set()).add(h.key);
      if (h.connectRetryAt < this.until) this.until = h.connectRetryAt;
    }
    return this.keys;
  }
}
