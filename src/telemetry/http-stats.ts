// HTTP request metrics per cluster, with Envoy's Prometheus names and labels so existing
// dashboards work (shared/reference/data-plane-anchors.md §5). Series are cached per cluster and
// status code, and counters are batched (batched.ts): a request costs map lookups and additions;
// the time histogram is batched the same way.
import type { Registry } from "prom-client";
import { BatchedCounter, BatchedHistogram, type CountReading, type CountSlot, type TimeReading } from "./batched.js";
import { CLUSTER_LABELS, clusterLabelValues } from "./consul-tags.js";

/** Envoy's default histogram buckets, in milliseconds. */
export const ENVOY_BUCKETS_MS = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000];

interface ClusterChildren {
  labels: string[];
  total: CountReading;
  completed: CountSlot;
  time: TimeReading;
  /** Indexed by status class 1..5, made with the cluster's other series so they start at 0. */
  byClass: CountReading[];
  byCode: Map<number, CountSlot>;
  retry: CountSlot;
  timeout: CountReading;
  overflow: CountReading;
  retryOverflow: CountSlot;
  noHealthy: CountReading;
  /** Requests answered 503 UF after their attempts failed to connect or were reset: no Prometheus series of their own. */
  failed: number;
}

/**
 * A cluster's request counts so far, as the app saw them: upstream responses, and the requests
 * the proxy answered itself (503 UF/UH/UO, 504 UT), which Envoy counts as 5xx of the cluster too.
 */
export interface ClusterRequestReading {
  /** Final responses from the cluster plus local failures. */
  readonly requests: number;
  /** 5xx responses plus local failures. */
  readonly errors: number;
  /** Response-time histogram of the responses (ENVOY_BUCKETS_MS, per bucket), and its count. */
  readonly timeBuckets: Float64Array;
  readonly timeCount: number;
}

export class HttpStats {
  private readonly rqTotal: BatchedCounter<string>;
  private readonly rqCompleted: BatchedCounter<string>;
  private readonly rqXx: BatchedCounter<string>;
  private readonly rqCode: BatchedCounter<string>;
  private readonly rqTime: BatchedHistogram<string>;
  private readonly rqRetry: BatchedCounter<string>;
  private readonly rqTimeout: BatchedCounter<string>;
  private readonly rqOverflow: BatchedCounter<string>;
  private readonly rqRetryOverflow: BatchedCounter<string>;
  private readonly rqNoHealthy: BatchedCounter<string>;
  private readonly children = new Map<string, ClusterChildren>();

  constructor(registry: Registry) {
    const c = CLUSTER_LABELS;
    this.rqTotal = new BatchedCounter({ name: "envoy_cluster_upstream_rq_total", help: "Upstream requests (final responses)", labelNames: c, registry });
    this.rqCompleted = new BatchedCounter({ name: "envoy_cluster_upstream_rq_completed", help: "Upstream requests that completed (a response was received)", labelNames: c, registry });
    this.rqXx = new BatchedCounter({ name: "envoy_cluster_upstream_rq_xx", help: "Upstream responses by status class", labelNames: [...c, "envoy_response_code_class"], registry });
    this.rqCode = new BatchedCounter({ name: "envoy_cluster_upstream_rq", help: "Upstream responses by status code", labelNames: [...c, "envoy_response_code"], registry });
    this.rqTime = new BatchedHistogram({ name: "envoy_cluster_upstream_rq_time", help: "Request time to the response headers, ms", labelNames: c, buckets: ENVOY_BUCKETS_MS, registry });
    this.rqRetry = new BatchedCounter({ name: "envoy_cluster_upstream_rq_retry", help: "Retries sent", labelNames: c, registry });
    this.rqTimeout = new BatchedCounter({ name: "envoy_cluster_upstream_rq_timeout", help: "Requests that timed out (504)", labelNames: c, registry });
    this.rqOverflow = new BatchedCounter({ name: "envoy_cluster_upstream_rq_pending_overflow", help: "Requests refused by the circuit breaker (503 UO)", labelNames: c, registry });
    this.rqRetryOverflow = new BatchedCounter({ name: "envoy_cluster_upstream_rq_retry_overflow", help: "Retries not sent because of the retry budget", labelNames: c, registry });
    this.rqNoHealthy = new BatchedCounter({ name: "envoy_cluster_upstream_rq_none_healthy", help: "Requests answered 503 UH: no healthy host", labelNames: c, registry });
  }

  private of(cluster: string): ClusterChildren {
    let ch = this.children.get(cluster);
    if (!ch) {
      const v = clusterLabelValues(cluster);
      ch = {
        labels: v,
        total: this.rqTotal.labels(...v),
        completed: this.rqCompleted.labels(...v),
        time: this.rqTime.slot(...v),
        byClass: [1, 2, 3, 4, 5].map((c) => this.rqXx.labels(...v, String(c))),
        byCode: new Map(),
        retry: this.rqRetry.labels(...v),
        timeout: this.rqTimeout.labels(...v),
        overflow: this.rqOverflow.labels(...v),
        retryOverflow: this.rqRetryOverflow.labels(...v),
        noHealthy: this.rqNoHealthy.labels(...v),
        failed: 0,
      };
      this.children.set(cluster, ch);
    }
    return ch;
  }

  response(cluster: string, status: number, ms: number): void {
    const ch = this.of(cluster);
    ch.total.inc();
    ch.completed.inc();
    ch.time.observe(ms);
    const cls = Math.floor(status / 100);
    // Starting at 0 lets rate() see the first 5xx, and an error ratio read 0 rather than nothing.
    if (cls >= 1 && cls <= 5) ch.byClass[cls - 1]!.inc();
    let y = ch.byCode.get(status);
    if (!y) ch.byCode.set(status, (y = this.rqCode.labels(...ch.labels, String(status))));
    y.inc();
  }

  retry(cluster: string): void {
    this.of(cluster).retry.inc();
  }

  timeout(cluster: string): void {
    this.of(cluster).timeout.inc();
  }

  overflow(cluster: string): void {
    this.of(cluster).overflow.inc();
  }

  retryOverflow(cluster: string): void {
    this.of(cluster).retryOverflow.inc();
  }

  noHealthy(cluster: string): void {
    this.of(cluster).noHealthy.inc();
  }

  /** A request answered 503 UF after attempts on this cluster failed (connect failure, reset). */
  failed(cluster: string): void {
    this.of(cluster).failed++;
  }

  /** The clusters with request series so far. */
  clusterNames(): IterableIterator<string> {
    return this.children.keys();
  }

  /** The running totals of one cluster, or null before its first request. */
  reading(cluster: string): ClusterRequestReading | null {
    const ch = this.children.get(cluster);
    if (!ch) return null;
    const local = ch.timeout.value + ch.overflow.value + ch.noHealthy.value + ch.failed;
    return { requests: ch.total.value + local, errors: ch.byClass[4]!.value + local, timeBuckets: ch.time.counts, timeCount: ch.time.count };
  }
}
