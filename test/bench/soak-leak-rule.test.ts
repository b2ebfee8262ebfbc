// The soak's leak rule (bench/soak/check.mjs): a leak of the size the soak runs showed is caught,
// linear or stepping up at every burst; a one-time step that then stays flat (the allocator
// keeping a burst's pages) is not, though a least-squares slope over the half calls it growth.
import t from "tap";
import { leakCheck, sustainedGrowth, windowLevels, type FaultEvent, type LeakSample, type LeakVerdict } from "../../bench/soak/check.mjs";

const HALF_MS = 30 * 60_000; // the judged half of a one-hour run
const EVERY_MS = 5000;

/** Deterministic noise in [-amp, amp] (mulberry32), so a failure reproduces. */
function noise(seed: number, amp: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((((x ^ (x >>> 14)) >>> 0) / 4294967296) * 2 - 1) * amp;
  };
}

/** RSS samples of one sidecar over the judged half (started well before it), RSS = rss(t) + noise. */
function series(rss: (t: number) => number, seed = 1): LeakSample[] {
  const n = noise(seed, 2);
  const out: LeakSample[] = [];
  for (let t = 0; t <= HALF_MS; t += EVERY_MS) out.push({ t, name: "api-v2", pid: 42, rssMb: rss(t) + n(), heapMb: 20 + n() / 4, fdsNet: 30 });
  return out;
}

function judge(samples: LeakSample[], events: FaultEvent[] = []): Extract<LeakVerdict, { judged: true }> {
  const [v] = leakCheck(samples, { fromMs: 0, toMs: HALF_MS, events, quietMs: 10_000, quietAfterBurstMs: 60_000, warmupMs: 60_000, gate: ["rssMb", "heapMb", "fdsNet"] });
  if (v === undefined || !v.judged) throw new Error(`the sidecar was not judged: ${v?.why ?? "no verdict"}`);
  return v;
}

// Warm-up is counted from the process's first sample: start it 10 minutes before the half.
const warm = (s: LeakSample[]): LeakSample[] => [{ t: -600_000, name: "api-v2", pid: 42, rssMb: 70, heapMb: 20, fdsNet: 30 }, ...s];

t.test("a linear leak of the size the soak showed (30 MB over the half) fails the run", async (t) => {
  const v = judge(warm(series((ms) => 90 + (30 * ms) / HALF_MS)));
  const rss = v.metrics.rssMb;
  t.ok(rss?.over, `RSS growth ${rss?.growth.toFixed(1)} MB against ${rss?.limit} MB, ${rss?.rises} of ${rss?.steps} windows rising`);
  t.ok(v.leak);
  t.ok(rss !== undefined && Math.abs(rss.growth - 30) < 5, "the growth estimate is the leak's size");
});

t.test("a leak per burst (three bursts in the half, 10 MB each, none given back) fails the run", async (t) => {
  const bursts = [0.2, 0.45, 0.7].map((f) => Math.round(f * HALF_MS));
  const events: FaultEvent[] = bursts.map((t0) => ({ kind: "burst", t0, t1: t0 + 6000 }));
  const v = judge(warm(series((ms) => 90 + 10 * bursts.filter((b) => ms >= b).length)), events);
  t.ok(v.metrics.rssMb?.over, `RSS levels ${v.metrics.rssMb?.levels.map((l) => l?.toFixed(1)).join(" → ")}`);
  t.ok(v.leak);
});

t.test("one step of 40 MB at a burst, then flat, is not a leak (the least-squares slope called it one)", async (t) => {
  const burst = Math.round(0.4 * HALF_MS);
  const v = judge(warm(series((ms) => (ms >= burst ? 130 : 90))), [{ kind: "burst", t0: burst, t1: burst + 6000 }]);
  const rss = v.metrics.rssMb;
  t.ok(rss !== undefined && rss.slopeGrowth > rss.limit, `least-squares growth ${rss?.slopeGrowth.toFixed(1)} MB is over the ${rss?.limit} MB limit`);
  t.notOk(rss?.over, `levels ${rss?.levels.map((l) => l?.toFixed(1)).join(" → ")}: ${rss?.rises} of ${rss?.steps} rising`);
  t.notOk(v.leak);
});

t.test("a step in the last window alone is not a leak either", async (t) => {
  const v = judge(warm(series((ms) => (ms >= 0.8 * HALF_MS ? 140 : 90))));
  t.notOk(v.metrics.rssMb?.over);
});

t.test("steady growth under the limit (10 MB over the half) passes", async (t) => {
  const v = judge(warm(series((ms) => 90 + (10 * ms) / HALF_MS)));
  t.notOk(v.metrics.rssMb?.over, `growth ${v.metrics.rssMb?.growth.toFixed(1)} MB`);
  t.notOk(v.leak);
});

t.test("a series that is not gating is reported, not failed", async (t) => {
  const samples = warm(series((ms) => 90 + (40 * ms) / HALF_MS));
  const [v] = leakCheck(samples, { fromMs: 0, toMs: HALF_MS, events: [], quietMs: 10_000, warmupMs: 60_000, gate: ["heapMb", "fdsNet"] });
  t.ok(v?.judged && v.metrics.rssMb?.over);
  t.ok(v?.judged && !v.leak);
});

t.test("window levels are medians; empty windows are skipped, and fewer than three judged is no verdict", async (t) => {
  const pts = [0, 10, 20, 30, 40, 50, 60, 70].map((t) => ({ t, y: t === 10 ? 1000 : t }));
  t.same(windowLevels(pts, 0, 80, 4), [500, 25, 45, 65]);
  t.same(windowLevels([{ t: 0, y: 1 }, { t: 79, y: 2 }], 0, 80, 4), [1, null, null, 2]);
  t.equal(sustainedGrowth([1, null, null, 40], 24), null);
  const gapped = sustainedGrowth([0, null, 20, 30], 24);
  t.ok(gapped?.over, "a rise across an empty window counts per window it spans");
  t.equal(gapped?.growth, 40);
});
