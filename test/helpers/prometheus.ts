// A real Prometheus (Debian's /usr/bin/prometheus) scraping sidecars every second, and its HTTP
// query API, for tests that check what dashboards would see.
import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./peers.js";
import type { Teardown } from "./mesh.js";

export interface PromSample {
  readonly metric: Record<string, string>;
  readonly value?: [number, string];
  readonly values?: Array<[number, string]>;
}

export interface PromResult {
  readonly status: string;
  readonly error?: string;
  readonly resultType?: string;
  readonly result: PromSample[];
}

export interface Prometheus {
  readonly url: string;
  /** /api/v1/query at now. */
  query(q: string): Promise<PromResult>;
  /** /api/v1/query_range over the last `seconds`, step 10 s (the UI's). */
  range(q: string, seconds: number): Promise<PromResult>;
  stderr(): string;
}

export interface ScrapeTarget {
  /** host:port */
  readonly address: string;
  readonly path: string;
  /** Target labels (Prometheus relabelling: the pod labels a real setup adds). */
  readonly labels?: Record<string, string>;
}

export async function startPrometheus(t: Teardown, targets: readonly ScrapeTarget[]): Promise<Prometheus> {
  const dir = await mkdtemp(join(tmpdir(), "meshproxy-prom-"));
  const port = await freePort();
  const config = join(dir, "prometheus.yml");
  const lines = ["global:", "  scrape_interval: 1s", "  scrape_timeout: 1s", "scrape_configs:"];
  targets.forEach((tg, i) => {
    lines.push(`  - job_name: t${i}`, `    metrics_path: ${tg.path}`, "    static_configs:", `      - targets: ["${tg.address}"]`);
    if (tg.labels) {
      lines.push("        labels:");
      for (const [k, v] of Object.entries(tg.labels)) lines.push(`          ${k}: "${v}"`);
    }
  });
  await writeFile(config, lines.join("\n") + "\n");
  const prom = spawn("/usr/bin/prometheus", [`--config.file=${config}`, `--storage.tsdb.path=${join(dir, "data")}`, `--web.listen-address=127.0.0.1:${port}`, "--log.level=warn"], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  prom.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const exited = new Promise<void>((r) => prom.once("close", () => r()));
  t.teardown(async () => {
    if (prom.exitCode === null && prom.signalCode === null) {
      prom.kill("SIGTERM");
      const timer = setTimeout(() => prom.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  });
  const url = `http://127.0.0.1:${port}`;
  const call = async (path: string): Promise<PromResult> => {
    try {
      const res = await fetch(`${url}${path}`);
      const body = (await res.json()) as { status: string; error?: string; data?: { resultType?: string; result?: PromSample[] } };
      return { status: body.status, ...(body.error ? { error: body.error } : {}), ...(body.data?.resultType ? { resultType: body.data.resultType } : {}), result: body.data?.result ?? [] };
    } catch (e) {
      return { status: "unreachable", error: e instanceof Error ? e.message : String(e), result: [] };
    }
  };
  return {
    url,
    query: (q) => call(`/api/v1/query?query=${encodeURIComponent(q)}`),
    range: (q, seconds) => {
      const end = Date.now() / 1000;
      return call(`/api/v1/query_range?query=${encodeURIComponent(q)}&start=${end - seconds}&end=${end}&step=10s&timeout=8s`);
    },
    stderr: () => stderr,
  };
}
