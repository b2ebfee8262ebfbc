// /clusters in Envoy's two shapes, so runbooks and scripts written for Envoy's admin read ours:
// `cluster::host:port::stat::value` lines, and with ?format=json the cluster_statuses document.
import type { ClusterStatus, HostStatus } from "../cluster/runtime.js";

function addr(h: HostStatus): string {
  return h.host.includes(":") ? `[${h.host}]:${h.port}` : `${h.host}:${h.port}`;
}

/** Envoy's health_flags: `healthy`, or each reason the host is not used, each after a slash. */
export function healthFlags(h: HostStatus): string {
  const flags = [h.ejected ? "/failed_outlier_check" : "", h.healthy ? "" : "/failed_eds_health"].join("");
  return flags === "" ? "healthy" : flags;
}

export function clustersText(clusters: readonly ClusterStatus[]): string {
  const lines: string[] = [];
  for (const c of [...clusters].sort((a, b) => a.name.localeCompare(b.name))) {
    const p = `${c.name}::`;
    lines.push(
      `${p}observability_name::${c.name}`,
      `${p}default_priority::max_connections::${c.limits.maxConnections}`,
      `${p}default_priority::max_pending_requests::${c.limits.maxPendingRequests}`,
      `${p}default_priority::max_requests::${c.limits.maxRequests}`,
      `${p}default_priority::max_retries::${c.limits.maxRetries}`,
      // With a retry budget, Envoy ignores max_retries: the budget is what limits retries.
      ...(c.limits.retryBudget
        ? [`${p}default_priority::retry_budget::budget_percent::${c.limits.retryBudget.budgetPercent}`, `${p}default_priority::retry_budget::min_retry_concurrency::${c.limits.retryBudget.minRetryConcurrency}`]
        : []),
      `${p}outlier_detection::${c.outlierDetection ? "enabled" : "disabled"}`,
      `${p}lb_healthy_panic::${c.panic}`,
      `${p}rq_active::${c.activeRequests}`,
      `${p}added_via_api::true`,
    );
    for (const h of c.hosts) {
      const hp = `${p}${addr(h)}::`;
      lines.push(
        `${hp}hostname::${h.id}`,
        `${hp}health_flags::${healthFlags(h)}`,
        `${hp}ejection_time_ms::${h.ejectionTimeMs}`,
        `${hp}connect_backoff_ms::${h.connectBackoffMs}`,
        `${hp}rq_active::${h.activeRequests}`,
      );
    }
  }
  return lines.map((l) => `${l}\n`).join("");
}

export function clustersJson(clusters: readonly ClusterStatus[]): unknown {
  return {
    cluster_statuses: [...clusters]
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((c) => ({
        name: c.name,
        observability_name: c.name,
        service: c.service,
        sni: c.sni,
        added_via_api: true,
        outlier_detection: c.outlierDetection,
        lb_healthy_panic: c.panic,
        rq_active: c.activeRequests,
        circuit_breakers: {
          thresholds: [
            {
              priority: "DEFAULT",
              max_connections: c.limits.maxConnections,
              max_pending_requests: c.limits.maxPendingRequests,
              max_requests: c.limits.maxRequests,
              max_retries: c.limits.maxRetries,
              // Envoy's CircuitBreakers.Thresholds.RetryBudget shape.
              ...(c.limits.retryBudget ? { retry_budget: { budget_percent: { value: c.limits.retryBudget.budgetPercent }, min_retry_concurrency: c.limits.retryBudget.minRetryConcurrency } } : {}),
            },
          ],
        },
        host_statuses: c.hosts.map((h) => ({
          address: { socket_address: { address: h.host, port_value: h.port } },
          hostname: h.id,
          health_status: { eds_health_status: h.healthy ? "HEALTHY" : "UNHEALTHY", ...(h.ejected ? { failed_outlier_check: true } : {}) },
          health_flags: healthFlags(h),
          ejected: h.ejected,
          ejection_time_ms: h.ejectionTimeMs,
          connect_backoff_ms: h.connectBackoffMs,
          stats: [{ name: "rq_active", type: "GAUGE", value: h.activeRequests }],
          metadata: h.meta,
        })),
      })),
  };
}
