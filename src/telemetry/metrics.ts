// The proxy's metrics, in Envoy's Prometheus names and labels where Envoy has one
// (shared/reference/data-plane-anchors.md §5), so existing dashboards work; our own under
// `meshproxy_`. Label children are resolved once per listener or cluster, never per chunk.
import { registerHeapLive } from "./heap-live.js";
import { Counter, Gauge, Registry, collectProcessMetrics } from "./prom.js";
import { BatchedCounter, BatchedGauge, BatchedHistogram, type CountSlot, type LevelSlot, type TimeSlot } from "./batched.js";
import { ENVOY_BUCKETS_MS, HttpStats } from "./http-stats.js";
import { CLUSTER_LABELS, clusterLabelValues, sourceLabels, type SourceTags } from "./consul-tags.js";
import { FilterStats } from "./filter-stats.js";
import type { ConnectFailureReason } from "../http/retry.js";

export type InboundRejection =
  | "no_client_cert"
  | "untrusted_certificate"
  | "expired_certificate"
  | "bad_certificate"
  | "no_uri_san"
  | "multiple_uri_sans"
  | "not_a_service_id"
  | "wrong_trust_domain"
  | "denied_by_intention"
  | "handshake_timeout"
  | "tls_error"
  | "local_app_unreachable"
  | RequestRefusal;

/** HTTP requests refused before authorization or routing (request-target.ts, upgrade-relay.ts). */
export type RequestRefusal = "invalid_request_target" | "upgrade_not_allowed" | "upgrade_with_body";

const REQUEST_REFUSALS: readonly RequestRefusal[] = ["invalid_request_target", "upgrade_not_allowed", "upgrade_with_body"];

export interface ListenerStats {
  cxTotal: CountSlot;
  cxActive: LevelSlot;
  cxDestroy: CountSlot;
  /** Connection lifetime, ms (Envoy's downstream_cx_length_ms). */
  cxLengthMs: TimeSlot;
  /** Closed at accept: the listener was at -max-connections (Envoy's listener connection limit). */
  cxOverflow: CountSlot;
  /** Closed at accept: -max-tls-handshakes were in flight (our overload action). */
  cxOverloadReject: CountSlot;
  /** TLS handshakes in flight on the public listener. */
  handshakesActive: LevelSlot;
}

export interface ClusterStats {
  cxTotal: CountSlot;
  cxActive: LevelSlot;
  cxConnectFail: CountSlot;
  cxConnectTimeout: CountSlot;
  cxNoHealthyUpstream: CountSlot;
  /** Connections refused by the cluster's MaxConnections breaker (Envoy's upstream_cx_overflow, flag UO). */
  cxOverflow: CountSlot;
  rxBytes: CountSlot;
  txBytes: CountSlot;
  /** Time to a usable upstream connection (TCP + TLS), ms. */
  cxConnectMs: TimeSlot;
  /** Upstream connection lifetime, ms. */
  cxLengthMs: TimeSlot;
  /** TLS handshakes completed to this cluster, and how many resumed a cached session. */
  sslHandshake: CountSlot;
  sslSessionReused: CountSlot;
}

