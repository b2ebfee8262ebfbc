// Metrics merging: at each scrape, fetch the local app's metrics and serve them after the
// proxy's own, as one valid exposition, so a pod needs one scrape target (Consul's
// "metrics merging"). The proxy's series always win: an app that is down, slow, or answers
// garbage costs its own series for that scrape and is counted, never the proxy's.
//
// Name collisions: Prometheus rejects an exposition that has a family twice, and an app built
// on the same client library as ours exports the same process_* and nodejs_* families. An app
// family that shares a name with one of ours (or with one of our histogram or summary sample
// names) is renamed with the prefix `app_`, keeping its data; if that name is taken too, the
// family is dropped. Both are counted in meshproxy_app_metrics_families{result}.
import { performance } from "node:perf_hooks";
import { Counter, Gauge, type Registry } from "./prom.js";
import type { Agent } from "undici";
import { loadUndici, undici } from "../http/undici.js";
import { ExpositionError, formatFamilies, occupiedNames, parseExposition, type Family } from "./exposition.js";
import type { Logger } from "./log.js";

export const APP_PREFIX = "app_";
export const DEFAULT_APP_TIMEOUT_MS = 2000;
/** A metrics page bigger than this is a bug or an attack, not something to hold in memory per scrape. */
export const DEFAULT_APP_MAX_BYTES = 8 * 1024 * 1024;

export const SCRAPE_FAILURES = ["connect", "timeout", "http_status", "too_large", "invalid"] as const;
export type ScrapeFailure = (typeof SCRAPE_FAILURES)[number];

export interface MergeResult {
  /** The app's families as they will be written (renamed ones under their new name). */
  readonly families: readonly Family[];
  /** Original names of the app families that were renamed with APP_PREFIX. */
  readonly renamed: readonly string[];
  /** Names of the app families left out because even the prefixed name was taken. */
  readonly dropped: readonly string[];
}

/**
 * Resolves the app's families against the names the proxy's exposition occupies (`taken`),
 * keeping the app's order. Families that do not collide keep their names; that is decided
 * first, so a renamed family cannot take a name the app itself uses.
 */
export function mergeFamilies(taken: ReadonlySet<string>, app: readonly Family[]): MergeResult {
  const collides = (f: Family, names: ReadonlySet<string>) => occupiedNames(f).some((n) => names.has(n));
  const used = new Set(taken);
  for (const f of app) if (!collides(f, taken)) for (const n of occupiedNames(f)) used.add(n);
  const families: Family[] = [];
  const renamed: string[] = [];
  const dropped: string[] = [];
  for (const f of app) {
    if (!collides(f, taken)) {
      families.push(f);
      continue;
    }
    const r: Family = { name: APP_PREFIX + f.name, type: f.type, help: f.help, samples: f.samples.map((s) => APP_PREFIX + s) };
    if (collides(r, used)) {
      dropped.push(f.name);
      continue;
    }
    for (const n of occupiedNames(r)) used.add(n);
    families.push(r);
    renamed.push(f.name);
  }
  return { families, renamed, dropped };
}

/** The names a registry's families occupy, with every histogram/summary suffix reserved. */
export function registryNames(registry: Registry): Set<string> {
  const names = new Set<string>();
  for (const m of registry.getMetricsAsArray()) {
    for (const n of [m.name, `${m.name}_bucket`, `${m.name}_sum`, `${m.name}_count`]) names.add(n);
  }
  return names;
}

/**
 * The app's share of a scrape whose Prometheus sent `X-Prometheus-Scrape-Timeout-Seconds`: half of
 * it, never more than the configured timeout. A scrape timeout below 2 s (Prometheus' default is
 * 10 s) would otherwise expire while a slow app is still awaited, and Prometheus would drop the
 * proxy's series with the app's. The other half is for rendering and sending. A missing or
 * malformed header leaves the configured timeout.
 */
export function appDeadlineMs(configuredMs: number, scrapeTimeoutHeader: string | readonly string[] | undefined): number {
  const raw: string | undefined = typeof scrapeTimeoutHeader === "string" ? scrapeTimeoutHeader : scrapeTimeoutHeader?.[0];
  if (typeof raw !== "string" || !/^\s*\d+(\.\d+)?\s*$/.test(raw)) return configuredMs;
  const budgetMs = Number(raw) * 1000;
  if (!(budgetMs > 0)) return configuredMs;
  return Math.max(1, Math.min(configuredMs, Math.floor(budgetMs / 2)));
}

