// A mesh gateway's counters. Every connection the gateway does not forward is counted under the
// reason it was closed; the ones it forwards are counted per cluster. Cluster series carry the
// labels Consul's Envoy bootstrap gives a mesh gateway's clusters (`consul_destination_*` read
// from the cluster name, which for a local service is the service's SNI), and every series the
// gateway's own identity (`local_cluster`, `consul_source_*`), so Consul's dashboards select
// gateways as they select sidecars.
import type { Counter as PromCounter } from "prom-client";
import { Counter, type Registry } from "../telemetry/prom.js";
import type { HelloRefusalReason } from "../tls/client-hello.js";
import { CLUSTER_LABELS, clusterLabelValues, sourceLabels, type SourceTags } from "../telemetry/consul-tags.js";

export type GatewayRejection =
  | HelloRefusalReason
  /** The SNI is not one this gateway routes (not a mesh name, another trust domain, no such service). */
  | "unknown_sni"
  /** The cluster for the SNI has no healthy endpoint. */
  | "no_healthy_endpoint"
  /** Every endpoint tried (up to 3, as a sidecar's TCP connections) refused or timed out. */
  | "upstream_connect_failed"
  /** The cluster's MaxConnections circuit breaker was open (Envoy's UO). */
  | "upstream_overflow"
  /** Closed at accept: the gateway held its maximum of connections. */
  | "overflow"
  /** Closed at accept: too many connections were still sending their ClientHello. */
  | "overload";

type ClusterCounter = Counter<string>;
type Child = PromCounter.Internal;

/** One cluster's counters, label values resolved once (a connection only increments). */
export interface GatewayClusterStats {
  readonly forwarded: Child;
  /** Envoy's cluster byte counters: what the gateway passed to the cluster, and back. */
  readonly bytesSent: Child;
  readonly bytesReceived: Child;
  /** One per failed attempt, refused or reset (the connection may still succeed on another host). */
  readonly connectFailed: Child;
  readonly connectTimedOut: Child;
  /** Connections with no healthy, non-ejected endpoint to go to. */
  readonly noneHealthy: Child;
  /** Connections refused by the cluster's MaxConnections breaker. */
  readonly overflow: Child;
}

export class GatewayStats {
  readonly rejected: Counter<"reason">;
  readonly forwarded: ClusterCounter;
  readonly bytesSent: ClusterCounter;
  readonly bytesReceived: ClusterCounter;
  readonly connectFailed: ClusterCounter;
  readonly connectTimedOut: ClusterCounter;
  readonly noneHealthy: ClusterCounter;
  readonly overflow: ClusterCounter;
  /** Problems reading or applying the route table (the sidecar's metric of the same name). */
  readonly controlPlaneErrors: Counter<"control_plane" | "resource">;
  private readonly clusters = new Map<string, GatewayClusterStats>();

  /** Register once per registry (one gateway process, one set of series). */
  constructor(private readonly registry: Registry) {
    const perCluster = (name: string, help: string): ClusterCounter => new Counter({ name, help, labelNames: CLUSTER_LABELS, registers: [registry] });
    this.rejected = new Counter({ name: "meshproxy_gateway_rejected_total", help: "Gateway connections closed without being forwarded, by reason", labelNames: ["reason"], registers: [registry] });
    this.forwarded = perCluster("meshproxy_gateway_forwarded_total", "Gateway connections forwarded to a cluster (TLS passed through, never terminated)");
    this.bytesSent = perCluster("envoy_cluster_upstream_cx_tx_bytes_total", "Bytes the gateway sent to a cluster (TLS records, passed through)");
    this.bytesReceived = perCluster("envoy_cluster_upstream_cx_rx_bytes_total", "Bytes the gateway received from a cluster (TLS records, passed through)");
    this.connectFailed = perCluster("envoy_cluster_upstream_cx_connect_fail", "Upstream connect attempts refused or reset");
    this.connectTimedOut = perCluster("envoy_cluster_upstream_cx_connect_timeout", "Upstream connect attempts timed out");
    this.noneHealthy = perCluster("envoy_cluster_upstream_cx_none_healthy", "Connections refused because no healthy endpoint exists");
    this.overflow = perCluster("envoy_cluster_upstream_cx_overflow", "Connections refused by the cluster's MaxConnections circuit breaker");
    this.controlPlaneErrors = new Counter({ name: "meshproxy_control_plane_errors_total", help: "Route source read or apply failures (the previous routes stay in force)", labelNames: ["control_plane", "resource"], registers: [registry] });
  }

  /**
   * The gateway's identity on every series, as Consul's bootstrap tags a gateway's Envoy: its
   * service name (`local_cluster` and `consul_source_service`), namespace, partition and
   * datacenter. prom-client adds them at scrape time.
   */
  setSource(source: SourceTags): void {
    this.registry.setDefaultLabels(sourceLabels(source));
  }

  /** Cached per cluster name: made once (the route table's clusters when it is applied), then each connection only increments. */
  cluster(name: string): GatewayClusterStats {
    const cached = this.clusters.get(name);
    if (cached) return cached;
    const v = clusterLabelValues(name);
    const stats: GatewayClusterStats = {
      forwarded: this.forwarded.labels(...v),
      bytesSent: this.bytesSent.labels(...v),
      bytesReceived: this.bytesReceived.labels(...v),
      connectFailed: this.connectFailed.labels(...v),
      connectTimedOut: this.connectTimedOut.labels(...v),
      noneHealthy: this.noneHealthy.labels(...v),
      overflow: this.overflow.labels(...v),
    };
    // Envoy's counters exist, at 0, from the moment the cluster does: rates read 0, not nothing.
    for (const c of [stats.forwarded, stats.bytesSent, stats.bytesReceived, stats.connectFailed, stats.connectTimedOut, stats.noneHealthy, stats.overflow]) c.inc(0);
    this.clusters.set(name, stats);
    return stats;
  }
}
