// The traffic page's figures under -concurrency N. Its window (telemetry/traffic-window.ts) reads
// running request totals; here they are every worker's summed, as the primary last gathered them
// (once a second, the window's own sampling rate, so a figure is at most a second behind). A
// worker that exits takes its totals with it; its last ones are kept (retired), so the sums never
// go backwards and the page shows no negative rate after a restart.
import type { ClusterRequestReading } from "../telemetry/http-stats.js";
import type { RequestReadings } from "../telemetry/traffic-window.js";

type Readings = ReadonlyArray<readonly [string, ClusterRequestReading]>;

interface Sum {
  requests: number;
  errors: number;
  timeBuckets: Float64Array;
  timeCount: number;
}

function add(into: Map<string, Sum>, readings: Readings): void {
  for (const [name, r] of readings) {
    const s = into.get(name);
    if (!s) {
      into.set(name, { requests: r.requests, errors: r.errors, timeBuckets: Float64Array.from(r.timeBuckets), timeCount: r.timeCount });
      continue;
    }
    s.requests += r.requests;
    s.errors += r.errors;
    s.timeCount += r.timeCount;
    r.timeBuckets.forEach((n, i) => (s.timeBuckets[i] = (s.timeBuckets[i] ?? 0) + n));
  }
}

export class SummedReadings implements RequestReadings {
  /** Each live worker's last totals, by worker index. */
  private readonly last = new Map<number, Readings>();
  /** Totals of workers that exited. */
  private readonly retired = new Map<string, Sum>();
  private sums = new Map<string, Sum>();

  /** A worker's current totals. */
  update(worker: number, readings: Readings): void {
    this.last.set(worker, readings);
  }

  /** The worker exited: its last totals stay in the sums for good. */
  retire(worker: number): void {
    const readings = this.last.get(worker);
    if (readings) add(this.retired, readings);
    this.last.delete(worker);
  }

  /** Recomputes the sums; call after a round of updates. */
  commit(): void {
    const sums = new Map<string, Sum>();
    add(sums, [...this.retired.entries()].map(([name, s]) => [name, s] as const));
    for (const readings of this.last.values()) add(sums, readings);
    this.sums = sums;
  }

  clusterNames(): Iterable<string> {
    return this.sums.keys();
  }

  reading(cluster: string): ClusterRequestReading | null {
    return this.sums.get(cluster) ?? null;
  }
}