export interface AppMetricsOptions {
  /** http(s) URL of the app's metrics, e.g. http://127.0.0.1:9464/metrics. */
  readonly url: string;
  /** Whole-request deadline. Default 2 s: well inside Prometheus' default 10 s scrape timeout. */
  readonly timeoutMs?: number;
  readonly maxBytes?: number;
}

type AppScrape = { readonly ok: true; readonly families: Family[] } | { readonly ok: false; readonly reason: ScrapeFailure; readonly message: string };

function errorCode(e: unknown): string {
  if (e instanceof Error) {
    if (e.name === "TimeoutError" || e.name === "AbortError") return "TIMEOUT";
    if ("code" in e && typeof e.code === "string") return e.code;
    if (e.cause !== undefined) return errorCode(e.cause);
  }
  return "";
}

function describe(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const cause = e.cause instanceof Error ? `: ${e.cause.message}` : "";
  return `${e.message}${cause}`;
}

/** A few names for a log line; the full count is in meshproxy_app_metrics_families. */
function listed(names: readonly string[]): string | undefined {
  if (names.length === 0) return undefined;
  return names.length <= 5 ? names.join(",") : `${names.slice(0, 5).join(",")} and ${names.length - 5} more`;
}

/** The app's side of merging: its endpoint, connection pool, and the metrics about scraping it. */
class AppSource {
  private readonly url: string;
  private readonly timeoutMs: number;
  private readonly maxBytes: number;
  private readonly dispatcher: Promise<Agent>;
  private readonly errors: Counter<"reason">;
  private readonly duration: Gauge;
  private readonly up: Gauge;
  private readonly families: Gauge<"result">;
  private lastReason: ScrapeFailure | "ok" | null = null;

  constructor(
    opts: AppMetricsOptions,
    registry: Registry,
    private readonly log: Logger,
  ) {
    this.url = opts.url;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_APP_TIMEOUT_MS;
    this.maxBytes = opts.maxBytes ?? DEFAULT_APP_MAX_BYTES;
    const t = this.timeoutMs;
    // Made on the first scrape: undici is loaded only by proxies that merge an app's metrics.
    this.dispatcher = loadUndici().then((u) => new u.Agent({ connections: 4, keepAliveTimeout: 30_000, headersTimeout: t, bodyTimeout: t, connect: { timeout: t } }));
    const registers = [registry];
    this.errors = new Counter({ name: "meshproxy_app_metrics_scrape_errors_total", help: "Scrapes of the app's metrics (-app-metrics-url) that failed, by reason; the proxy's metrics were served without the app's", labelNames: ["reason"], registers });
    for (const r of SCRAPE_FAILURES) this.errors.labels(r).inc(0);
    this.duration = new Gauge({ name: "meshproxy_app_metrics_scrape_duration_seconds", help: "How long the last scrape of the app's metrics took", registers });
    this.up = new Gauge({ name: "meshproxy_app_metrics_up", help: "1 if the last scrape of the app's metrics succeeded and was merged, else 0", registers });
    this.families = new Gauge({ name: "meshproxy_app_metrics_families", help: `App metric families in the last merge: kept, renamed (name collided with the proxy's; served with the ${APP_PREFIX} prefix) or dropped (the prefixed name was taken too)`, labelNames: ["result"], registers });
  }

  /** Scrapes the app and resolves its families against `taken`; records the outcome in our metrics. */
  async collect(taken: ReadonlySet<string>, scrapeTimeoutHeader?: string | readonly string[]): Promise<MergeResult> {
    const started = performance.now();
    const scrape = await this.scrape(appDeadlineMs(this.timeoutMs, scrapeTimeoutHeader));
    this.duration.set((performance.now() - started) / 1000);
    let merged: MergeResult = { families: [], renamed: [], dropped: [] };
    if (scrape.ok) merged = mergeFamilies(taken, scrape.families);
    else this.errors.labels(scrape.reason).inc();
    this.up.set(scrape.ok ? 1 : 0);
    this.families.labels("kept").set(merged.families.length - merged.renamed.length);
    this.families.labels("renamed").set(merged.renamed.length);
    this.families.labels("dropped").set(merged.dropped.length);
    this.report(scrape, merged);
    return merged;
  }

