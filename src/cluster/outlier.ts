// Envoy's consecutive-error outlier detection for one cluster, non-split mode
// (shared/reference/data-plane-anchors.md §1): inline counters per host eject on the request
// path; a sweep the owner runs every intervalMs brings hosts back. No timers here: time comes
// from the injected clock, so the owner decides how the sweep is scheduled.
import type { OutlierDetection } from "../config/http.js";

export interface OutlierResult {
  /** The upstream's response status, when one arrived. */
  readonly status?: number;
  /** Connect failure, reset or timeout: no usable response from the host. */
  readonly localOriginFailure?: boolean;
}

export interface OutlierStats {
  /** Gauge: hosts ejected right now. */
  ejectionsActive: number;
  /** Ejections enforced, all detectors (Envoy's ejections_enforced_total). */
  ejectionsTotal: number;
  /** Detections refused by the max-ejection-percent gate. */
  ejectionsOverflow: number;
  ejectionsDetectedConsecutive5xx: number;
  ejectionsEnforcedConsecutive5xx: number;
  ejectionsDetectedGatewayFailure: number;
  ejectionsEnforcedGatewayFailure: number;
}

interface HostOutlierState {
  consecutive5xx: number;
  consecutiveGatewayFailure: number;
  ejected: boolean;
  lastEjectionMs: number;
  /** Envoy's ejectTimeBackoff: grows per ejection, shrinks by one per sweep while not ejected. */
  multiplier: number;
}

type Detector = "5xx" | "gateway";

export class OutlierDetector {
  private config: OutlierDetection;
  private readonly hosts = new Map<string, HostOutlierState>();
  private readonly counters: OutlierStats = {
    ejectionsActive: 0,
    ejectionsTotal: 0,
    ejectionsOverflow: 0,
    ejectionsDetectedConsecutive5xx: 0,
    ejectionsEnforcedConsecutive5xx: 0,
    ejectionsDetectedGatewayFailure: 0,
    ejectionsEnforcedGatewayFailure: 0,
  };
  private gen = 0;
  /** Called after a host is ejected (state already updated). */
  onEject?: (key: string) => void;
  /** Called after a host returns from ejection in sweep (not when setHosts drops it). */
  onUneject?: (key: string) => void;

  constructor(
    config: OutlierDetection,
    private readonly now: () => number = Date.now,
    private readonly random: () => number = Math.random,
  ) {
    this.config = config;
  }

  get stats(): Readonly<OutlierStats> {
    return this.counters;
  }

  /** Changes whenever the set of ejected hosts changes; lets callers cache availableHosts. */
  get generation(): number {
    return this.gen;
  }

  /** New thresholds from a Snapshot; host state (ejections, multipliers, counters) is kept. */
  setConfig(config: OutlierDetection): void {
    this.config = config;
  }

  /** The cluster's current hosts: state of hosts that remain is kept, others are forgotten. */
  setHosts(keys: readonly string[]): void {
    const keep = new Set(keys);
    for (const [key, st] of this.hosts) {
      if (keep.has(key)) continue;
      if (st.ejected) {
        this.counters.ejectionsActive--;
        this.gen++;
      }
      this.hosts.delete(key);
    }
    for (const key of keep) {
      if (!this.hosts.has(key)) {
        this.hosts.set(key, { consecutive5xx: 0, consecutiveGatewayFailure: 0, ejected: false, lastEjectionMs: 0, multiplier: 0 });
      }
    }
  }

  /**
   * One attempt's outcome. Results for unknown hosts are ignored: responses still in flight when a
   * Snapshot removed their host are normal. A result with neither a status nor a local failure
   * (e.g. the downstream went away first) says nothing about the host and changes nothing.
   */
  reportResult(key: string, r: OutlierResult): void {
    const st = this.hosts.get(key);
    if (st === undefined) return;
    const local = r.localOriginFailure === true;
    const status = r.status;
    if (!local && status === undefined) return;
    // Non-split mode: Envoy maps a connect failure to 503 and a timeout to 504, so local-origin
    // failures count as gateway errors too.
    const is5xx = local || (status !== undefined && status >= 500 && status <= 599);
    if (!is5xx) {
      st.consecutive5xx = 0;
      st.consecutiveGatewayFailure = 0;
      return;
    }
    const isGateway = local || status === 502 || status === 503 || status === 504;
    const c = this.config;
    // Gateway first, as Envoy posts it first: when both trip on the same response, the host is
    // ejected as a gateway failure and the 5xx detection finds it already ejected.
    if (isGateway) {
      // Envoy's default enforcement here is 0, which turns this detector off entirely.
      if (c.enforcingConsecutiveGatewayFailure > 0) {
        st.consecutiveGatewayFailure++;
        if (c.consecutiveGatewayFailure > 0 && st.consecutiveGatewayFailure >= c.consecutiveGatewayFailure && !st.ejected) {
          this.detected(key, st, "gateway");
          st.consecutiveGatewayFailure = 0;
        }
      }
    } else {
      // "Consecutive" gateway failures: any other 5xx breaks the run.
      st.consecutiveGatewayFailure = 0;
    }
    st.consecutive5xx++;
    // A threshold of 0 never trips (Envoy compares the incremented count for equality).
    if (c.consecutive5xx > 0 && st.consecutive5xx >= c.consecutive5xx && !st.ejected) {
      this.detected(key, st, "5xx");
      // Reset even when the ejection was refused, so the next detection needs a fresh run.
      st.consecutive5xx = 0;
    }
  }

