// A rollout's state, kept in the service-splitter it moves: the weights are the Splits, and the
// rest is in the entry's Meta (Consul config entries carry Meta; Consul keeps it as given), so a
// restarted `meshproxy canary`, or another one run with -pause, -resume or -abort, finds it there
// and the process holds nothing that a restart would lose.
import { SplitterError } from "./store.js";

export const ROLLOUT_STATUSES = ["running", "paused", "aborted", "rolled-back", "done"] as const;
export type RolloutStatus = (typeof ROLLOUT_STATUSES)[number];

export const META = {
  status: "meshproxy-canary-status",
  from: "meshproxy-canary-from",
  to: "meshproxy-canary-to",
  steps: "meshproxy-canary-steps",
  reason: "meshproxy-canary-reason",
  updated: "meshproxy-canary-updated",
} as const;

/** Consul refuses Meta values over 512 characters. */
const MAX_META_VALUE = 512;

export interface Rollout {
  readonly status: RolloutStatus;
  readonly from: string;
  readonly to: string;
  readonly steps: string;
  readonly reason: string;
  readonly updated: string;
}

export interface SplitterView {
  /** Weight (percent) per subset of the service; a subset absent from Splits has none. */
  readonly weights: ReadonlyMap<string, number>;
  /** The rollout recorded in Meta, null when there is none. */
  readonly rollout: Rollout | null;
  /** Splits that name another service: a canary between two subsets cannot own such a splitter. */
  readonly foreign: readonly string[];
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Consul's JSON takes CamelCase or snake_case keys. */
function field(o: Record<string, unknown>, camel: string): unknown {
  if (Object.hasOwn(o, camel)) return o[camel];
  const snake = camel.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toLowerCase();
  return Object.hasOwn(o, snake) ? o[snake] : undefined;
}

export function viewSplitter(raw: Record<string, unknown>, service: string): SplitterView {
  const weights = new Map<string, number>();
  const foreign: string[] = [];
  const splits = field(raw, "Splits") ?? [];
  if (!Array.isArray(splits)) throw new SplitterError(`service-splitter "${service}": Splits is not a list`);
  splits.forEach((s: unknown, i) => {
    if (!isRecord(s)) throw new SplitterError(`service-splitter "${service}": Splits[${i}] is not an object`);
    const w = field(s, "Weight") ?? 0;
    if (typeof w !== "number" || !Number.isFinite(w)) throw new SplitterError(`service-splitter "${service}": Splits[${i}].Weight is not a number`);
    const svc = field(s, "Service");
    const subset = field(s, "ServiceSubset");
    if ((svc !== undefined && svc !== "" && svc !== service) || (subset !== undefined && typeof subset !== "string")) {
      foreign.push(`Splits[${i}] (${JSON.stringify(svc ?? service)}${typeof subset === "string" && subset ? `, subset ${subset}` : ""})`);
      return;
    }
    const key = typeof subset === "string" ? subset : "";
    weights.set(key, (weights.get(key) ?? 0) + w);
  });
  return { weights, rollout: rolloutOf(raw), foreign };
}

function rolloutOf(raw: Record<string, unknown>): Rollout | null {
  const meta = field(raw, "Meta");
  if (!isRecord(meta)) return null;
  const s = meta[META.status];
  const status = ROLLOUT_STATUSES.find((x) => x === s);
  const from = meta[META.from];
  const to = meta[META.to];
  if (status === undefined || typeof from !== "string" || typeof to !== "string") return null;
  const text = (k: string) => (typeof meta[k] === "string" ? meta[k] : "");
  return { status, from, to, steps: text(META.steps), reason: text(META.reason), updated: text(META.updated) };
}

/** Percent with Consul's 0.01 resolution, so 100 − 33.33 is 66.67 and the sum is exactly 100. */
export function roundWeight(w: number): number {
  return Math.round(w * 100) / 100;
}

/**
 * The splitter with `to` at `weight` percent and `from` at the rest, and the rollout's Meta.
 * Other top-level fields (Namespace, Partition, other Meta keys) and the two splits' header
 * mutations are kept.
 */
export function withWeights(raw: Record<string, unknown> | null, service: string, r: Rollout, weight: number): Record<string, unknown> {
  const base: Record<string, unknown> = raw ? { ...raw } : { Kind: "service-splitter", Name: service };
  const old = field(base, "Splits");
  const keep = (subset: string): Record<string, unknown> => {
    const found: unknown = Array.isArray(old) ? old.find((s: unknown) => isRecord(s) && field(s, "ServiceSubset") === subset) : undefined;
    const out: Record<string, unknown> = {};
    if (isRecord(found)) for (const k of ["RequestHeaders", "ResponseHeaders", "request_headers", "response_headers"]) if (found[k] !== undefined) out[k] = found[k];
    return out;
  };
  delete base["splits"];
  const w = roundWeight(weight);
  base["Splits"] = [
    { Weight: roundWeight(100 - w), ServiceSubset: r.from, ...keep(r.from) },
    { Weight: w, ServiceSubset: r.to, ...keep(r.to) },
  ];
  const oldMeta = field(base, "Meta");
  delete base["meta"];
  base["Meta"] = {
    ...(isRecord(oldMeta) ? oldMeta : {}),
    [META.status]: r.status,
    [META.from]: r.from,
    [META.to]: r.to,
    [META.steps]: r.steps,
    [META.reason]: r.reason.length > MAX_META_VALUE ? `${r.reason.slice(0, MAX_META_VALUE - 3)}...` : r.reason,
    [META.updated]: r.updated,
  };
  return base;
}

/** The same splitter with only the rollout's status and reason changed (pause, resume). */
export function withStatus(raw: Record<string, unknown>, service: string, status: RolloutStatus, reason: string, now: Date): Record<string, unknown> {
  const v = viewSplitter(raw, service);
  if (!v.rollout) throw new SplitterError(`service-splitter "${service}" records no rollout (no ${META.status} in its Meta)`);
  return withWeights(raw, service, { ...v.rollout, status, reason, updated: now.toISOString() }, v.weights.get(v.rollout.to) ?? 0);
}
