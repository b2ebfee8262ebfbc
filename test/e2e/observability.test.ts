// Observability end to end: a real sidecar pair in front of an HTTP app that serves its own
// Prometheus metrics. The api sidecar's metrics listener merges the app's series into its own;
// promtool and a real Prometheus read the result; a failing app costs only its own series. The
// admin API shows clusters, certificates (never keys), and changes the log level at run time.
import t from "tap";
import { spawn } from "node:child_process";
import { createServer, type Server } from "node:http";
import { once } from "node:events";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import { Counter, Registry, collectDefaultMetrics } from "prom-client";
import { request } from "undici";
import { runMeshproxy, startSidecar, tempDir, type LogLine, type Teardown } from "../helpers/mesh.js";
import { configWrite, httpApp, until, type TestApp } from "../helpers/l7.js";
import { freePort, nextLog, runCommand, sample } from "../helpers/peers.js";
import { ConsulAgentDouble } from "../helpers/consul-agent.js";

const CLEAN_ENV = { CONNECT_PROXY_ID: "", CONNECT_SIDECAR_FOR: "" };

// ---- helpers ----

async function get(url: string, method: "GET" | "POST" = "GET"): Promise<{ status: number; body: string }> {
  const res = await request(url, { method, headersTimeout: 10_000, bodyTimeout: 10_000 });
  return { status: res.statusCode, body: await res.body.text() };
}

/** The app's own metrics endpoint, as a prom-client app serves it; a test can make it misbehave. */
interface AppMetrics {
  readonly url: string;
  mode: "ok" | "garbage";
  stop(): Promise<void>;
}

