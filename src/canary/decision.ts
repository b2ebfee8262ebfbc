// The judgement of one step of a rollout, from one window of the canary subset's figures. Pure,
// so the rule is what the property tests check, and the log line can carry exactly what it saw.
//
// The rule is Flagger's and Argo Rollouts': no verdict until the window holds at least
// `minRequests` requests (a handful of requests proves nothing either way), then fail when the
// error rate or the p99 latency is over its limit, pass otherwise.

export interface Thresholds {
  /** Failed share of requests above which a step fails, 0..1 (`-max-error-rate`). */
  readonly maxErrorRate: number;
  /** p99 latency, ms, above which a step fails (`-max-p99`). */
  readonly maxP99Ms: number;
  /** Requests a window needs before it is judged (`-min-requests`). */
  readonly minRequests: number;
}

/** What the calling sidecars saw of one subset over a window (see observe.ts). */
export interface WindowFigures {
  /** Every attempt sent to the subset: answered (by it, or 504 UT / 503 UF by the sidecar), or retried away. */
  readonly requests: number;
  /** Of those: 5xx answers (the sidecar's own 504 UT and 503 UF included) and attempts retried away. */
  readonly errors: number;
  /** p99 of the answered requests' time to response headers, ms; null with no answered request. */
  readonly p99Ms: number | null;
}

export type Verdict =
  | { readonly kind: "wait"; readonly reason: string }
  | { readonly kind: "pass"; readonly reason: string }
  | { readonly kind: "fail"; readonly reason: string };

export function errorRate(w: WindowFigures): number {
  return w.requests > 0 ? w.errors / w.requests : 0;
}

export function judge(w: WindowFigures, t: Thresholds): Verdict {
  if (w.requests < t.minRequests) return { kind: "wait", reason: `${w.requests} of the ${t.minRequests} requests needed for a verdict` };
  const rate = errorRate(w);
  if (rate > t.maxErrorRate) return { kind: "fail", reason: `error rate ${formatRate(rate)} (${w.errors} of ${w.requests}) is over -max-error-rate ${formatRate(t.maxErrorRate)}` };
  if (w.p99Ms !== null && w.p99Ms > t.maxP99Ms) return { kind: "fail", reason: `p99 ${formatMs(w.p99Ms)} is over -max-p99 ${formatMs(t.maxP99Ms)}` };
  return { kind: "pass", reason: `error rate ${formatRate(rate)} (${w.errors} of ${w.requests}), p99 ${w.p99Ms === null ? "n/a" : formatMs(w.p99Ms)}: within the limits` };
}

export function formatRate(r: number): string {
  return `${(r * 100).toFixed(2)}%`;
}

export function formatMs(ms: number): string {
  return `${ms < 10 ? ms.toFixed(2) : ms.toFixed(0)}ms`;
}
