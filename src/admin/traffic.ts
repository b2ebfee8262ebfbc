// GET /traffic.json: per routed service of this sidecar (an upstream with HTTP routes), each
// cluster its routes split to (a subset, or another service) and their failover targets, with the
// split weight of the catch-all route and the traffic window's figures. What the live page shows.
import type { Cluster, Snapshot } from "../config/snapshot.js";
import type { TrafficWindow } from "../telemetry/traffic-window.js";

export interface TrafficCluster {
  readonly name: string;
  readonly service: string;
  /** The subset of `service`, "" for the service's default. */
  readonly subset: string;
  /** Percent of the catch-all route's traffic; null for a failover target no route splits to. */
  readonly weight_percent: number | null;
  readonly requests_per_second: number | null;
  readonly error_rate: number | null;
  readonly p99_ms: number | null;
  readonly window_requests: number;
  readonly window_errors: number;
  readonly requests_total: number;
  readonly errors_total: number;
}

export interface TrafficService {
  readonly name: string;
  readonly protocol: string;
  readonly routes: number;
  readonly clusters: readonly TrafficCluster[];
}

export interface TrafficDocument {
  readonly service: string | null;
  readonly control_plane: string | null;
  readonly snapshot_version: number | null;
  readonly window_seconds: number;
  /** Whether POST /splits/<service> can write through this sidecar's control plane, and if not, why. */
  readonly weights_writable: boolean;
  readonly weights_read_only_reason?: string;
  readonly services: readonly TrafficService[];
  /** Why `services` is empty, for the page to say. */
  readonly empty_reason?: string;
}

/** "v2" for `v2.api.default.dc1.internal.<td>.consul` of service api; "" for the service itself. */
export function subsetOf(c: Cluster): string {
  if (c.name.startsWith(`${c.service}.`)) return "";
  const i = c.name.indexOf(`.${c.service}.`);
  return i > 0 ? c.name.slice(0, i) : "";
}

function round(v: number | null, digits: number): number | null {
  if (v === null) return null;
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

function emptyReason(s: Snapshot | null): string {
  if (!s) return "no configuration yet: the sidecar has not applied its first Snapshot";
  if (s.upstreams.length === 0) return "this sidecar has no upstreams";
  return `no upstream of this sidecar is routed at L7: ${s.upstreams.map((u) => `${u.name} (${u.protocol})`).join(", ")}; only upstreams whose protocol is http, http2 or grpc have routes and splits (set it with a service-defaults entry)`;
}

export function trafficDocument(s: Snapshot | null, window: TrafficWindow, writable: { ok: true } | { ok: false; reason: string }): TrafficDocument {
  const services: TrafficService[] = [];
  const known: Snapshot["clusters"] = s?.clusters ?? {};
  for (const u of s?.upstreams ?? []) {
    if (!u.routes || u.routes.routes.length === 0) continue;
    const routes = u.routes.routes;
    const catchAll = routes[routes.length - 1]!;
    const weights = new Map<string, number>();
    for (const leg of catchAll.action.splits) weights.set(leg.cluster, (weights.get(leg.cluster) ?? 0) + leg.weight);
    const names: string[] = [];
    const add = (n: string) => {
      if (!names.includes(n)) names.push(n);
    };
    for (const r of routes) for (const leg of r.action.splits) add(leg.cluster);
    const routed = new Set(names);
    for (const n of [...names]) for (const f of known[n]?.failover ?? []) add(f);
    const clusters = names.map((name): TrafficCluster => {
      const c = known[name];
      const f = window.figures(name);
      const w = weights.get(name);
      return {
        name,
        service: c?.service ?? u.name,
        subset: c ? subsetOf(c) : "",
        // A cluster only another route splits to gets none of the catch-all's traffic.
        weight_percent: w !== undefined ? w / 100 : routed.has(name) ? 0 : null,
        requests_per_second: round(f.requestsPerSecond, 2),
        error_rate: round(f.errorRate, 4),
        p99_ms: round(f.p99Ms, 1),
        window_requests: f.windowRequests,
        window_errors: f.windowErrors,
        requests_total: f.requestsTotal,
        errors_total: f.errorsTotal,
      };
    });
    services.push({ name: u.name, protocol: u.protocol, routes: routes.length, clusters });
  }
  return {
    service: s?.identity.service ?? null,
    control_plane: s?.source ?? null,
    snapshot_version: s?.version ?? null,
    window_seconds: round(window.spanSeconds(), 1) ?? 0,
    weights_writable: writable.ok,
    ...(writable.ok ? {} : { weights_read_only_reason: writable.reason }),
    services,
    ...(services.length === 0 ? { empty_reason: emptyReason(s) } : {}),
  };
}