async function appMetrics(t: Teardown): Promise<AppMetrics> {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  new Counter({ name: "shop_orders_total", help: "Orders placed", labelNames: ["kind"], registers: [registry] }).labels("book").inc(42);
  const m = { url: "", mode: "ok" as AppMetrics["mode"], stop: async () => {} };
  const server: Server = createServer((req, res) => {
    if (m.mode === "garbage") return void res.end("<html><body>Whitelabel Error Page</body></html>\n");
    registry.metrics().then(
      (text) => {
        res.writeHead(200, { "content-type": registry.contentType });
        res.end(text);
      },
      (e: unknown) => {
        // The scrape sees a 500 (and the test its assertion fail), not an unhandled rejection.
        res.writeHead(500, { "content-type": "text/plain" });
        res.end(`app metrics failed: ${e instanceof Error ? e.message : String(e)}\n`);
      },
    );
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  m.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`;
  m.stop = () =>
    new Promise<void>((r) => {
      if (!server.listening) return r();
      server.closeAllConnections();
      server.close(() => r());
    });
  t.teardown(() => m.stop());
  return m;
}

/** `promtool check metrics`: exit 1 is a parse error; 3 is lint only. Returns the lint lines. */
async function promtoolCheck(t: Teardown, text: string): Promise<{ code: number | null; lint: string[] }> {
  const r = await runCommand(t, "/usr/bin/promtool", ["check", "metrics"], { input: text });
  return { code: r.code, lint: (r.stdout + r.stderr).split("\n").filter((l) => l.trim() !== "") };
}

// Names fixed by compatibility, not by us: Envoy's counters without `_total` (envoy_cluster_upstream_rq_xx)
// and prom-client's nodejs_active_*_total gauges (the proxy's and the app's), and Envoy's `_ms`
// histograms (envoy_listener_downstream_cx_length_ms), exposed at 0 from listener start as Envoy's.
const ACCEPTED_LINT = /^\S+ (counter metrics should have "_total" suffix|non-counter metrics should not have "_total" suffix|metric names should not contain abbreviated units)$/;

// ---- the mesh: web → api (HTTP), api's sidecar merging api's metrics ----

const dir = await tempDir(t);
const app: TestApp = await httpApp(t, "api");
const metricsApp = await appMetrics(t);
await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
// Ejection is shown by /clusters at the end; nothing fails before that.
await configWrite(t, dir, {
  Kind: "service-defaults",
  Name: "web",
  Protocol: "http",
  UpstreamConfig: { Overrides: [{ Name: "api", PassiveHealthCheck: { Interval: "200ms", MaxFailures: 3, MaxEjectionPercent: 100, BaseEjectionTime: "30s" } }] },
});
const api = await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`, "-metrics-addr", "127.0.0.1:0", "-app-metrics-url", metricsApp.url]);
const metricsAddr = String((await api.waitForLog((l) => l["@message"] === "metrics listening"))["address"]);
const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"]);
const url = `http://${web.upstreams["api"]}/`;
await until(async () => (await get(url)).status === 200, 15_000, "web → api to answer 200");
for (let i = 0; i < 5; i++) await get(url);

async function scrapeMetrics(): Promise<string> {
  const r = await get(`http://${metricsAddr}/metrics`);
  if (r.status !== 200) throw new Error(`GET ${metricsAddr}/metrics: ${r.status} ${r.body}`);
  return r.body;
}

t.test("the metrics listener serves the proxy's and the app's series in one exposition promtool accepts", async (t) => {
  t.match(metricsAddr, /^127\.0\.0\.1:\d+$/, "loopback, where -metrics-addr put it");
  const text = await scrapeMetrics();
  const listener = `127.0.0.1_${api.publicAddr!.split(":")[1]}`;
  t.ok((sample(text, "envoy_listener_downstream_cx_total", { envoy_listener_address: listener }) ?? 0) >= 1, "proxy series: envoy_listener_downstream_cx_total on the public listener");
  t.equal(sample(text, "envoy_server_live"), 1, "envoy_server_live 1");
  t.equal(sample(text, "shop_orders_total", { kind: "book" }), 42, "app series: shop_orders_total");
  t.ok(sample(text, "app_process_cpu_user_seconds_total") !== null, "the app's process_* collided with the proxy's and is served as app_process_*");
  t.ok(sample(text, "process_cpu_user_seconds_total") !== null, "the proxy's own process_* keep their names");
  t.equal(sample(text, "meshproxy_app_metrics_up"), 1, "meshproxy_app_metrics_up 1");
  t.ok((sample(text, "meshproxy_app_metrics_families", { result: "renamed" }) ?? 0) > 0, "renamed families counted");
  const types = text.split("\n").filter((l) => l.startsWith("# TYPE "));
  t.equal(new Set(types.map((l) => l.split(" ")[2])).size, types.length, "no family appears twice");
  const check = await promtoolCheck(t, text);
  t.not(check.code, 1, "promtool parses it");
  t.same(check.lint.filter((l) => !ACCEPTED_LINT.test(l)), [], "lint: only the _total rules that Envoy's and prom-client's fixed names break");
  const admin = await get(`http://${api.adminAddr}/stats/prometheus`);
  t.equal(sample(admin.body, "shop_orders_total", { kind: "book" }), 42, "the admin API's /stats/prometheus serves the same merged exposition");
  t.equal((await get(`http://${metricsAddr}/stats/prometheus`)).status, 200, "/stats/prometheus on the metrics listener too");
  t.equal((await get(`http://${metricsAddr}/config_dump`)).status, 404, "the metrics listener serves metrics only");
  t.equal((await get(`http://${metricsAddr}/metrics`, "POST")).status, 405, "and only to GET");
});

t.test("a real Prometheus scrapes the metrics listener and returns proxy and app series from its API", async (t) => {
  const promDir = await mkdtemp(join(tmpdir(), "meshproxy-prom-"));
  const port = await freePort();
  const config = join(promDir, "prometheus.yml");
  await writeFile(
    config,
    ["global:", "  scrape_interval: 1s", "  scrape_timeout: 1s", "scrape_configs:", "  - job_name: meshproxy", "    metrics_path: /metrics", "    static_configs:", `      - targets: ["${metricsAddr}"]`, ""].join("\n"),
  );
  const prom = spawn("/usr/bin/prometheus", [`--config.file=${config}`, `--storage.tsdb.path=${join(promDir, "data")}`, `--web.listen-address=127.0.0.1:${port}`, "--log.level=warn"], { stdio: ["ignore", "ignore", "pipe"] });
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
    await rm(promDir, { recursive: true, force: true });
  });
  const query = async (q: string): Promise<Array<{ metric: Record<string, string>; value: [number, string] }>> => {
    try {
      const r = await get(`http://127.0.0.1:${port}/api/v1/query?query=${encodeURIComponent(q)}`);
      if (r.status !== 200) return [];
      const body = JSON.parse(r.body) as { status: string; data?: { result?: Array<{ metric: Record<string, string>; value: [number, string] }> } };
      return body.status === "success" ? (body.data?.result ?? []) : [];
    } catch {
      return []; // not listening yet
    }
  };
  const proxyQ = `envoy_listener_downstream_cx_total{job="meshproxy"}`;
  const appQ = `shop_orders_total{job="meshproxy",kind="book"}`;
  await until(async () => (await query(proxyQ)).length > 0 && (await query(appQ)).length > 0, 30_000, `Prometheus to return ${proxyQ} and ${appQ}; its stderr:\n${stderr}`);
  const [proxySeries, appSeries, up] = await Promise.all([query(proxyQ), query(appQ), query(`up{job="meshproxy"}`)]);
  t.ok(Number(proxySeries[0]!.value[1]) >= 1, `proxy series in Prometheus: ${JSON.stringify(proxySeries[0]!.metric)}`);
  t.equal(appSeries[0]!.value[1], "42", `app series in Prometheus: ${JSON.stringify(appSeries[0]!.metric)}`);
  t.equal(up[0]?.value[1], "1", "up == 1: Prometheus took the whole scrape");
  const live = await query(`envoy_server_live{job="meshproxy"}`);
  t.equal(live[0]?.value[1], "1", "envoy_server_live from Prometheus");
});

