// The mesh the live traffic page is tested on: real sidecars on the dev control plane, web calling
// api over an L7 upstream split 50/50 between subsets v1 and v2. v1 answers 200 at once; v2 waits
// `V2_DELAY_MS` and fails every `V2_FAIL_EVERY`th request with 500. `send` tallies what the client
// saw per subset, so the page's figures can be checked against the traffic sent.
import { Pool } from "undici";
import { ENVOY_BUCKETS_MS } from "../../src/telemetry/http-stats.js";
import { startSidecar, tempDir, type Sidecar, type Teardown } from "./mesh.js";
import { configDump, configWrite, httpApp, until, type TestApp } from "./l7.js";

export const V2_DELAY_MS = 30;
export const V2_FAIL_EVERY = 3;

export interface TrafficMesh {
  readonly dir: string;
  readonly web: Sidecar;
  readonly v1: TestApp;
  readonly v2: TestApp;
  readonly url: string;
}

export interface Tally {
  /** Per subset ("v1", "v2"): responses seen, and how many were 5xx. */
  readonly requests: Record<string, number>;
  readonly errors: Record<string, number>;
  /** The slowest response per subset as the client timed it, ms: the sidecar's own time is at most this. */
  readonly maxMs: Record<string, number>;
}

/** The upper bound of the Envoy histogram bucket `ms` falls in: a p99 from those buckets is at most this. */
export function bucketCeiling(ms: number): number {
  return ENVOY_BUCKETS_MS.find((b) => ms <= b) ?? Infinity;
}

export async function trafficMesh(t: Teardown): Promise<TrafficMesh> {
  const dir = await tempDir(t);
  const v1 = await httpApp(t, "v1");
  const v2 = await httpApp(t, "v2", (req, res, app) => {
    req.resume();
    const status = app.served % V2_FAIL_EVERY === 0 ? 500 : 200;
    setTimeout(() => {
      res.writeHead(status, { "content-type": "text/plain" });
      res.end(`v2 ${status}\n`);
    }, V2_DELAY_MS);
  });
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  await configWrite(t, dir, {
    Kind: "service-resolver",
    Name: "api",
    DefaultSubset: "v1",
    Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2" } },
  });
  await configWrite(t, dir, { Kind: "service-splitter", Name: "api", Splits: [{ Weight: 50, ServiceSubset: "v1" }, { Weight: 50, ServiceSubset: "v2", ResponseHeaders: { Set: { "x-canary": "yes" } } }] });
  await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${v1.port}`, "-meta", "version=v1"]);
  await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${v2.port}`, "-meta", "version=v2"]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0", "-upstream", "db:0"]);
  await until(async () => {
    const d = (await configDump(web.adminAddr)) as { clusters?: Record<string, { endpoints: unknown[] }> };
    return Object.values(d.clusters ?? {}).filter((c) => c.endpoints.length > 0).length >= 2;
  }, 10_000, "both api subsets to have endpoints");
  return { dir, web, v1, v2, url: `http://${web.upstreams["api"]}/` };
}

/** Sends `n` requests (4 at a time) and tallies them by the subset that answered. */
export async function send(url: string, n: number): Promise<Tally> {
  const u = new URL(url);
  const pool = new Pool(u.origin, { connections: 4 });
  const tally: Tally = { requests: {}, errors: {}, maxMs: {} };
  let next = 0;
  const worker = async () => {
    while (next < n) {
      next++;
      const start = performance.now();
      const res = await pool.request({ path: u.pathname, method: "GET" });
      const subset = (await res.body.text()).split(" ")[0] ?? "";
      tally.maxMs[subset] = Math.max(tally.maxMs[subset] ?? 0, performance.now() - start);
      tally.requests[subset] = (tally.requests[subset] ?? 0) + 1;
      if (res.statusCode >= 500) tally.errors[subset] = (tally.errors[subset] ?? 0) + 1;
    }
  };
  try {
    await Promise.all([worker(), worker(), worker(), worker()]);
  } finally {
    await pool.close();
  }
  return tally;
}

export interface TrafficJsonCluster {
  readonly name: string;
  readonly service: string;
  readonly subset: string;
  readonly weight_percent: number | null;
  readonly requests_per_second: number | null;
  readonly error_rate: number | null;
  readonly p99_ms: number | null;
  readonly window_requests: number;
  readonly window_errors: number;
  readonly requests_total: number;
  readonly errors_total: number;
}

export interface TrafficJson {
  readonly service: string | null;
  readonly control_plane: string | null;
  readonly window_seconds: number;
  readonly weights_writable: boolean;
  readonly weights_read_only_reason?: string;
  readonly services: ReadonlyArray<{ readonly name: string; readonly protocol: string; readonly clusters: readonly TrafficJsonCluster[] }>;
  readonly empty_reason?: string;
}
