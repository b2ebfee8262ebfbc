// A mesh gateway's counters. Every connection the gateway does not forward is counted under the
// reason it was closed; the ones it forwards are counted per cluster, under Envoy's label name.
import { Counter, type Registry } from "prom-client";
import type { HelloRefusalReason } from "../tls/client-hello.js";

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

export class GatewayStats {
  readonly rejected: Counter<"reason">;
  readonly forwarded: Counter<"envoy_cluster_name">;
  /** Envoy's cluster byte counters: what the gateway passed to the cluster, and back. */
  readonly bytesSent: Counter<"envoy_cluster_name">;
  readonly bytesReceived: Counter<"envoy_cluster_name">;
  /** One per failed attempt, refused or reset (the connection may still succeed on another host). */
  readonly connectFailed: Counter<"envoy_cluster_name">;
  readonly connectTimedOut: Counter<"envoy_cluster_name">;
  /** Connections with no healthy, non-ejected endpoint to go to. */
  readonly noneHealthy: Counter<"envoy_cluster_name">;
  /** Connections refused by the cluster's MaxConnections breaker. */
  readonly overflow: Counter<"envoy_cluster_name">;
  /** Problems reading or applying the route table (the sidecar's metric of the same name). */
  readonly controlPlaneErrors: Counter<"control_plane" | "resource">;

  /** Register once per registry (one gateway process, one set of series). */
  constructor(registry: Registry) {
    this.rejected = new Counter({ name: "meshproxy_gateway_rejected_total", help: "Gateway connections closed without being forwarded, by reason", labelNames: ["reason"], registers: [registry] });
    this.forwarded = new Counter({ name: "meshproxy_gateway_forwarded_total", help: "Gateway connections forwarded to a cluster (TLS passed through, never terminated)", labelNames: ["envoy_cluster_name"], registers: [registry] });
    this.bytesSent = new Counter({ name: "envoy_cluster_upstream_cx_tx_bytes_total", help: "Bytes the gateway sent to a cluster (TLS records, passed through)", labelNames: ["envoy_cluster_name"], registers: [registry] });
    this.bytesReceived = new Counter({ name: "envoy_cluster_upstream_cx_rx_bytes_total", help: "Bytes the gateway received from a cluster (TLS records, passed through)", labelNames: ["envoy_cluster_name"], registers: [registry] });
    this.connectFailed = new Counter({ name: "envoy_cluster_upstream_cx_connect_fail", help: "Upstream connect attempts refused or reset", labelNames: ["envoy_cluster_name"], registers: [registry] });
    this.connectTimedOut = new Counter({ name: "envoy_cluster_upstream_cx_connect_timeout", help: "Upstream connect attempts timed out", labelNames: ["envoy_cluster_name"], registers: [registry] });
    this.noneHealthy = new Counter({ name: "envoy_cluster_upstream_cx_none_healthy", help: "Connections refused because no healthy endpoint exists", labelNames: ["envoy_cluster_name"], registers: [registry] });
    this.controlPlaneErrors = new Counter({ name: "meshproxy_control_plane_errors_total", help: "Route source read or apply failures (the previous routes stay in force)", labelNames: ["control_plane", "resource"], registers: [registry] });
    this.overflow = new Counter({ name: "envoy_cluster_upstream_cx_overflow", help: "Connections refused by the cluster's MaxConnections circuit breaker", labelNames: ["envoy_cluster_name"], registers: [registry] });
  }
}
