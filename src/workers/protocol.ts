// The messages between the primary and its workers under -concurrency N, over node:cluster's IPC
// channel with "advanced" serialization (structured clone: a Snapshot's Dates arrive as Dates).
// The channel is a pipe between the two processes: the leaf's private key crosses it inside the
// Snapshot and never touches a disk or a log. Every message is checked on arrival; one that does
// not match is a bug, logged and dropped, never acted on.
import type { Snapshot } from "../config/snapshot.js";
import type { ClusterStatus } from "../cluster/runtime.js";
import type { ProxyAddresses } from "../proxy.js";
import type { Level } from "../telemetry/log.js";
import type { MetricObjectWithValues, MetricValue } from "prom-client";
import type { ClusterRequestReading } from "../telemetry/http-stats.js";

/** Environment of a forked worker: its index (0-based and kept across restarts, Envoy's worker_N). */
export const WORKER_INDEX_ENV = "MESHPROXY_WORKER_INDEX";
/** The primary's control-plane kind, for the worker's metric labels and log lines. */
export const WORKER_CONTROL_PLANE_ENV = "MESHPROXY_WORKER_CONTROL_PLANE";

export type WorkerMetrics = Array<MetricObjectWithValues<MetricValue<string>>>;

export type ToWorker =
  | { readonly t: "snapshot"; readonly snapshot: Snapshot }
  | { readonly t: "drain" }
  | { readonly t: "clusters"; readonly id: number }
  | { readonly t: "metrics"; readonly id: number }
  | { readonly t: "readings"; readonly id: number }
  | { readonly t: "log-level"; readonly level: Level }
  /** POST /healthcheck/fail or /healthcheck/ok on the primary: each worker's server state follows. */
  | { readonly t: "health-check"; readonly failed: boolean }
  /** SIGUSR1 on the primary (log rotation): each worker opens its -access-log file again. */
  | { readonly t: "reopen-logs" };

export type FromWorker =
  /** The worker listens for messages: send it the current Snapshot. */
  | { readonly t: "hello" }
  | { readonly t: "ready"; readonly addresses: ProxyAddresses }
  | { readonly t: "applied"; readonly version: number }
  /** The first Snapshot could not be served (a port in use): the worker exits after this. */
  | { readonly t: "failed"; readonly error: string; readonly listener: string | null }
  | { readonly t: "clusters"; readonly id: number; readonly clusters: readonly ClusterStatus[] }
  | { readonly t: "metrics"; readonly id: number; readonly metrics: WorkerMetrics }
  /** Each routed cluster's request totals, for the traffic page. */
  | { readonly t: "readings"; readonly id: number; readonly readings: ReadonlyArray<readonly [string, ClusterRequestReading]> }
  | { readonly t: "stopped" };

const TO_WORKER = new Set(["snapshot", "drain", "clusters", "metrics", "readings", "log-level", "health-check", "reopen-logs"]);
const FROM_WORKER = new Set(["hello", "ready", "applied", "failed", "clusters", "metrics", "readings", "stopped"]);

function tagged(m: unknown): m is { t: string } {
  return typeof m === "object" && m !== null && "t" in m && typeof m.t === "string";
}

/**
 * Our own processes send these, so the check is of the tag alone: a message without one of ours
 * is someone else's on the same channel (node:cluster's and prom-client's have other shapes).
 */
export function isToWorker(m: unknown): m is ToWorker {
  return tagged(m) && TO_WORKER.has(m.t);
}

export function isFromWorker(m: unknown): m is FromWorker {
  return tagged(m) && FROM_WORKER.has(m.t);
}
