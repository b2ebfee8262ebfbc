// An L4-only sidecar must not load what it never uses: every module costs RSS in every sidecar
// (bench/PERF-LOG.md, 2026-12-02 memory). A real sidecar process, started with a probe that
// records every ES module and CommonJS file it loads; the list must hold none of the modules
// below, which load only when a Snapshot, a flag or a subcommand needs them.
import t from "tap";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { request, type IncomingMessage } from "node:http";
import { connect as http2Connect } from "node:http2";
import { ROOT, hostPort, startSidecar, tempDir } from "../helpers/mesh.js";
import { configWrite, httpApp } from "../helpers/l7.js";

const PROBE = join(ROOT, "test", "helpers", "module-probe.mjs");

/** Loaded only where they are used; each with where that is. */
const NOT_ON_THE_L4_START_PATH: ReadonlyArray<readonly [string, string]> = [
  ["/node_modules/re2js/", "the first regex a Snapshot or intention compiles"],
  ["/node_modules/@opentelemetry/", "-tracing-endpoint (prom-client's index would load @opentelemetry/api: src/telemetry/prom.ts)"],
  ["/node_modules/prom-client/index.js", "never: src/telemetry/prom.ts loads the classes without the index"],
  ["/node_modules/tdigest/", "never (prom-client's Summary)"],
  ["/node_modules/undici/", "an HTTP/2 cluster or h2c app, a request on the node:http path, a Consul agent or -app-metrics-url"],
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

/** One GET with node:http (HTTP/1.1), or over h2c with prior knowledge (what an app's gRPC or h2 client sends). */
async function get(addr: string, h2c: boolean): Promise<{ status: number; body: string }> {
  const { host, port } = hostPort(addr);
  if (!h2c) {
    const res = await new Promise<IncomingMessage>((resolve, reject) => request({ host, port, path: "/", agent: false }, resolve).on("error", reject).end());
    let body = "";
    for await (const c of res) body += String(c);
    return { status: res.statusCode ?? 0, body };
  }
  const session = http2Connect(`http://${addr}`);
  try {
    return await new Promise((resolve, reject) => {
      session.on("error", reject);
      const s = session.request({ ":path": "/" });
      let status = 0;
      let body = "";
      s.on("response", (h) => (status = Number(h[":status"])));
      s.on("data", (c: Buffer) => (body += String(c)));
      s.on("end", () => resolve({ status, body }));
      s.on("error", reject);
    });
  } finally {
    session.close();
  }
}

t.test("an HTTP/1.1 pair serves requests without undici; an h2c request on the same upstream loads it on first use", async (t) => {
  const dataDir = await tempDir(t);
  const probeDir = await tempDir(t, "meshproxy-modules-");
  const env = { NODE_OPTIONS: `--import ${PROBE}`, MESHPROXY_MODULE_PROBE_DIR: probeDir };
  await configWrite(t, dataDir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  const app = await httpApp(t, "api");
  const api = await startSidecar(t, dataDir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`], env);
  const web = await startSidecar(t, dataDir, ["-service", "web", "-upstream", "api:0"], env);
  const upstream = web.upstreams["api"]!;

  const h1 = await get(upstream, false);
  t.equal(h1.status, 200, "an HTTP/1.1 request through both sidecars is answered");
  const h2 = await get(upstream, true);
  t.equal(h2.status, 200, "an h2c request on the same upstream listener is answered too (undici loaded on demand)");
  t.match(h2.body, /api/, "by the app");

  t.equal(await api.stop(), 0, "the server-side sidecar stopped cleanly");
  t.equal(await web.stop(), 0, "the client-side sidecar stopped cleanly");
  const onServer = await loadedBy(probeDir, api.child.pid!);
  const onClient = await loadedBy(probeDir, web.child.pid!);
  t.ok(onServer.some((m) => m.endsWith("/dist/http1/server.js")), "the server side served HTTP/1.1 with the llhttp core");
  t.same(onServer.filter((m) => m.includes("/node_modules/undici/")), [], "the server side, which only ever saw HTTP/1.1, never loaded undici");
  t.ok(onClient.some((m) => m.includes("/node_modules/undici/")), "the client side loaded undici for the h2c request");
});
