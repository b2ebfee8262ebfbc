// HTTP request metrics per cluster, with Envoy's Prometheus names and labels so existing
// dashboards work (shared/reference/data-plane-anchors.md §5). Series are cached per cluster and
// status code, and counters are batched (batched.ts): a request costs map lookups and additions;
// only the time histogram goes through prom-client on the request path.
import { Histogram, type Registry } from "prom-client";
import { BatchedCounter, type CountSlot } from "./batched.js";

/** Envoy's default histogram buckets, in milliseconds. */
export const ENVOY_BUCKETS_MS = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000];

interface ClusterChildren {
  total: CountSlot;
  time: Histogram.Internal<string>;
  byClass: Map<number, CountSlot>;
  byCode: Map<number, CountSlot>;
  retry: CountSlot;
  timeout: CountSlot;
  overflow: CountSlot;
  retryOverflow: CountSlot;
  noHealthy: CountSlot;
}

export class HttpStats {
  private readonly rqTotal: BatchedCounter<"envoy_cluster_name">;
  private readonly rqXx: BatchedCounter<"envoy_cluster_name" | "envoy_response_code_class">;
  private readonly rqCode: BatchedCounter<"envoy_cluster_name" | "envoy_response_code">;
  private readonly rqTime: Histogram<"envoy_cluster_name">;
  private readonly rqRetry: BatchedCounter<"envoy_cluster_name">;
  private readonly rqTimeout: BatchedCounter<"envoy_cluster_name">;
  private readonly rqOverflow: BatchedCounter<"envoy_cluster_name">;
  private readonly rqRetryOverflow: BatchedCounter<"envoy_cluster_name">;
  private readonly rqNoHealthy: BatchedCounter<"envoy_cluster_name">;
  private readonly children = new Map<string, ClusterChildren>();

  constructor(registry: Registry) {
    const registers = [registry];
    const c = "envoy_cluster_name";
    this.rqTotal = new BatchedCounter({ name: "envoy_cluster_upstream_rq_total", help: "Upstream requests (final responses)", labelNames: [c], registry });
    this.rqXx = new BatchedCounter({ name: "envoy_cluster_upstream_rq_xx", help: "Upstream responses by status class", labelNames: [c, "envoy_response_code_class"], registry });
    this.rqCode = new BatchedCounter({ name: "envoy_cluster_upstream_rq", help: "Upstream responses by status code", labelNames: [c, "envoy_response_code"], registry });
    this.rqTime = new Histogram({ name: "envoy_cluster_upstream_rq_time", help: "Request time to the response headers, ms", labelNames: [c], buckets: ENVOY_BUCKETS_MS, registers });
    this.rqRetry = new BatchedCounter({ name: "envoy_cluster_upstream_rq_retry", help: "Retries sent", labelNames: [c], registry });
    this.rqTimeout = new BatchedCounter({ name: "envoy_cluster_upstream_rq_timeout", help: "Requests that timed out (504)", labelNames: [c], registry });
    this.rqOverflow = new BatchedCounter({ name: "envoy_cluster_upstream_rq_pending_overflow", help: "Requests refused by the circuit breaker (503 UO)", labelNames: [c], registry });
    this.rqRetryOverflow = new BatchedCounter({ name: "envoy_cluster_upstream_rq_retry_overflow", help: "Retries not sent because of the retry budget", labelNames: [c], registry });
    this.rqNoHealthy = new BatchedCounter({ name: "envoy_cluster_upstream_rq_none_healthy", help: "Requests answered 503 UH: no healthy host", labelNames: [c], registry });
  }

  private of(cluster: string): ClusterChildren {
    let ch = this.children.get(cluster);
    if (!ch) {
      ch = {
        total: this.rqTotal.labels(cluster),
        time: this.rqTime.labels(cluster),
        byClass: new Map(),
        byCode: new Map(),
        retry: this.rqRetry.labels(cluster),
        timeout: this.rqTimeout.labels(cluster),
        overflow: this.rqOverflow.labels(cluster),
        retryOverflow: this.rqRetryOverflow.labels(cluster),
        noHealthy: this.rqNoHealthy.labels(cluster),
      };
      this.children.set(cluster, ch);
    }
    return ch;
  }

  response(cluster: string, status: number, ms: number): void {
    const ch = this.of(cluster);
    ch.total.inc();
    ch.time.observe(ms);
    const cls = Math.floor(status / 100);
    let x = ch.byClass.get(cls);
    if (!x) ch.byClass.set(cls, (x = this.rqXx.labels(cluster, String(cls))));
    x.inc();
    let y = ch.byCode.get(status);
    if (!y) ch.byCode.set(status, (y = this.rqCode.labels(cluster, String(status))));
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
}
