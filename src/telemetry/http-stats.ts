// HTTP request metrics per cluster, with Envoy's Prometheus names and labels so existing
// dashboards work (shared/reference/data-plane-anchors.md §5). Series are cached per cluster and
// status code, and counters are batched (batched.ts): a request costs map lookups and additions;
// the time histogram is batched the same way.
import type { Registry } from "prom-client";
import { BatchedCounter, BatchedHistogram, type CountReading, type CountSlot, type TimeReading } from "./batched.js";
import { CLUSTER_LABELS, clusterLabelValues } from "./consul-tags.js";
import type { ConnectFailureReason } from "../http/retry.js";

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
}

/**
 * A cluster's request counts so far, as the app saw them: final answers (the upstream's, and the
 * 503 UF / 504 UT the proxy gave after a failed attempt), plus the requests refused before any
 * attempt (503 UH, UO), which the traffic page counts as errors of the cluster too.
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

  /**
   * `connectFailed` counts a failed connect in the cluster's connection series (Metrics.connectFailed),
   * registered with the listeners': a pooled HTTP connection that cannot be made counts there as an
   * L4 one does.
   */
  constructor(
    registry: Registry,
    readonly connectFailed: (cluster: string, reason: ConnectFailureReason) => void,
  ) {
    const c = CLUSTER_LABELS;
    this.rqTotal = new BatchedCounter({ name: "envoy_cluster_upstream_rq_total", help: "Upstream requests (final responses)", labelNames: c, registry });
    this.rqCompleted = new BatchedCounter({ name: "envoy_cluster_upstream_rq_completed", help: "Upstream requests completed: a response, or the proxy's 503 UF / 504 UT after a failed attempt", labelNames: c, registry });
    this.rqXx = new BatchedCounter({ name: "envoy_cluster_upstream_rq_xx", help: "Upstream responses by status class (with the proxy's 503 UF / 504 UT)", labelNames: [...c, "envoy_response_code_class"], registry });
    this.rqCode = new BatchedCounter({ name: "envoy_cluster_upstream_rq", help: "Upstream responses by status code (with the proxy's 503 UF / 504 UT)", labelNames: [...c, "envoy_response_code"], registry });
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
      };
      this.children.set(cluster, ch);
    }
    return ch;
  }

  response(cluster: string, status: number, ms: number): void {
    const ch = this.of(cluster);
    ch.time.observe(ms);
    this.charge(ch, status);
  }

  /**
   * A final answer of the cluster, from the upstream or from the proxy after an attempt on the
   * cluster failed: Envoy's router charges its own 504 (timeout) and 503 (reset, connect failure)
   * to the cluster's response-code series too (chargeUpstreamAbort), so an error-rate panel built
   * on upstream_rq_xx sees a subset that refuses connections.
   */
  private charge(ch: ClusterChildren, status: number): void {
    ch.total.inc();
    ch.completed.inc();
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

  /** The request timed out and the proxy answered 504 UT. */
  timeout(cluster: string): void {
    const ch = this.of(cluster);
    ch.timeout.inc();
    this.charge(ch, 504);
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

  /**
   * A request answered locally after attempts on this cluster failed: 503 UF (connect failure,
   * reset) or 502 UPE (the answer did not parse).
   */
  failed(cluster: string, status: 502 | 503 = 503): void {
    this.charge(this.of(cluster), status);
  }

  /** The clusters with request series so far. */
  clusterNames(): IterableIterator<string> {
    return this.children.keys();
  }

  /** The running totals of one cluster, or null before its first request. */
  reading(cluster: string): ClusterRequestReading | null {
    const ch = this.children.get(cluster);
    if (!ch) return null;
    // 504 UT and 503 UF are in the response series already; UO and UH never reached the cluster.
    const local = ch.overflow.value + ch.noHealthy.value;
    return { requests: ch.total.value + local, errors: ch.byClass[4]!.value + local, timeBuckets: ch.time.counts, timeCount: ch.time.count };
  }
}