export class Metrics {
  readonly registry = new Registry();
  /** tcp_proxy and HTTP connection manager stats of the listeners (Consul's stat prefixes). */
  readonly filters: FilterStats;
  private readonly clusters = new Map<string, ClusterStats>();
  private httpStats: HttpStats | undefined;
  private readonly listenerCx: BatchedCounter<string>;
  private readonly listenerActive: BatchedGauge<string>;
  private readonly listenerDestroy: BatchedCounter<string>;
  private readonly listenerOverflow: BatchedCounter<string>;
  private readonly listenerOverloadReject: BatchedCounter<string>;
  private readonly listenerHandshakes: BatchedGauge<string>;
  private readonly clusterCx: BatchedCounter<string>;
  private readonly clusterActive: BatchedGauge<string>;
  private readonly clusterConnectFail: BatchedCounter<string>;
  private readonly clusterConnectTimeout: BatchedCounter<string>;
  private readonly clusterNoHealthy: BatchedCounter<string>;
  private readonly clusterCxOverflow: BatchedCounter<string>;
  private readonly clusterRx: BatchedCounter<string>;
  private readonly clusterTx: BatchedCounter<string>;
  private readonly listenerLength: BatchedHistogram<string>;
  private readonly clusterConnectMs: BatchedHistogram<string>;
  private readonly clusterLength: BatchedHistogram<string>;
  private readonly clusterSslHandshake: BatchedCounter<string>;
  private readonly clusterSslReused: BatchedCounter<string>;
  readonly inboundRejected: Counter<"reason">;
  readonly outboundRejected: Counter<"reason">;
  readonly upstreamIdentityRejected: Counter<"envoy_cluster_name">;
  readonly controlPlaneErrors: Counter<"control_plane" | "resource">;
  readonly controlPlaneLastSuccess: Gauge<"control_plane">;
  readonly snapshotsApplied: Counter<"control_plane">;
  readonly snapshotsRejected: Counter<"control_plane" | "field">;
  readonly certExpiry: Gauge<"kind" | "serial">;
  readonly configErrors: Counter<"kind">;
  readonly tracingExportFailures: Counter<"reason">;
  readonly accessLogDropped: Counter<string>;
  readonly adminRejected: Counter<"listener" | "reason">;
  readonly adminSplitChanges: Counter<"result">;
  // With -concurrency N every worker applies each Snapshot: the aggregate of a Snapshot count or
  // timestamp is the figure of the furthest worker (max), of a certificate expiry the nearest (min).

