// The traffic page's figures from the sidecar's own counters: rates and error ratios over the
// window, p99 interpolated in Envoy's buckets as histogram_quantile() does, local failures (UF,
// UH, UO, UT) counted as requests and errors of their cluster.
import t from "tap";
import { Registry } from "prom-client";
import { HttpStats } from "../../src/telemetry/http-stats.js";
import { bucketQuantile, TrafficWindow } from "../../src/telemetry/traffic-window.js";

function fixture() {
  const stats = new HttpStats(new Registry(), () => {});
  let now = 0;
  const window = new TrafficWindow(stats, 10_000, () => now);
  return { stats, window, at: (ms: number) => (now = ms) };
}

t.test("rate, error rate and p99 over the window", async (t) => {
  const { stats, window, at } = fixture();
  window.sample();
  t.match(window.figures("v1.api"), { requestsPerSecond: null, errorRate: null, p99Ms: null, requestsTotal: 0 }, "nothing yet");
  for (let i = 0; i < 90; i++) stats.response("v1.api", 200, 3);
  for (let i = 0; i < 8; i++) stats.response("v1.api", 503, 3);
  stats.timeout("v1.api");
  stats.failed("v1.api");
  at(5000);
  const f = window.figures("v1.api");
  t.equal(f.windowRequests, 100, "90 + 8 responses and 2 local failures");
  t.equal(f.windowErrors, 10, "8 × 503, a timeout and a connection failure");
  t.equal(f.requestsPerSecond, 20, "100 requests over 5 s");
  t.equal(f.errorRate, 0.1);
  // 98 responses of 3 ms, all in the (1, 5] bucket: rank 97.02 of 98 → 1 + 4 × 97.02/98.
  t.equal(f.p99Ms, 1 + (4 * (0.99 * 98)) / 98);
});

t.test("traffic older than the window drops out", async (t) => {
  const { stats, window, at } = fixture();
  window.sample();
  for (let i = 0; i < 50; i++) stats.response("v2.api", 500, 40);
  for (let s = 1; s <= 12; s++) {
    at(s * 1000);
    window.sample();
  }
  for (let i = 0; i < 10; i++) stats.response("v2.api", 200, 7);
  at(12_500);
  const f = window.figures("v2.api");
  t.equal(f.windowRequests, 10, "only the last 10 requests are inside the window");
  t.equal(f.windowErrors, 0);
  t.equal(f.requestsTotal, 60, "totals keep everything");
  t.equal(f.errorsTotal, 50);
  t.ok(f.p99Ms! > 5 && f.p99Ms! <= 10, `p99 ${f.p99Ms} in the 5–10 ms bucket`);
  t.ok(Math.abs(window.spanSeconds() - 9.5) < 1e-9, "the window spans from the oldest sample inside it");
});

t.test("bucketQuantile follows histogram_quantile()", async (t) => {
  const bounds = [1, 5, 10];
  t.equal(bucketQuantile(0.99, bounds, [0, 0, 0], 0), null, "no observations");
  t.equal(bucketQuantile(0.5, bounds, [0, 10, 0], 10), 3, "halfway through (1, 5]");
  t.equal(bucketQuantile(0.99, bounds, [0, 0, 0], 4), 10, "above every bound: the last bound");
  t.equal(bucketQuantile(0.99, bounds, [100, 0, 0], 100), 0.99, "the first bucket starts at 0");
});
