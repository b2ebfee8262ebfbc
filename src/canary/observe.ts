// Per-subset request figures of one service, read from the sidecars that send to it: their
// Prometheus exposition (the admin API's /stats/prometheus or the metrics listener), the series
// a caller's sidecar keeps per destination cluster. A subset is a cluster of its own, named as
// Consul names it (`v2.api.default.dc1.internal.<trust-domain>`), so its series are told apart by
// `envoy_cluster_name` alone.
//
// Figures over a window are deltas of counters and histogram buckets between two reads, summed
// over every sidecar, as Prometheus' increase() and histogram_quantile() would compute them: a
// counter that went down is a restarted sidecar, whose new value is all new. The canary
// controller uses it between steps; a live page can use it the same way (read, keep the samples,
// compute any window of any subset).
import { loadUndici } from "../http/undici.js";
import type { WindowFigures } from "./decision.js";

/** Where one sidecar's metrics are read. */
export interface MetricsTarget {
  /** What the operator knows it by: the proxy id, with its service. */
  readonly id: string;
  /** The exposition URL, e.g. http://127.0.0.1:19000/stats/prometheus. */
  readonly url: string;
}

/** The sidecars a directory of the control plane lists, and what it could not list. */
export interface TargetList {
  readonly targets: readonly MetricsTarget[];
  readonly problems: readonly string[];
}

export interface TargetDirectory {
  list(): Promise<TargetList>;
}

/** Cumulative counters of one subset as one sidecar reports them. */
export interface SubsetCounters {
  /** Final answers (envoy_cluster_upstream_rq_total). */
  responses: number;
  /** 5xx answers (envoy_cluster_upstream_rq_xx, class 5). */
  errors5xx: number;
  /** Attempts retried away (envoy_cluster_upstream_rq_retry): a failure the client may not have seen. */
  retries: number;
  /** Requests timed out (envoy_cluster_upstream_rq_timeout, answered 504 by the sidecar). */
  timeouts: number;
  /** Connections that could not be made (envoy_cluster_upstream_cx_connect_fail). */
  connectFailures: number;
  /** envoy_cluster_upstream_rq_time_bucket: upper bound in ms (Infinity for +Inf) → cumulative count. */
  readonly buckets: Map<number, number>;
}

/** One read of every sidecar: per target, per subset of the service. */
export interface Sample {
  readonly at: number;
  readonly bySidecar: ReadonlyMap<string, ReadonlyMap<string, SubsetCounters>>;
  /** Sidecars (and directory entries) that could not be read, with why. */
  readonly problems: readonly string[];
  /** How many sidecars answered. */
  readonly read: number;
}

const WANTED = new Set([
  "envoy_cluster_upstream_rq_total",
  "envoy_cluster_upstream_rq_xx",
  "envoy_cluster_upstream_rq_retry",
  "envoy_cluster_upstream_rq_timeout",
  "envoy_cluster_upstream_cx_connect_fail",
  "envoy_cluster_upstream_rq_time_bucket",
]);

/**
 * The subset of `service` a cluster name is for: `v2` for `v2.api.default.dc1.internal.<td>`,
 * `""` for the service's own cluster (`api.default.dc1.internal.<td>`), null for another
 * service's. With an admin partition Consul adds it after the namespace (`internal-v1`).
 */
export function subsetOf(clusterName: string, service: string): string | null {
  const m = /\.internal(?:-v1)?\./.exec(clusterName);
  if (!m) return null;
  const parts = clusterName.slice(0, m.index).split(".");
  const partitioned = m[0] !== ".internal.";
  const plain = partitioned ? 4 : 3;
  if (parts.length === plain && parts[0] === service) return "";
  if (parts.length === plain + 1 && parts[1] === service) return parts[0]!;
  return null;
}

/** The labels of one sample line, or null when the line is not a sample. Values are unescaped. */
function sampleLabels(line: string, from: number): { labels: Map<string, string>; rest: number } | null {
  const labels = new Map<string, string>();
  let i = from;
  if (line[i] !== "{") return { labels, rest: i };
  i++;
  for (;;) {
    while (line[i] === " " || line[i] === ",") i++;
    if (line[i] === "}") return { labels, rest: i + 1 };
    const eq = line.indexOf("=", i);
    if (eq < 0 || line[eq + 1] !== '"') return null;
    const name = line.slice(i, eq).trim();
    let v = "";
    let j = eq + 2;
    for (; j < line.length && line[j] !== '"'; j++) {
      if (line[j] === "\\") {
        j++;
        v += line[j] === "n" ? "\n" : (line[j] ?? "");
      } else v += line[j];
    }
    if (j >= line.length) return null;
    labels.set(name, v);
    i = j + 1;
  }
}

function counters(): SubsetCounters {
  return { responses: 0, errors5xx: 0, retries: 0, timeouts: 0, connectFailures: 0, buckets: new Map() };
}

