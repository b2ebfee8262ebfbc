// The traffic page's totals under -concurrency N: every worker's summed, never going backwards
// when a worker exits and a new one starts from zero.
import t from "tap";
import { SummedReadings } from "../../src/workers/readings.js";
import type { ClusterRequestReading } from "../../src/telemetry/http-stats.js";

const r = (requests: number, errors: number, buckets: number[]): ClusterRequestReading => ({ requests, errors, timeBuckets: Float64Array.from(buckets), timeCount: buckets.reduce((a, b) => a + b, 0) });

t.test("summed over workers; a worker's totals outlive it", async (t) => {
  const s = new SummedReadings();
  s.update(0, [["api", r(10, 1, [4, 6])]]);
  s.update(1, [["api", r(5, 0, [5, 0])], ["db", r(2, 2, [0, 2])]]);
  s.commit();
  t.same([...s.clusterNames()].sort(), ["api", "db"]);
  t.same(s.reading("api"), r(15, 1, [9, 6]), "requests, errors and buckets added");
  t.same(s.reading("db"), r(2, 2, [0, 2]), "a cluster only one worker saw");
  t.equal(s.reading("cache"), null, "a cluster nobody saw");

  s.retire(1);
  s.update(1, [["api", r(1, 0, [1, 0])]]);
  s.commit();
  t.same(s.reading("api"), r(16, 1, [10, 6]), "the exited worker's 5 stay, its successor's 1 add");
  t.same(s.reading("db"), r(2, 2, [0, 2]), "and a cluster only the exited worker had stays too");
  s.update(0, [["api", r(12, 1, [5, 7])]]);
  s.commit();
  t.same(s.reading("api"), r(18, 1, [11, 7]), "later updates replace a live worker's totals, not add to them");
});