  constructor(opts: { processMetrics?: boolean } = {}) {
    const r = [this.registry];
    this.filters = new FilterStats(this.registry);
    this.listenerCx = new BatchedCounter({ name: "envoy_listener_downstream_cx_total", help: "Downstream connections accepted", labelNames: ["envoy_listener_address"], registry: this.registry });
    this.listenerActive = new BatchedGauge({ name: "envoy_listener_downstream_cx_active", help: "Downstream connections open", labelNames: ["envoy_listener_address"], registry: this.registry });
    this.listenerDestroy = new BatchedCounter({ name: "envoy_listener_downstream_cx_destroy", help: "Downstream connections closed", labelNames: ["envoy_listener_address"], registry: this.registry });
    this.listenerOverflow = new BatchedCounter({ name: "envoy_listener_downstream_cx_overflow", help: "Downstream connections closed at accept because the listener was at its connection limit (-max-connections)", labelNames: ["envoy_listener_address"], registry: this.registry });
    this.listenerOverloadReject = new BatchedCounter({ name: "envoy_listener_downstream_cx_overload_reject", help: "Downstream connections closed at accept because too many TLS handshakes were in flight (-max-tls-handshakes)", labelNames: ["envoy_listener_address"], registry: this.registry });
    this.listenerHandshakes = new BatchedGauge({ name: "meshproxy_listener_downstream_tls_handshakes_active", help: "TLS handshakes in flight on the public listener", labelNames: ["envoy_listener_address"], registry: this.registry });
    this.clusterCx = new BatchedCounter({ name: "envoy_cluster_upstream_cx_total", help: "Upstream connections opened", labelNames: CLUSTER_LABELS, registry: this.registry });
    this.clusterActive = new BatchedGauge({ name: "envoy_cluster_upstream_cx_active", help: "Upstream connections open", labelNames: CLUSTER_LABELS, registry: this.registry });
    this.clusterConnectFail = new BatchedCounter({ name: "envoy_cluster_upstream_cx_connect_fail", help: "Upstream connect failures (refused, reset, TLS, identity)", labelNames: CLUSTER_LABELS, registry: this.registry });
    this.clusterConnectTimeout = new BatchedCounter({ name: "envoy_cluster_upstream_cx_connect_timeout", help: "Upstream connect timeouts", labelNames: CLUSTER_LABELS, registry: this.registry });
    this.clusterNoHealthy = new BatchedCounter({ name: "envoy_cluster_upstream_cx_none_healthy", help: "Connections refused because no healthy endpoint exists", labelNames: CLUSTER_LABELS, registry: this.registry });
    this.clusterCxOverflow = new BatchedCounter({ name: "envoy_cluster_upstream_cx_overflow", help: "Connections refused by the cluster's MaxConnections circuit breaker", labelNames: CLUSTER_LABELS, registry: this.registry });
    this.clusterRx = new BatchedCounter({ name: "envoy_cluster_upstream_cx_rx_bytes_total", help: "Bytes received from upstream", labelNames: CLUSTER_LABELS, registry: this.registry });
    this.clusterTx = new BatchedCounter({ name: "envoy_cluster_upstream_cx_tx_bytes_total", help: "Bytes sent to upstream", labelNames: CLUSTER_LABELS, registry: this.registry });
    this.listenerLength = new BatchedHistogram({ name: "envoy_listener_downstream_cx_length_ms", help: "Downstream connection lifetime, ms", labelNames: ["envoy_listener_address"], buckets: ENVOY_BUCKETS_MS, registry: this.registry });
    this.clusterConnectMs = new BatchedHistogram({ name: "envoy_cluster_upstream_cx_connect_ms", help: "Time to establish an upstream connection (TCP and TLS), ms", labelNames: CLUSTER_LABELS, buckets: ENVOY_BUCKETS_MS, registry: this.registry });
    this.clusterLength = new BatchedHistogram({ name: "envoy_cluster_upstream_cx_length_ms", help: "Upstream connection lifetime, ms", labelNames: CLUSTER_LABELS, buckets: ENVOY_BUCKETS_MS, registry: this.registry });
    this.clusterSslHandshake = new BatchedCounter({ name: "envoy_cluster_ssl_handshake", help: "Upstream TLS handshakes completed", labelNames: CLUSTER_LABELS, registry: this.registry });
    this.clusterSslReused = new BatchedCounter({ name: "envoy_cluster_ssl_session_reused", help: "Upstream TLS handshakes that resumed a cached session", labelNames: CLUSTER_LABELS, registry: this.registry });
    this.inboundRejected = new Counter({ name: "meshproxy_inbound_rejected_total", help: "Inbound connections closed before reaching the app, by reason", labelNames: ["reason"], registers: r });
    this.outboundRejected = new Counter({ name: "meshproxy_outbound_rejected_total", help: "Requests from the local app refused by an upstream listener before routing, by reason", labelNames: ["reason"], registers: r });
    this.upstreamIdentityRejected = new Counter({ name: "meshproxy_upstream_identity_rejected_total", help: "Upstream servers refused because their SPIFFE ID was not the expected one", labelNames: ["envoy_cluster_name"], registers: r });
    this.controlPlaneErrors = new Counter({ name: "meshproxy_control_plane_errors_total", help: "Control-plane fetch or parse failures", labelNames: ["control_plane", "resource"], registers: r });
    this.controlPlaneLastSuccess = new Gauge({ name: "meshproxy_control_plane_last_success_timestamp_seconds", help: "When the last good Snapshot was applied", labelNames: ["control_plane"], registers: r, aggregator: "max" });
    this.snapshotsApplied = new Counter({ name: "meshproxy_snapshots_applied_total", help: "Snapshots applied", labelNames: ["control_plane"], registers: r, aggregator: "max" });
    this.snapshotsRejected = new Counter({ name: "meshproxy_snapshots_rejected_total", help: "Snapshots rejected by validation (the last good one kept serving)", labelNames: ["control_plane", "field"], registers: r, aggregator: "max" });
    this.certExpiry = new Gauge({ name: "meshproxy_certificate_expiry_timestamp_seconds", help: "Expiry of the leaf and root certificates in use", labelNames: ["kind", "serial"], registers: r, aggregator: "min" });
    this.configErrors = new Counter({ name: "meshproxy_config_errors_total", help: "Bad configuration input rejected (flags, files)", labelNames: ["kind"], registers: r });
    this.tracingExportFailures = new Counter({ name: "meshproxy_tracing_export_failures_total", help: "Span batches the OTLP exporter could not deliver (the spans are dropped)", labelNames: ["reason"], registers: r });
    this.adminRejected = new Counter({ name: "meshproxy_admin_rejected_total", help: "Requests to the admin API or metrics listener refused as coming from a browser page (DNS rebinding, cross-origin, form body)", labelNames: ["listener", "reason"], registers: r });
    this.adminSplitChanges = new Counter({ name: "meshproxy_admin_split_changes_total", help: "Split weight changes asked for through the admin API (POST /splits/<service>), by result", labelNames: ["result"], registers: r });
    this.accessLogDropped = new Counter({ name: "meshproxy_access_log_dropped_total", help: "Access-log lines dropped because the destination could not keep up", registers: r });
    for (const reason of ["no_client_cert", "untrusted_certificate", "expired_certificate", "bad_certificate", "no_uri_san", "multiple_uri_sans", "not_a_service_id", "wrong_trust_domain", "denied_by_intention", "handshake_timeout", "tls_error", "local_app_unreachable", ...REQUEST_REFUSALS] satisfies InboundRejection[]) {
      this.inboundRejected.labels(reason).inc(0);
    }
    for (const reason of REQUEST_REFUSALS) this.outboundRejected.labels(reason).inc(0);
    if (opts.processMetrics !== false) {
      collectProcessMetrics(this.registry);
      registerHeapLive(this.registry);
    }
  }