t.test("garbage from the app: the proxy's series are still served and the failure is counted", async (t) => {
  const before = sample(await scrapeMetrics(), "meshproxy_app_metrics_scrape_errors_total", { reason: "invalid" }) ?? 0;
  metricsApp.mode = "garbage";
  const warn = nextLog(api, (l) => l["@message"] === "app metrics not merged; serving the proxy's alone");
  const text = await scrapeMetrics();
  t.equal(sample(text, "meshproxy_app_metrics_scrape_errors_total", { reason: "invalid" }), before + 1, "errors{reason=invalid} +1");
  t.equal(sample(text, "meshproxy_app_metrics_up"), 0);
  t.ok(sample(text, "envoy_listener_downstream_cx_total") !== null, "proxy series still served");
  t.equal(sample(text, "shop_orders_total", { kind: "book" }), null, "no app series from a garbled page");
  t.not((await promtoolCheck(t, text)).code, 1, "and the exposition still parses");
  t.match((await warn)["error"], /not the Prometheus text format: line 1/, "logged once, with the reason");
  metricsApp.mode = "ok";
  t.equal(sample(await scrapeMetrics(), "shop_orders_total", { kind: "book" }), 42, "merged again when the app recovers");
});

t.test("the app's metrics endpoint down: the proxy's series are still served and the failure is counted", async (t) => {
  const before = sample(await scrapeMetrics(), "meshproxy_app_metrics_scrape_errors_total", { reason: "connect" }) ?? 0;
  await metricsApp.stop();
  const text = await scrapeMetrics();
  t.equal(sample(text, "meshproxy_app_metrics_scrape_errors_total", { reason: "connect" }), before + 1, "errors{reason=connect} +1");
  t.equal(sample(text, "meshproxy_app_metrics_up"), 0);
  t.ok(sample(text, "envoy_server_live") === 1 && sample(text, "envoy_listener_downstream_cx_total") !== null, "proxy series still served");
  t.equal(sample(text, "shop_orders_total", { kind: "book" }), null, "no app series");
  const again = await scrapeMetrics();
  t.equal(sample(again, "meshproxy_app_metrics_scrape_errors_total", { reason: "connect" }), before + 2, "each failed scrape counts");
});

