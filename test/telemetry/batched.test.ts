// Batched counters and gauges: additions on the request path, handed to prom-client at scrape.
import t from "tap";
import { AggregatorRegistry, Histogram, Registry } from "prom-client";
import fc from "fast-check";
import { fuzzParams } from "../fuzz/params.js";
import { BatchedCounter, BatchedGauge, BatchedHistogram } from "../../src/telemetry/batched.js";

t.test("counter and gauge series show what was added, per label set, at every scrape", async (t) => {
  const registry = new Registry();
  const rq = new BatchedCounter({ name: "demo_rq", help: "requests", labelNames: ["cluster", "code"], registry });
  const active = new BatchedGauge({ name: "demo_active", help: "open", labelNames: ["cluster"], registry });
  const ok = rq.labels("api", "200");
  ok.inc();
  ok.inc(2);
  rq.labels("api", "503");
  const a = active.labels("api");
  a.inc();
  a.inc();
  a.dec();
  let text = await registry.metrics();
  t.match(text, /^demo_rq\{cluster="api",code="200"\} 3$/m, "three requests counted");
  t.match(text, /^demo_rq\{cluster="api",code="503"\} 0$/m, "a series asked for but not used shows 0, as Envoy's do");
  t.match(text, /^demo_active\{cluster="api"\} 1$/m, "the gauge is at its level");
  t.match(text, /^# TYPE demo_rq counter$/m, "still typed as a counter");
  t.equal(rq.labels("api", "200"), ok, "a label set always gives the same series");
  ok.inc();
  text = await registry.metrics();
  t.match(text, /^demo_rq\{cluster="api",code="200"\} 4$/m, "a later scrape has the later total, not the difference");
});

t.test("a batched histogram's exposition is prom-client's for the same observations", async (t) => {
  const buckets = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000];
  await fc.assert(
    fc.asyncProperty(fc.array(fc.tuple(fc.constantFrom("a", "b"), fc.double({ min: 0, max: 5000, noNaN: true })), { maxLength: 50 }), async (obs) => {
      const mine = new Registry();
      const ref = new Registry();
      const h = new BatchedHistogram({ name: "demo_time", help: "time", labelNames: ["cluster"], buckets, registry: mine });
      const r = new Histogram({ name: "demo_time", help: "time", labelNames: ["cluster"], buckets, registers: [ref] });
      for (const [c, v] of obs) {
        h.slot(c).observe(v);
        r.labels(c).observe(v);
      }
      const norm = (s: string) => s.split("\n").sort().join("\n");
      return norm(await mine.metrics()) === norm(await ref.metrics());
    }),
    fuzzParams(0.1),
  );
  t.pass("same bucket, sum and count lines for every run");
});

t.test("a batched histogram has a JSON form too, which AggregatorRegistry sums over workers (-concurrency)", async (t) => {
  const registries = [new Registry(), new Registry()];
  const histograms = registries.map((registry) => new BatchedHistogram({ name: "demo_time", help: "time", labelNames: ["cluster"], buckets: [1, 10], registry }));
  histograms[0]!.slot("api").observe(0.5);
  histograms[1]!.slot("api").observe(5);
  histograms[1]!.slot("api").observe(50);
  // Before the fix prom-client's Histogram.get() threw reading the values' sharedLabels.
  const json = await Promise.all(registries.map((r) => r.getMetricsAsJSON()));
  const text = await AggregatorRegistry.aggregate(json).metrics();
  t.match(text, /^demo_time_bucket\{le="1",cluster="api"\} 1$/m, "bucket le=1: one observation from worker 0");
  t.match(text, /^demo_time_bucket\{le="10",cluster="api"\} 2$/m, "bucket le=10: plus one from worker 1");
  t.match(text, /^demo_time_bucket\{le="\+Inf",cluster="api"\} 3$/m, "+Inf: all three");
  t.match(text, /^demo_time_sum\{cluster="api"\} 55.5$/m, "sums added");
  t.match(text, /^demo_time_count\{cluster="api"\} 3$/m, "counts added");
});
