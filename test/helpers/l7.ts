// Helpers for L7 tests: config entries through the real CLI, small HTTP apps whose behaviour a
// test can change, a fixed-rate load generator, and waiting on a sidecar's applied config.
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { Pool, request } from "undici";
import { runMeshproxy, type Teardown } from "./mesh.js";
import { ignoreRejection } from "./ignore.js";

/** `meshproxy config write` with the entry as a file, as a user would. */
export async function configWrite(t: Teardown, dataDir: string, entry: Record<string, unknown>): Promise<void> {
  const file = join(dataDir, `entry-${String(entry["Kind"])}-${String(entry["Name"])}-${Date.now()}-${Math.random().toString(36).slice(2)}.json`);
  await writeFile(file, JSON.stringify(entry));
  const p = runMeshproxy(t, ["config", "write", file, "-data-dir", dataDir]);
  const code = await p.exited;
  if (code !== 0) throw new Error(`config write failed (${code}): ${p.stderrText()}`);
}

export interface TestApp {
  readonly port: number;
  /** Requests served so far. */
  served: number;
  /** Status the app answers with; tests flip it. */
  status: number;
  /** Extra delay before answering, ms. */
  delayMs: number;
}

/** An HTTP app that answers `<name> <status>` and counts what it served. */
export async function httpApp(t: Teardown, name: string, handler?: (req: IncomingMessage, res: ServerResponse, app: TestApp) => void): Promise<TestApp> {
  const app: TestApp = { port: 0, served: 0, status: 200, delayMs: 0 };
  const server = createServer((req, res) => {
    app.served++;
    if (handler) return handler(req, res, app);
    const answer = () => {
      res.writeHead(app.status, { "content-type": "text/plain" });
      res.end(`${name} ${app.status}\n`);
    };
    req.resume();
    if (app.delayMs > 0) setTimeout(answer, app.delayMs);
    else answer();
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  Object.assign(app, { port: (server.address() as AddressInfo).port });
  t.teardown(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  return app;
}

export interface LoadResult {
  readonly sent: number;
  readonly byBody: Record<string, number>;
  readonly byStatus: Record<number, number>;
  readonly errors: string[];
}

/**
 * Sends `rps` requests a second to `url` until `stop()` resolves, over keep-alive connections,
 * and tallies first words of the bodies ("v1", "v2") and statuses.
 */
export function load(url: string, rps: number): { stop(): Promise<LoadResult>; snapshot(): LoadResult; reset(): void } {
  const u = new URL(url);
  const pool = new Pool(u.origin, { connections: 16 });
  let r = { sent: 0, byBody: {} as Record<string, number>, byStatus: {} as Record<number, number>, errors: [] as string[] };
  const inflight = new Set<Promise<void>>();
  const one = async () => {
    const cur = r;
    cur.sent++;
    try {
      const res = await pool.request({ path: u.pathname + u.search, method: "GET", headersTimeout: 10_000, bodyTimeout: 10_000 });
      const body = await res.body.text();
      cur.byStatus[res.statusCode] = (cur.byStatus[res.statusCode] ?? 0) + 1;
      const word = body.split(" ")[0] ?? "";
      cur.byBody[word] = (cur.byBody[word] ?? 0) + 1;
      if (res.statusCode !== 200) cur.errors.push(`${res.statusCode} ${body.trim()} flags=${String(res.headers["x-meshproxy-response-flags"] ?? "")}`);
    } catch (e) {
      cur.errors.push((e as Error).message);
    }
  };
  const interval = 1000 / rps;
  let next = performance.now();
  let stopped = false;
  const tick = () => {
    if (stopped) return;
    const now = performance.now();
    while (next <= now) {
      const p = one();
      inflight.add(p);
      p.finally(() => inflight.delete(p)).catch(ignoreRejection("one() catches and records its own errors: it never rejects"));
      next += interval;
    }
    setTimeout(tick, Math.max(0, next - performance.now()));
  };
  tick();
  return {
    snapshot: () => r,
    reset: () => {
      r = { sent: 0, byBody: {}, byStatus: {}, errors: [] };
    },
    async stop() {
      stopped = true;
      await Promise.all([...inflight]);
      await pool.close();
      return r;
    },
  };
}

/** Polls `probe` every 50 ms until it returns true (bounded); the condition is the event. */
export async function until(probe: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = "condition"): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await probe()) return;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The sidecar's current Snapshot, from its admin API. */
export async function configDump(adminAddr: string): Promise<unknown> {
  const res = await request(`http://${adminAddr}/config_dump`);
  return res.body.json();
}

/** One metric's value from the sidecar's Prometheus endpoint (sum over series matching all labels). */
export async function metric(adminAddr: string, name: string, labels: Record<string, string> = {}): Promise<number> {
  const res = await request(`http://${adminAddr}/stats/prometheus`);
  const text = await res.body.text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const ls = m[2] ?? "";
    if (Object.entries(labels).every(([k, v]) => ls.includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

/** Weights (1/10000ths) of the catch-all route of an upstream in a config dump, by cluster-name prefix. */
export function splitWeights(dump: unknown, upstream: string): Record<string, number> {
  const out: Record<string, number> = {};
  if (typeof dump !== "object" || dump === null || !("upstreams" in dump) || !Array.isArray(dump.upstreams)) return out;
  for (const u of dump.upstreams as Array<{ name?: string; routes?: { routes?: Array<{ action?: { splits?: Array<{ cluster: string; weight: number }> } }> } }>) {
    if (u.name !== upstream) continue;
    const routes = u.routes?.routes ?? [];
    const last = routes[routes.length - 1];
    for (const s of last?.action?.splits ?? []) out[s.cluster.split(".")[0]!] = s.weight;
  }
  return out;
}
