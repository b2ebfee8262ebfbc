// HTTP request metrics per cluster, with Envoy's Prometheus names and labels so existing
// dashboards work (shared/reference/data-plane-anchors.md §5). Label children are cached per
// cluster and status code: a request costs map lookups, not label hashing.
import { Counter, Histogram, type Registry } from "prom-client";

/** Envoy's default histogram buckets, in milliseconds. */
export const ENVOY_BUCKETS_MS = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000];

interface ClusterChildren {
  total: Counter.Internal;
  time: Histogram.Internal<string>;
  byClass: Map<number, Counter.Internal>;
  byCode: Map<number, Counter.Internal>;
  retry: Counter.Internal;
  timeout: Counter.Internal;
  overflow: Counter.Internal;
  retryOverflow: Counter.Internal;
  noHealthy: Counter.Internal;
}

export class HttpStats {
  private readonly rqTotal: Counter<"envoy_cluster_name">;
  private readonly rqXx: Counter<"envoy_cluster_name" | "envoy_response_code_class">;
  private readonly rqCode: Counter<"envoy_cluster_name" | "envoy_response_code">;
  private readonly rqTime: Histogram<"envoy_cluster_name">;
  private readonly rqRetry: Counter<"envoy_cluster_name">;
  private readonly rqTimeout: Counter<"envoy_cluster_name">;
  private readonly rqOverflow: Counter<"envoy_cluster_name">;
  private readonly rqRetryOverflow: Counter<"envoy_cluster_name">;
  private readonly rqNoHealthy: Counter<"envoy_cluster_name">;
  private readonly children = new Map<string, ClusterChildren>();

  constructor(registry: Registry) {
    const registers = [registry];
    const c = "envoy_cluster_name";
    this.rqTotal = new Counter({ name: "envoy_cluster_upstream_rq_total", help: "Upstream requests (final responses)", labelNames: [c], registers });
    this.rqXx = new Counter({ name: "envoy_cluster_upstream_rq_xx", help: "Upstream responses by status class", labelNames: [c, "envoy_response_code_class"], registers });
    this.rqCode = new Counter({ name: "envoy_cluster_upstream_rq", help: "Upstream responses by status code", labelNames: [c, "envoy_response_code"], registers });
    this.rqTime = new Histogram({ name: "envoy_cluster_upstream_rq_time", help: "Request time to the response headers, ms", labelNames: [c], buckets: ENVOY_BUCKETS_MS, registers });
    this.rqRetry = new Counter({ name: "envoy_cluster_upstream_rq_retry", help: "Retries sent", labelNames: [c], registers });
    this.rqTimeout = new Counter({ name: "envoy_cluster_upstream_rq_timeout", help: "Requests that timed out (504)", labelNames: [c], registers });
    this.rqOverflow = new Counter({ name: "envoy_cluster_upstream_rq_pending_overflow", help: "Requests refused by the circuit breaker (503 UO)", labelNames: [c], registers });
    this.rqRetryOverflow = new Counter({ name: "envoy_cluster_upstream_rq_retry_overflow", help: "Retries not sent because of the retry budget", labelNames: [c], registers });
    this.rqNoHealthy = new Counter({ name: "envoy_cluster_upstream_rq_none_healthy", help: "Requests answered 503 UH: no healthy host", labelNames: [c], registers });
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
