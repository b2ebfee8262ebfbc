// Properties of the canary's judgement and of the figures it is judged on: the verdict rule
// (minimum request count, thresholds), histogram_quantile over Envoy's buckets, windows across a
// sidecar restart, and the -steps flag.
import t from "tap";
import fc from "fast-check";
import { fuzzParams } from "./params.js";
import { judge, type Thresholds, type WindowFigures } from "../../src/canary/decision.js";
import { quantileMs, SubsetWindow, type Sample, type SubsetCounters } from "../../src/canary/observe.js";
import { ENVOY_BUCKETS_MS } from "../../src/telemetry/http-stats.js";
import { parseSteps } from "../../src/cli/canary-args.js";
import { UsageError } from "../../src/cli/args.js";

const thresholds = fc.record({
  maxErrorRate: fc.double({ min: 0, max: 1, noNaN: true }),
  maxP99Ms: fc.double({ min: 0.001, max: 100_000, noNaN: true }),
  minRequests: fc.integer({ min: 1, max: 10_000 }),
});
const figures = fc.integer({ min: 0, max: 20_000 }).chain((requests) =>
  fc.record({ requests: fc.constant(requests), errors: fc.integer({ min: 0, max: requests }), p99Ms: fc.option(fc.double({ min: 0, max: 200_000, noNaN: true }), { nil: null }) }),
);

t.test("judge: no verdict below the minimum; fail exactly when a limit is crossed", async (t) => {
  fc.assert(
    fc.property(figures, thresholds, (w: WindowFigures, th: Thresholds) => {
      const v = judge(w, th);
      if (w.requests < th.minRequests) return v.kind === "wait";
      const over = w.errors / w.requests > th.maxErrorRate || (w.p99Ms !== null && w.p99Ms > th.maxP99Ms);
      return v.kind === (over ? "fail" : "pass");
    }),
    fuzzParams(),
  );
  t.equal(judge({ requests: 49, errors: 49, p99Ms: 1e6 }, { maxErrorRate: 0.01, maxP99Ms: 250, minRequests: 50 }).kind, "wait", "49 failed requests of a minimum of 50: no verdict yet");
  t.equal(judge({ requests: 100, errors: 1, p99Ms: 250 }, { maxErrorRate: 0.01, maxP99Ms: 250, minRequests: 50 }).kind, "pass", "exactly at both limits passes");
  t.equal(judge({ requests: 100, errors: 2, p99Ms: 10 }, { maxErrorRate: 0.01, maxP99Ms: 250, minRequests: 50 }).kind, "fail");
});

/** Cumulative Envoy buckets of a list of observations, as the sidecar's histogram holds them. */
function bucketsOf(obs: readonly number[]): Map<number, number> {
  const m = new Map<number, number>();
  for (const le of [...ENVOY_BUCKETS_MS, Infinity]) m.set(le, obs.filter((o) => o <= le).length);
  return m;
}

t.test("p99 from buckets lies in the bucket that holds the true p99", async (t) => {
  fc.assert(
    fc.property(fc.array(fc.double({ min: 0, max: 5000, noNaN: true }), { minLength: 1, maxLength: 300 }), (obs) => {
      const est = quantileMs(0.99, bucketsOf(obs));
      const sorted = [...obs].sort((a, b) => a - b);
      const truth = sorted[Math.max(0, Math.ceil(0.99 * sorted.length) - 1)]!;
      const upper = ENVOY_BUCKETS_MS.find((le) => truth <= le)!;
      const lower = [0, ...ENVOY_BUCKETS_MS].filter((le) => le < upper).pop()!;
      return est !== null && est >= lower && est <= upper;
    }),
    fuzzParams(),
  );
  t.equal(quantileMs(0.99, bucketsOf([])), null, "no observation, no p99");
});

function counters(c: Partial<SubsetCounters>, obs: readonly number[] = []): SubsetCounters {
  return { responses: 0, errors5xx: 0, retries: 0, timeouts: 0, connectFailures: 0, buckets: bucketsOf(obs), ...c };
}

function sample(at: number, bySidecar: Record<string, SubsetCounters>): Sample {
  return { at, bySidecar: new Map(Object.entries(bySidecar).map(([k, v]) => [k, new Map([["v2", v]])])), problems: [], read: Object.keys(bySidecar).length };
}

t.test("a window counts what happened in it, across a sidecar restart, never less than 0", async (t) => {
  fc.assert(
    fc.property(fc.nat(1000), fc.nat(1000), fc.nat(1000), fc.boolean(), (before, during, afterRestart, restarted) => {
      const base = sample(0, { a: counters({ responses: before, errors5xx: Math.floor(before / 10) }) });
      const end = restarted
        ? sample(1, { a: counters({ responses: afterRestart, errors5xx: Math.floor(afterRestart / 10) }) })
        : sample(1, { a: counters({ responses: before + during, errors5xx: Math.floor(before / 10) + Math.floor(during / 10) }) });
      const w = new SubsetWindow(base);
      w.add(end);
      const f = w.figures("v2");
      // A restarted sidecar's counters start at 0: if they are already past the old ones, the
      // drop cannot be seen and the window counts their difference (as Prometheus' increase()).
      const expected = restarted ? (afterRestart < before ? afterRestart : afterRestart - before) : during;
      return f.requests === expected && f.errors >= 0 && f.errors <= f.requests;
    }),
    fuzzParams(),
  );
  const w = new SubsetWindow(sample(0, {}));
  w.add(sample(1, { late: counters({ responses: 500 }) }));
  t.equal(w.figures("v2").requests, 0, "a sidecar first read at the end of the window brings none of its history");
});

t.test("-steps: increasing percentages ending at 100, or a usage error", async () => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: -5, max: 120 }), { minLength: 1, maxLength: 6 }), (xs) => {
      const raw = xs.join(",");
      const valid = xs.every((x, i) => x > 0 && x <= 100 && (i === 0 || x > xs[i - 1]!)) && xs[xs.length - 1] === 100;
      try {
        const steps = parseSteps(raw);
        return valid && steps.join(",") === raw;
      } catch (e) {
        return !valid && e instanceof UsageError;
      }
    }),
    fuzzParams(),
  );
});