  /**
   * Consul's fixed tags (local_cluster, consul_source_*) on every series of this registry, set
   * when a Snapshot names the proxy's service; prom-client adds them at scrape time only.
   */
  /** Request stats per cluster, made on first use (one registration per registry). */
  get http(): HttpStats {
    return (this.httpStats ??= new HttpStats(this.registry, (cluster, reason) => this.connectFailed(cluster, reason)));
  }

  /**
   * One attempt to connect to a host of `cluster` failed (an L4 stream's, a pooled HTTP
   * connection's, the native library's dial), counted as Envoy counts it: a timeout in
   * cx_connect_timeout, anything else (refused, reset, TLS) in cx_connect_fail, and a peer with the
   * wrong identity also in meshproxy_upstream_identity_rejected_total.
   */
  connectFailed(cluster: string, reason: ConnectFailureReason): void {
    const stats = this.cluster(cluster);
    if (reason === "timeout") stats.cxConnectTimeout.inc();
    else stats.cxConnectFail.inc();
    if (reason === "identity") this.upstreamIdentityRejected.labels(cluster).inc();
  }

  setSource(source: SourceTags): void {
    this.registry.setDefaultLabels(sourceLabels(source));
  }

  listener(address: string): ListenerStats {
    const a = envoyListenerAddress(address);
    return {
      cxTotal: this.listenerCx.labels(a),
      cxActive: this.listenerActive.labels(a),
      cxDestroy: this.listenerDestroy.labels(a),
      cxLengthMs: this.listenerLength.slot(a),
      cxOverflow: this.listenerOverflow.labels(a),
      cxOverloadReject: this.listenerOverloadReject.labels(a),
      handshakesActive: this.listenerHandshakes.labels(a),
    };
  }

  /** Cached per cluster name: the split-route path asks for another cluster's stats per connection. */
  cluster(name: string): ClusterStats {
    const cached = this.clusters.get(name);
    if (cached) return cached;
    const v = clusterLabelValues(name);
    const stats: ClusterStats = {
      cxTotal: this.clusterCx.labels(...v),
      cxActive: this.clusterActive.labels(...v),
      cxConnectFail: this.clusterConnectFail.labels(...v),
      cxConnectTimeout: this.clusterConnectTimeout.labels(...v),
      cxNoHealthyUpstream: this.clusterNoHealthy.labels(...v),
      cxOverflow: this.clusterCxOverflow.labels(...v),
      rxBytes: this.clusterRx.labels(...v),
      txBytes: this.clusterTx.labels(...v),
      cxConnectMs: this.clusterConnectMs.slot(...v),
      cxLengthMs: this.clusterLength.slot(...v),
      sslHandshake: this.clusterSslHandshake.labels(...v),
      sslSessionReused: this.clusterSslReused.labels(...v),
    };
    this.clusters.set(name, stats);
    return stats;
  }

  reject(reason: InboundRejection): void {
    this.inboundRejected.labels(reason).inc();
  }
}

/** Envoy's `envoy_listener_address` form of `host:port`: `127.0.0.1_21000`. */
export function envoyListenerAddress(address: string): string {
  return address.replace(/:(\d+)$/, "_$1");
}