  isEjected(key: string): boolean {
    return this.hosts.get(key)?.ejected === true;
  }

  /** Milliseconds the host's current ejection lasts in total, or 0 when it is not ejected. */
  ejectionTimeMs(key: string): number {
    const st = this.hosts.get(key);
    return st?.ejected === true ? this.ejectionLength(st.multiplier) : 0;
  }

  /**
   * The interval timer's work; the owner calls it every intervalMs. Ejections therefore end on the
   * first sweep after their time is up, as in Envoy.
   */
  sweep(): void {
    const now = this.now();
    for (const [key, st] of this.hosts) {
      if (!st.ejected) {
        // A host that stays in service forgets one earlier ejection per interval.
        if (st.multiplier > 0) st.multiplier--;
        continue;
      }
      if (this.ejectionLength(st.multiplier) <= now - st.lastEjectionMs) {
        st.ejected = false;
        // A host back from ejection starts with clean counters, so a stray error or two right
        // after its return cannot eject it again.
        st.consecutive5xx = 0;
        st.consecutiveGatewayFailure = 0;
        this.counters.ejectionsActive--;
        this.gen++;
        this.onUneject?.(key);
      }
    }
  }

  private ejectionLength(multiplier: number): number {
    const base = this.config.baseEjectionTimeMs;
    return Math.min(base * multiplier, this.maxEjectionMs());
  }

  /** Envoy: max_ejection_time, or base_ejection_time when that is larger. */
  private maxEjectionMs(): number {
    return Math.max(this.config.maxEjectionTimeMs, this.config.baseEjectionTimeMs);
  }

  private detected(key: string, st: HostOutlierState, kind: Detector): void {
    const c = this.config;
    const s = this.counters;
    if (kind === "5xx") s.ejectionsDetectedConsecutive5xx++;
    else s.ejectionsDetectedGatewayFailure++;
    // Envoy's gate since envoy#27909: the ejection must fit under the cap including itself, so
    // with the default 10% a cluster of fewer than ten hosts ejects nothing.
    const maxPercent = Math.min(100, c.maxEjectionPercent);
    if ((100 * (s.ejectionsActive + 1)) / this.hosts.size > maxPercent) {
      s.ejectionsOverflow++;
      return;
    }
    const enforcing = kind === "5xx" ? c.enforcingConsecutive5xx : c.enforcingConsecutiveGatewayFailure;
    if (!this.roll(enforcing)) return;
    if (kind === "5xx") s.ejectionsEnforcedConsecutive5xx++;
    else s.ejectionsEnforcedGatewayFailure++;
    s.ejectionsTotal++;
    s.ejectionsActive++;
    st.ejected = true;
    st.lastEjectionMs = this.now();
    const base = c.baseEjectionTimeMs;
    // Grow only while it still matters: past max + base the extra multiplier would only take
    // longer to decay.
    if (st.multiplier * base < this.maxEjectionMs() + base) st.multiplier++;
    this.gen++;
    this.onEject?.(key);
  }

  /** True with probability percent/100 (Envoy's featureEnabled). */
  private roll(percent: number): boolean {
    if (percent >= 100) return true;
    if (percent <= 0) return false;
    return this.random() * 100 < percent;
  }
}

/**
 * The hosts a balancer may use: healthy and not ejected. When their share is strictly below
 * panicThresholdPercent (> 0), Envoy's panic mode applies: every host, health ignored, and
 * panic=true (count it as lb_healthy_panic). With threshold 0 there is no panic and the result may
 * be empty. Returns `hosts` itself, not a copy, when nothing is filtered out (all available, or
 * panic), so balancers built over that array keep their fast path.
 */
export function availableHosts<T extends { key: string }>(
  hosts: readonly T[],
  detector: OutlierDetector | null,
  healthy: (h: T) => boolean,
  panicThresholdPercent: number,
): { hosts: readonly T[]; panic: boolean } {
  let available = 0;
  for (const h of hosts) if (healthy(h) && (detector === null || !detector.isEjected(h.key))) available++;
  if (available === hosts.length) return { hosts, panic: false };
  if (panicThresholdPercent > 0 && (100 * available) / hosts.length < panicThresholdPercent) return { hosts, panic: true };
  const out: T[] = [];
  for (const h of hosts) if (healthy(h) && (detector === null || !detector.isEjected(h.key))) out.push(h);
  return { hosts: out, panic: false };
}
