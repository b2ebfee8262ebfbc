// An L4-only sidecar must not load what it never uses: every module costs RSS in every sidecar
// (bench/PERF-LOG.md, 2026-12-02 memory). A real sidecar process, started with a probe that
// records every ES module and CommonJS file it loads; the list must hold none of the modules
// below, which load only when a Snapshot, a flag or a subcommand needs them.
import t from "tap";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { ROOT, startSidecar, tempDir } from "../helpers/mesh.js";

const PROBE = join(ROOT, "test", "helpers", "module-probe.mjs");

/** Loaded only where they are used; each with where that is. */
const NOT_ON_THE_L4_START_PATH: ReadonlyArray<readonly [string, string]> = [
  ["/node_modules/re2js/", "the first regex a Snapshot or intention compiles"],
  ["/node_modules/@opentelemetry/", "-tracing-endpoint (prom-client's index would load @opentelemetry/api: src/telemetry/prom.ts)"],
  ["/node_modules/prom-client/index.js", "never: src/telemetry/prom.ts loads the classes without the index"],
  ["/node_modules/tdigest/", "never (prom-client's Summary)"],
  ["/node_modules/undici/", "an HTTP cluster, a Consul agent or -app-metrics-url"],
  ["/node_modules/@peculiar/", "the dev CA's child process"],
  ["/node_modules/reflect-metadata/", "the dev CA's child process"],
  ["/node_modules/@grpc/", "never in a sidecar"],
  ["/dist/telemetry/tracing.js", "-tracing-endpoint"],
  ["/dist/canary/", "meshproxy canary"],
  ["/dist/native/", "the native library"],
  ["/dist/gateway/", "-gateway mesh"],
  ["/dist/cli/demo.js", "meshproxy demo"],
  ["/dist/cli/canary.js", "meshproxy canary"],
  ["/dist/cli/config.js", "meshproxy config"],
  ["/dist/cli/intention.js", "meshproxy intention"],
];

async function loadedBy(dir: string, pid: number): Promise<string[]> {
  const read = async (ext: string): Promise<string[]> => (await readFile(join(dir, `${pid}.${ext}`), "utf8")).split("\n").filter(Boolean);
  return [...(await read("esm")), ...(await read("cjs"))];
}

t.test("an L4 sidecar (public listener and a TCP upstream, dev control plane) starts without the modules it never uses", async (t) => {
  const dataDir = await tempDir(t);
  const probeDir = await tempDir(t, "meshproxy-modules-");
  const env = { NODE_OPTIONS: `--import ${PROBE}`, MESHPROXY_MODULE_PROBE_DIR: probeDir };
  const s = await startSidecar(t, dataDir, ["-service", "web", "-listen", "127.0.0.1:0", "-service-addr", "127.0.0.1:1", "-upstream", "db:0"], env);
  const pid = s.child.pid!;
  t.equal(await s.stop(), 0, "the sidecar stopped cleanly");
  const loaded = await loadedBy(probeDir, pid);
  // The probe sees both kinds of module, or an empty list would pass.
  t.ok(loaded.some((m) => m.endsWith("/dist/proxy.js")), "the probe saw the proxy's ES modules");
  t.ok(loaded.some((m) => m.endsWith("/node_modules/prom-client/lib/counter.js")), "the probe saw CommonJS files required from CommonJS");
  for (const [module, when] of NOT_ON_THE_L4_START_PATH) {
    const hits = loaded.filter((m) => m.includes(module));
    t.same(hits, [], `${module} is not loaded at start (it loads on: ${when})`);
  }
});
