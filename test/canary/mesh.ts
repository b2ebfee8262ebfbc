// A dev-control-plane mesh for canary tests: api v1 and v2 (apps whose failures a test can turn
// on), their sidecars, a web sidecar calling api, and `meshproxy canary` runs against it.
import type { IncomingMessage, ServerResponse } from "node:http";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { runMeshproxy, startSidecar, tempDir, type MeshProcess, type Teardown } from "../helpers/mesh.js";
import { configDump, configWrite, httpApp, until, type TestApp } from "../helpers/l7.js";

export interface FlakyApp extends TestApp {
  /** Every n-th request answers 500 (0: none). */
  failEvery: number;
}

/** An app answering `<name> <status>`; failEvery and delayMs are read per request. */
export async function flakyApp(t: Teardown, name: string): Promise<FlakyApp> {
  let n = 0;
  let self: FlakyApp | null = null;
  const app = await httpApp(t, name, (req: IncomingMessage, res: ServerResponse, a: TestApp) => {
    req.resume();
    const every = self?.failEvery ?? 0;
    const status = every > 0 && ++n % every === 0 ? 500 : a.status;
    const answer = () => {
      res.writeHead(status, { "content-type": "text/plain" });
      res.end(`${name} ${status}\n`);
    };
    if (a.delayMs > 0) setTimeout(answer, a.delayMs);
    else answer();
  });
  self = Object.assign(app, { failEvery: 0 });
  return self;
}

export async function canaryMesh(t: Teardown) {
  const dir = await tempDir(t, "meshproxy-canary-");
  const v1 = await flakyApp(t, "v1");
  const v2 = await flakyApp(t, "v2");
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  await configWrite(t, dir, {
    Kind: "service-resolver",
    Name: "api",
    DefaultSubset: "v1",
    Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2" } },
  });
  // As an operator has it before a rollout: everything on v1, v2 deployed and named.
  await configWrite(t, dir, { Kind: "service-splitter", Name: "api", Splits: [{ Weight: 100, ServiceSubset: "v1" }, { Weight: 0, ServiceSubset: "v2" }] });
  await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${v1.port}`, "-meta", "version=v1"]);
  await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${v2.port}`, "-meta", "version=v2"]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"]);
  await until(async () => {
    const d = (await configDump(web.adminAddr)) as { clusters?: Record<string, { endpoints: unknown[] }> };
    return Object.values(d.clusters ?? {}).filter((c) => c.endpoints.length > 0).length >= 2;
  }, 10_000, "both api subsets to have endpoints");
  return { dir, v1, v2, web, url: `http://${web.upstreams["api"]}/` };
}

export function canary(t: Teardown, dir: string, args: string[]): MeshProcess {
  return runMeshproxy(t, ["canary", "-service", "api", "-data-dir", dir, "-log-json", ...args]);
}

/** The splitter as stored in the state directory. */
export async function splitter(dir: string): Promise<{ Splits: Array<{ Weight: number; ServiceSubset: string }>; Meta: Record<string, string> } | null> {
  try {
    return JSON.parse(await readFile(join(dir, "config", "service-splitter", "api.json"), "utf8")) as { Splits: Array<{ Weight: number; ServiceSubset: string }>; Meta: Record<string, string> };
  } catch {
    return null;
  }
}

export function weightOf(s: Awaited<ReturnType<typeof splitter>>, subset: string): number {
  return s?.Splits.find((x) => x.ServiceSubset === subset)?.Weight ?? 0;
}