/** The subset counters of `service` in one exposition text. Lines it does not need are skipped unparsed. */
export function parseSubsetCounters(text: string, service: string): Map<string, SubsetCounters> {
  const out = new Map<string, SubsetCounters>();
  for (const line of text.split("\n")) {
    if (!line.startsWith("envoy_cluster_upstream_")) continue;
    let n = 0;
    while (n < line.length && line[n] !== "{" && line[n] !== " ") n++;
    const name = line.slice(0, n);
    if (!WANTED.has(name)) continue;
    const parsed = sampleLabels(line, n);
    if (!parsed) continue;
    const value = Number(line.slice(parsed.rest).trim().split(/\s+/)[0]);
    if (!Number.isFinite(value)) continue;
    const cluster = parsed.labels.get("envoy_cluster_name");
    if (cluster === undefined) continue;
    const subset = subsetOf(cluster, service);
    if (subset === null) continue;
    let c = out.get(subset);
    if (!c) out.set(subset, (c = counters()));
    switch (name) {
      case "envoy_cluster_upstream_rq_total":
        c.responses += value;
        break;
      case "envoy_cluster_upstream_rq_xx":
        if (parsed.labels.get("envoy_response_code_class") === "5") c.errors5xx += value;
        break;
      case "envoy_cluster_upstream_rq_retry":
        c.retries += value;
        break;
      case "envoy_cluster_upstream_rq_timeout":
        c.timeouts += value;
        break;
      case "envoy_cluster_upstream_cx_connect_fail":
        c.connectFailures += value;
        break;
      case "envoy_cluster_upstream_rq_time_bucket": {
        const le = parsed.labels.get("le");
        const bound = le === "+Inf" ? Infinity : Number(le);
        if (le === undefined || Number.isNaN(bound)) break;
        c.buckets.set(bound, (c.buckets.get(bound) ?? 0) + value);
        break;
      }
    }
  }
  return out;
}

/** Reads every sidecar the directory lists, in parallel, each bounded by `timeoutMs`. */
export class SubsetReader {
  constructor(
    private readonly directory: TargetDirectory,
    private readonly service: string,
    private readonly timeoutMs = 2000,
  ) {}

  async sample(): Promise<Sample> {
    const list = await this.directory.list();
    const problems = [...list.problems];
    const bySidecar = new Map<string, Map<string, SubsetCounters>>();
    const { request } = await loadUndici();
    await Promise.all(
      list.targets.map(async (t) => {
        try {
          const res = await request(t.url, { method: "GET", headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs, signal: AbortSignal.timeout(this.timeoutMs) });
          const text = await res.body.text();
          if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode}`);
          bySidecar.set(t.id, parseSubsetCounters(text, this.service));
        } catch (e) {
          problems.push(`sidecar ${t.id} (${t.url}) could not be read (${e instanceof Error ? e.message : String(e)}); a stale registration? its figures are left out`);
        }
      }),
    );
    return { at: Date.now(), bySidecar, problems, read: bySidecar.size };
  }
}

function deltaOf(base: SubsetCounters | undefined, now: SubsetCounters): SubsetCounters {
  // A counter that went down belongs to a restarted sidecar: everything it has now is new.
  const reset = !base || now.responses < base.responses || now.retries < base.retries || now.connectFailures < base.connectFailures;
  if (reset) return now;
  const buckets = new Map<number, number>();
  for (const [le, v] of now.buckets) buckets.set(le, Math.max(0, v - (base.buckets.get(le) ?? 0)));
  return {
    responses: now.responses - base.responses,
    errors5xx: Math.max(0, now.errors5xx - base.errors5xx),
    retries: now.retries - base.retries,
    timeouts: Math.max(0, now.timeouts - base.timeouts),
    connectFailures: now.connectFailures - base.connectFailures,
    buckets,
  };
}

/**
 * histogram_quantile over cumulative buckets: linear within the bucket the rank falls in; in the
 * +Inf bucket, the highest finite bound (as Prometheus answers).
 */
export function quantileMs(q: number, buckets: ReadonlyMap<number, number>): number | null {
  const sorted = [...buckets.entries()].sort((a, b) => a[0] - b[0]);
  const total = sorted.find(([le]) => le === Infinity)?.[1] ?? sorted[sorted.length - 1]?.[1] ?? 0;
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of sorted) {
    if (count >= rank) {
      if (le === Infinity) return prevLe;
      const inBucket = count - prevCount;
      return inBucket > 0 ? prevLe + (le - prevLe) * ((rank - prevCount) / inBucket) : le;
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

/**
 * One window: the first read of each sidecar is its baseline, the last its end. A sidecar that
 * could not be read at the start joins at its first good read, so it never brings its history in.
 */
export class SubsetWindow {
  private readonly base = new Map<string, ReadonlyMap<string, SubsetCounters>>();
  private readonly last = new Map<string, ReadonlyMap<string, SubsetCounters>>();
  readonly startedAt: number;

  constructor(first: Sample) {
    this.startedAt = first.at;
    this.add(first);
  }

  add(s: Sample): void {
    for (const [id, subsets] of s.bySidecar) {
      if (!this.base.has(id)) this.base.set(id, subsets);
      this.last.set(id, subsets);
    }
  }

  /** The summed deltas of `subset` over the window. */
  counters(subset: string): SubsetCounters {
    const sum = counters();
    for (const [id, now] of this.last) {
      const n = now.get(subset);
      if (!n) continue;
      const d = deltaOf(this.base.get(id)?.get(subset), n);
      sum.responses += d.responses;
      sum.errors5xx += d.errors5xx;
      sum.retries += d.retries;
      sum.timeouts += d.timeouts;
      sum.connectFailures += d.connectFailures;
      for (const [le, v] of d.buckets) sum.buckets.set(le, (sum.buckets.get(le) ?? 0) + v);
    }
    return sum;
  }

  /**
   * What the decision reads: every attempt on the subset and every failed one. A failed attempt
   * that a retry hid from the client still counts: the canary judges the version, not the retry
   * policy in front of it. A final timeout (504 UT) or connect failure (503 UF) is already a 5xx
   * of the cluster's series, as in Envoy; a connect failure that was retried is in `retries`.
   */
  figures(subset: string): WindowFigures {
    const c = this.counters(subset);
    return { requests: c.responses + c.retries, errors: c.errors5xx + c.retries, p99Ms: quantileMs(0.99, c.buckets) };
  }
}