  /** Logs transitions (up → failing, failing → up, one reason → another), not every scrape. */
  private report(scrape: AppScrape, merged: MergeResult): void {
    const reason = scrape.ok ? "ok" : scrape.reason;
    if (reason !== this.lastReason) {
      if (scrape.ok) {
        this.log.info("app metrics merged", { url: this.url, families: merged.families.length, renamed: listed(merged.renamed), dropped: listed(merged.dropped) });
      } else {
        this.log.warn("app metrics not merged; serving the proxy's alone", { url: this.url, reason: scrape.reason, error: scrape.message });
      }
      this.lastReason = reason;
    } else if (!scrape.ok) {
      this.log.debug("app metrics scrape failed", { url: this.url, reason: scrape.reason, error: scrape.message });
    }
  }

  private async scrape(deadlineMs: number): Promise<AppScrape> {
    const fail = (reason: ScrapeFailure, message: string): AppScrape => ({ ok: false, reason, message });
    let text: string;
    try {
      const dispatcher = await this.dispatcher;
      const res = await undici().request(this.url, {
        dispatcher,
        headers: { accept: "text/plain;version=0.0.4;q=1,*/*;q=0.1" },
        signal: AbortSignal.timeout(deadlineMs),
      });
      if (res.statusCode < 200 || res.statusCode > 299) {
        await res.body.dump();
        return fail("http_status", `GET ${this.url}: HTTP ${res.statusCode}`);
      }
      const type = res.headers["content-type"];
      if (typeof type === "string" && type.includes("protobuf")) {
        await res.body.dump();
        return fail("invalid", `GET ${this.url}: content-type ${type}; serve the Prometheus text format`);
      }
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of res.body) {
        const c: unknown = chunk;
        if (!Buffer.isBuffer(c)) continue;
        size += c.length;
        if (size > this.maxBytes) {
          res.body.destroy();
          return fail("too_large", `GET ${this.url}: more than ${this.maxBytes} bytes`);
        }
        chunks.push(c);
      }
      text = Buffer.concat(chunks).toString("utf8");
    } catch (e) {
      const code = errorCode(e);
      if (code === "TIMEOUT" || code === "UND_ERR_HEADERS_TIMEOUT" || code === "UND_ERR_BODY_TIMEOUT" || code === "UND_ERR_CONNECT_TIMEOUT") {
        return fail("timeout", `GET ${this.url}: no complete answer within ${deadlineMs} ms`);
      }
      return fail("connect", `GET ${this.url}: ${describe(e)}${code ? ` (${code})` : ""}`);
    }
    try {
      return { ok: true, families: parseExposition(text) };
    } catch (e) {
      if (!(e instanceof ExpositionError)) throw e;
      return fail("invalid", `${this.url} is not the Prometheus text format: ${e.message}`);
    }
  }

  close(): Promise<void> {
    return this.dispatcher.then((d) => d.destroy());
  }
}

/**
 * What the metrics endpoints serve: the registry's exposition, plus the app's when an app URL
 * is configured. Concurrent scrapes each fetch the app once; nothing is cached between scrapes.
 */
export class MetricsExposition {
  readonly contentType = "text/plain; version=0.0.4; charset=utf-8";
  private readonly app: AppSource | null;

  /**
   * `registry` holds the proxy's metrics (and the app-merge ones); `gather`, when given, is what
   * a scrape renders instead: under -concurrency N, that registry aggregated with every worker's.
   */
  constructor(
    private readonly registry: Registry,
    app: AppMetricsOptions | null,
    log: Logger,
    private readonly gather: () => Promise<Registry> = () => Promise.resolve(registry),
  ) {
    this.app = app ? new AppSource(app, registry, log.child("metrics")) : null;
  }

  /**
   * The exposition to serve for one scrape. Never fails because of the app. `scrapeTimeoutHeader`
   * is the scraper's `X-Prometheus-Scrape-Timeout-Seconds`, which shortens the wait for the app.
   */
  async render(scrapeTimeoutHeader?: string | readonly string[]): Promise<string> {
    if (!this.app) return (await this.gather()).metrics();
    // The app first: its outcome is part of our metrics, which are rendered after it.
    const merged = await this.app.collect(registryNames(await this.gather()), scrapeTimeoutHeader);
    // Gathered again: the app's outcome (meshproxy_app_metrics_*) is part of it.
    const ours = await (await this.gather()).metrics();
    return (ours === "" || ours.endsWith("\n") ? ours : `${ours}\n`) + formatFamilies(merged.families);
  }

  async close(): Promise<void> {
    await this.app?.close();
  }
}
