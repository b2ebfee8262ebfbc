// Helpers for the L7 end-to-end tests: an app whose behaviour each request picks through its
// query string (status, delay) and that records every attempt it sees, a small HTTP client with
// its own connection pool, and readers for a sidecar's config dump.
import type { IncomingMessage, ServerResponse } from "node:http";
import { Agent, request, type Dispatcher } from "undici";
import { httpApp, type TestApp } from "./l7.js";
import type { Teardown } from "./mesh.js";

export interface Seen {
  readonly app: string;
  /** The test's `x-req-id`, so attempts of one request can be grouped. */
  readonly id: string;
  /** `x-envoy-attempt-count` as the app received it (0 when absent). */
  readonly attempt: number;
  readonly at: number;
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingMessage["headers"];
}

export interface ScriptedApp extends TestApp {
  readonly name: string;
  readonly seen: Seen[];
  /** Requests in flight now, and the most at once since the test last set it to 0. */
  readonly load: { inflight: number; maxInflight: number };
  /** Answers every request held by `?hold` (each waits for this, not for a clock). */
  release(): void;
}

/**
 * An app that answers `<name> <status>` with the status from `?status=` (default 200) after
 * `?delay=` ms — only on the app named by `?slow=` when that is given — or, with `?hold`, when the
 * test calls release(), and records each request.
 * `x-app: <name>` is on every response; `x-app-secret` and `x-resp-set` are there for
 * response-header mutations to act on. With `echo` (or `?echo=1`) the body is the JSON of what
 * arrived: app, method, url, headers and the number of body bytes.
 */
export async function scriptedApp(t: Teardown, name: string, opts: { echo?: boolean } = {}): Promise<ScriptedApp> {
  const seen: Seen[] = [];
  const a = { inflight: 0, maxInflight: 0 };
  const held: Array<() => void> = [];
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const u = new URL(req.url ?? "/", "http://app");
    seen.push({
      app: name,
      id: String(req.headers["x-req-id"] ?? ""),
      attempt: Number(req.headers["x-envoy-attempt-count"] ?? 0),
      at: performance.now(),
      method: req.method ?? "",
      url: req.url ?? "",
      headers: req.headers,
    });
    a.inflight++;
    a.maxInflight = Math.max(a.maxInflight, a.inflight);
    res.once("close", () => a.inflight--);
    const status = Number(u.searchParams.get("status") ?? 200);
    const slow = u.searchParams.get("slow");
    const delay = slow === null || slow === name ? Number(u.searchParams.get("delay") ?? 0) : 0;
    let received = 0;
    req.on("data", (d: Buffer) => (received += d.length));
    req.once("end", () => {
      const answer = () => {
        if (res.destroyed) return;
        const body =
          opts.echo === true || u.searchParams.get("echo") !== null
            ? JSON.stringify({ app: name, method: req.method, url: req.url, headers: req.headers, received })
            : `${name} ${status}\n`;
        res.writeHead(status, { "content-type": "text/plain", "x-app": name, "x-app-secret": "s3cret", "x-resp-set": "from-app" });
        res.end(body);
      };
      if (u.searchParams.has("hold")) held.push(answer);
      else if (delay > 0) setTimeout(answer, delay);
      else answer();
    });
  };
  const app = await httpApp(t, name, handler);
  return Object.assign(app, { name, seen, load: a, release: () => held.splice(0).forEach((answer) => answer()) });
}

export interface Reply {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
  readonly ms: number;
  /** x-meshproxy-response-flags, "" when absent. */
  readonly flags: string;
}

/** A client with its own keep-alive pool, closed at teardown. */
export function client(t: Teardown): (addr: string, path: string, opts?: { method?: Dispatcher.HttpMethod; headers?: Record<string, string>; body?: string }) => Promise<Reply> {
  const agent = new Agent({ keepAliveTimeout: 10_000 });
  t.teardown(() => agent.close());
  return async (addr, path, opts = {}) => {
    const t0 = performance.now();
    const r = await request(`http://${addr}${path}`, {
      dispatcher: agent,
      method: opts.method ?? "GET",
      headers: opts.headers ?? {},
      ...(opts.body !== undefined ? { body: opts.body } : {}),
      headersTimeout: 30_000,
      bodyTimeout: 30_000,
    });
    const body = await r.body.text();
    return { status: r.statusCode, headers: r.headers, body, ms: performance.now() - t0, flags: String(r.headers["x-meshproxy-response-flags"] ?? "") };
  };
}

export interface DumpCluster {
  readonly name: string;
  readonly service: string;
  readonly endpoints: ReadonlyArray<{ host: string; port: number; healthy: boolean }>;
  readonly lb?: { policy: string; hashPolicies: unknown[] };
  readonly limits?: { maxConnections: number; maxRequests: number };
}

/** The cluster of `service` without a subset (named `<service>.default.…`) in a config dump. */
export function clusterOf(dump: unknown, service: string): DumpCluster | undefined {
  if (typeof dump !== "object" || dump === null || !("clusters" in dump)) return undefined;
  const clusters = dump.clusters as Record<string, DumpCluster>;
  return Object.values(clusters).find((c) => c.name.startsWith(`${service}.default.`));
}

/** The number of routes of an upstream (the catch-all included) in a config dump. */
export function routeCount(dump: unknown, upstream: string): number {
  if (typeof dump !== "object" || dump === null || !("upstreams" in dump) || !Array.isArray(dump.upstreams)) return 0;
  const u = (dump.upstreams as Array<{ name?: string; routes?: { routes?: unknown[] } }>).find((x) => x.name === upstream);
  return u?.routes?.routes?.length ?? 0;
}

/** Counts by key. */
export function tally<T>(xs: readonly T[], key: (x: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const x of xs) out[key(x)] = (out[key(x)] ?? 0) + 1;
  return out;
}
