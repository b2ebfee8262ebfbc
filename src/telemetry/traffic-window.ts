// Recent request rate, error rate and p99 per cluster, for the admin API's live traffic page.
// Nothing is added to the request path: once a second the running totals the sidecar already
// keeps (http-stats.ts) are copied into a short ring of samples, and a figure is the difference
// between now and the oldest sample still inside the window, as Prometheus's rate() and
// histogram_quantile() compute them from the same counters.
import { ENVOY_BUCKETS_MS, type ClusterRequestReading } from "./http-stats.js";

/** Where the running totals come from: this process's HttpStats, or (-concurrency N) the workers' summed. */
export interface RequestReadings {
  clusterNames(): Iterable<string>;
  reading(cluster: string): ClusterRequestReading | null;
}

/** The window the page's figures cover (Prometheus dashboards use [1m]; a live page wants seconds). */
export const TRAFFIC_WINDOW_MS = 10_000;
const SAMPLE_EVERY_MS = 1_000;

interface Totals {
  readonly requests: number;
  readonly errors: number;
  readonly timeBuckets: Float64Array;
  readonly timeCount: number;
}

interface Sample {
  readonly at: number;
  readonly clusters: ReadonlyMap<string, Totals>;
}

export interface ClusterTraffic {
  /** Requests a second over the window; null until the window spans any time. */
  readonly requestsPerSecond: number | null;
  /** Errors (5xx and local failures) over requests in the window; null without requests. */
  readonly errorRate: number | null;
  /** 99th percentile of response time in the window, ms, interpolated in Envoy's buckets; null without responses. */
  readonly p99Ms: number | null;
  readonly windowRequests: number;
  readonly windowErrors: number;
  /** Since the sidecar started. */
  readonly requestsTotal: number;
  readonly errorsTotal: number;
}

const NONE: Totals = { requests: 0, errors: 0, timeBuckets: new Float64Array(ENVOY_BUCKETS_MS.length), timeCount: 0 };

function copy(r: ClusterRequestReading): Totals {
  return { requests: r.requests, errors: r.errors, timeBuckets: Float64Array.from(r.timeBuckets), timeCount: r.timeCount };
}

/**
 * The q-quantile of a histogram given per bucket (upper bounds `bounds`), with observations
 * above the last bound only in `count`: linear within the bucket the rank falls in, as
 * Prometheus's histogram_quantile(); the last bound when it falls above every bound.
 */
export function bucketQuantile(q: number, bounds: readonly number[], perBucket: ArrayLike<number>, count: number): number | null {
  if (count <= 0) return null;
  const rank = q * count;
  let below = 0;
  for (let i = 0; i < bounds.length; i++) {
    const n = perBucket[i] ?? 0;
    if (n > 0 && below + n >= rank) {
      const lower = i === 0 ? 0 : bounds[i - 1]!;
      return lower + (bounds[i]! - lower) * ((rank - below) / n);
    }
    below += n;
  }
  return bounds[bounds.length - 1] ?? null;
}

export class TrafficWindow {
  private readonly samples: Sample[] = [];
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly stats: RequestReadings,
    private readonly windowMs = TRAFFIC_WINDOW_MS,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Samples once a second from now on; the timer never keeps the process alive. */
  start(): void {
    if (this.timer) return;
    this.sample();
    this.timer = setInterval(() => this.sample(), SAMPLE_EVERY_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Records the running totals of every cluster now, and forgets samples older than the window needs. */
  sample(): void {
    const at = this.now();
    const clusters = new Map<string, Totals>();
    for (const name of this.stats.clusterNames()) {
      const r = this.stats.reading(name);
      if (r) clusters.set(name, copy(r));
    }
    this.samples.push({ at, clusters });
    // Keep the newest sample at least a window old: it is the base of the next figures.
    while (this.samples.length > 1 && this.samples[1]!.at <= at - this.windowMs) this.samples.shift();
  }

  /** Seconds the figures cover right now (less than the window just after start). */
  spanSeconds(): number {
    const base = this.base(this.now());
    return base ? (this.now() - base.at) / 1000 : 0;
  }

  /** The figures of one cluster, from its totals now against the oldest sample inside the window. */
  figures(cluster: string): ClusterTraffic {
    const now = this.now();
    const reading = this.stats.reading(cluster);
    const cur = reading ? copy(reading) : NONE;
    const base = this.base(now);
    const then = base?.clusters.get(cluster) ?? NONE;
    const seconds = base ? (now - base.at) / 1000 : 0;
    const requests = cur.requests - then.requests;
    const errors = cur.errors - then.errors;
    const buckets = cur.timeBuckets.map((n, i) => n - (then.timeBuckets[i] ?? 0));
    return {
      requestsPerSecond: seconds > 0 ? requests / seconds : null,
      errorRate: requests > 0 ? errors / requests : null,
      p99Ms: bucketQuantile(0.99, ENVOY_BUCKETS_MS, buckets, cur.timeCount - then.timeCount),
      windowRequests: requests,
      windowErrors: errors,
      requestsTotal: cur.requests,
      errorsTotal: cur.errors,
    };
  }

  /** The oldest sample no older than the window. */
  private base(now: number): Sample | null {
    for (const s of this.samples) if (s.at >= now - this.windowMs) return s;
    return this.samples[this.samples.length - 1] ?? null;
  }
}