t.test("admin /certs: identity, serials and expiry of leaf and roots; no key material; matches the expiry metrics", async (t) => {
  const r = await get(`http://${api.adminAddr}/certs`);
  t.equal(r.status, 200);
  t.notMatch(r.body, /PRIVATE KEY|BEGIN /, "no PEM at all, keys least of all");
  const certs = JSON.parse(r.body) as {
    identity: { service: string; spiffe_id: string };
    leaf: { serial_number: string; spiffe_id: string; valid_from: string; expiration_time: string; days_until_expiration: number };
    roots: Array<{ subject: string; serial_number: string; expiration_time: string; days_until_expiration: number }>;
  };
  t.equal(certs.identity.service, "api");
  t.match(certs.leaf.spiffe_id, /^spiffe:\/\/[^/]+\/ns\/default\/dc\/dc1\/svc\/api$/, "leaf SPIFFE ID");
  t.match(certs.leaf.serial_number, /^[0-9a-f]{2}(:[0-9a-f]{2})+$/, "leaf serial, colon hex");
  t.ok(Date.parse(certs.leaf.valid_from) <= Date.now() && Date.parse(certs.leaf.expiration_time) > Date.now(), "valid now");
  t.ok(certs.leaf.days_until_expiration > 0 && certs.leaf.days_until_expiration <= 3, `days until expiry: ${certs.leaf.days_until_expiration}`);
  t.ok(certs.roots.length >= 1, "at least one root");
  for (const root of certs.roots) {
    t.match(root, { subject: /CN=/, serial_number: /^[0-9a-f]{2}(:[0-9a-f]{2})+$/, expiration_time: /^\d{4}-/ }, `root ${root.serial_number}`);
  }
  const text = await scrapeMetrics();
  const leafExpiry = sample(text, "meshproxy_certificate_expiry_timestamp_seconds", { kind: "leaf", serial: certs.leaf.serial_number });
  t.ok(leafExpiry !== null && Math.abs(leafExpiry - Date.parse(certs.leaf.expiration_time) / 1000) < 1, "leaf expiry metric, same serial and time");
  const rootExpiry = sample(text, "meshproxy_certificate_expiry_timestamp_seconds", { kind: "root", serial: certs.roots[0]!.serial_number });
  t.equal(rootExpiry, Date.parse(certs.roots[0]!.expiration_time) / 1000, "root expiry metric next to the leaf's");
});

t.test("admin /config_dump: the Snapshot without key material", async (t) => {
  const r = await get(`http://${api.adminAddr}/config_dump`);
  t.equal(r.status, 200);
  t.notMatch(r.body, /PRIVATE KEY/, "no private key");
  t.match(r.body, /"privateKeyPem": "\[redacted\]"/, "the key field says it was redacted");
  t.match(r.body, /BEGIN CERTIFICATE/, "certificates are not secret and stay");
});

t.test("admin POST /logging?level=debug: debug lines appear from then on; GET is refused", async (t) => {
  t.notOk(web.logs.some((l: LogLine) => l["@level"] === "debug"), "no debug lines at -log-level info");
  t.equal((await get(`http://${web.adminAddr}/logging`)).status, 405, "GET /logging → 405");
  t.equal((await get(`http://${web.adminAddr}/logging?level=loud`, "POST")).status, 400, "an unknown level → 400");
  const changed = nextLog(web, (l) => l["@message"] === "log level changed");
  const r = await get(`http://${web.adminAddr}/logging?level=debug`, "POST");
  t.same(r, { status: 200, body: "level: debug\n" });
  t.match(await changed, { from: "info", to: "debug" });
  const debug = nextLog(web, (l) => l["@level"] === "debug" && l["@message"] === "attempt");
  t.equal((await get(url)).status, 200);
  t.match(await debug, { "@level": "debug", "@module": "meshproxy.http" }, "the request's debug line");
  t.same(await get(`http://${web.adminAddr}/logging`, "POST"), { status: 200, body: "level: debug\n" }, "POST without ?level reports the level");
  t.same(await get(`http://${web.adminAddr}/logging?level=info`, "POST"), { status: 200, body: "level: info\n" }, "and back to info");
});

t.test("admin GET /drain is refused (405) and the proxy keeps serving", async (t) => {
  t.equal((await get(`http://${web.adminAddr}/drain`)).status, 405);
  t.equal((await get(`http://${web.adminAddr}/ready`)).status, 200, "still ready");
  t.equal((await get(url)).status, 200, "still proxying");
});

t.test("admin /clusters: endpoints with health, active requests and ejection, as text and JSON", async (t) => {
  interface HostJson {
    address: { socket_address: { address: string; port_value: number } };
    health_flags: string;
    ejected: boolean;
    health_status: { eds_health_status: string; failed_outlier_check?: boolean };
    stats: Array<{ name: string; value: number }>;
  }
  const json = async () => {
    const r = await get(`http://${web.adminAddr}/clusters?format=json`);
    const body = JSON.parse(r.body) as { cluster_statuses: Array<{ name: string; service: string; host_statuses: HostJson[] }> };
    return body.cluster_statuses.filter((c) => c.service === "api");
  };
  const [cluster] = await json();
  t.ok(cluster, "the api cluster is listed");
  const apiPort = Number(api.publicAddr!.split(":")[1]);
  const host = cluster!.host_statuses.find((h) => h.address.socket_address.port_value === apiPort);
  t.match(host, { health_flags: "healthy", ejected: false, health_status: { eds_health_status: "HEALTHY" }, stats: [{ name: "rq_active", value: 0 }] }, "api's sidecar: healthy, not ejected, no request in flight");
  const text = (await get(`http://${web.adminAddr}/clusters`)).body;
  t.match(text, new RegExp(`^${cluster!.name.replace(/\./g, "\\.")}::127\\.0\\.0\\.1:${apiPort}::health_flags::healthy$`, "m"), "Envoy's text form");
  t.match(text, new RegExp(`^${cluster!.name.replace(/\./g, "\\.")}::default_priority::max_requests::\\d+$`, "m"), "with the circuit-breaker thresholds");

  // The app fails; after MaxFailures consecutive 5xx, outlier detection ejects its only host.
  app.status = 503;
  await until(async () => {
    await get(url);
    const [c] = await json();
    return c?.host_statuses.some((h) => h.ejected) ?? false;
  }, 15_000, "api's host to be ejected");
  const [ejected] = await json();
  t.match(ejected!.host_statuses[0], { ejected: true, health_flags: "/failed_outlier_check", health_status: { failed_outlier_check: true } }, "shown as ejected in JSON");
  t.match((await get(`http://${web.adminAddr}/clusters`)).body, /::health_flags::\/failed_outlier_check$/m, "and in the text form");
  const m = (await get(`http://${web.adminAddr}/stats/prometheus`)).body;
  t.equal(sample(m, "envoy_cluster_outlier_detection_ejections_active", { envoy_cluster_name: ejected!.name }), 1, "the gauge agrees");
  app.status = 200;
});

t.test("with Consul, Proxy.Config envoy_prometheus_bind_addr (here from proxy-defaults) opens the metrics listener", async (t) => {
  const d = await ConsulAgentDouble.start();
  t.teardown(() => d.stop());
  const [publicPort, promPort] = [await freePort(), await freePort()];
  d.registerProxy({
    ID: "web-1-sidecar-proxy",
    Name: "web-sidecar-proxy",
    Address: "127.0.0.1",
    Port: publicPort,
    Proxy: { DestinationServiceName: "web", DestinationServiceID: "web-1", LocalServiceAddress: "127.0.0.1", LocalServicePort: 1, Config: { protocol: "tcp" } },
  });
  d.setProxyDefaults({ envoy_prometheus_bind_addr: `127.0.0.1:${promPort}` });
  const dataDir = await tempDir(t);
  const p = runMeshproxy(t, ["-http-addr", d.url, "-sidecar-for", "web-1", "-log-json", "-admin-addr", "127.0.0.1:0", "-data-dir", dataDir], CLEAN_ENV);
  const listening = await p.waitForLog((l) => l["@message"] === "metrics listening");
  t.equal(listening["address"], `127.0.0.1:${promPort}`, "bound where the registration asked");
  const text = (await get(`http://127.0.0.1:${promPort}/metrics`)).body;
  t.equal(sample(text, "envoy_server_live"), 1, "and serving");
  t.equal(await p.stop(), 0);
});

t.test("-app-metrics-url and -metrics-addr are checked up front", async (t) => {
  const d = await tempDir(t);
  for (const [args, msg] of [
    [["-app-metrics-url", "ftp://127.0.0.1/metrics"], /^meshproxy: -app-metrics-url "ftp:\/\/127\.0\.0\.1\/metrics": want an http:\/\/ or https:\/\/ URL/],
    [["-app-metrics-url", "not a url"], /^meshproxy: -app-metrics-url "not a url": not a URL/],
    [["-metrics-addr", "127.0.0.1"], /^meshproxy: -metrics-addr "127\.0\.0\.1": want host:port/],
  ] as const) {
    const p = runMeshproxy(t, ["-service", "web", "-data-dir", d, "-admin-addr", "127.0.0.1:0", ...args], CLEAN_ENV);
    t.equal(await p.exited, 2, `${args.join(" ")}: exit 2`);
    t.match(p.stderrText().trim(), msg);
  }
});
