// Consul UI's topology metrics and the Grafana dashboard in examples/ read meshproxy's series
// unchanged: three real sidecars on the Consul agent double (web → db over TCP, web → api over
// HTTP), a real Prometheus scraping their admin APIs, known traffic, then every query the UI's
// Prometheus provider runs (26 per service page, verbatim) and every panel query of the example
// dashboard, through Prometheus' HTTP API.
//
//   app ─▶ web ─mTLS─▶ db  (tcp, echo)
//              ─mTLS─▶ api (http: 200, or 500 on /fail)
import t, { type Test } from "tap";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { consulSidecar, freePort, startDouble } from "../helpers/consul-mesh.js";
import { defaultDiscoveryChain } from "../helpers/consul-agent.js";
import { consulUiQueries, type UiQuery } from "../helpers/consul-ui-queries.js";
import { httpApp, until } from "../helpers/l7.js";
import { echoServer, ROOT, roundTrip } from "../helpers/mesh.js";
import { startPrometheus, type PromResult } from "../helpers/prometheus.js";

const TCP_CONNECTIONS = 5;
const TCP_BYTES = 1000;
const OK_REQUESTS = 20;
const FAILED_REQUESTS = 5;

const d = await startDouble(t);
const echo = await echoServer(t);
const db = await consulSidecar(t, d, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`, "-register"]);
const apiApp = await httpApp(t, "api", (req, res) => {
  req.resume();
  res.writeHead(req.url === "/fail" ? 500 : 200, { "content-type": "text/plain" });
  res.end("api\n");
});
const apiPort = await freePort();
d.registerProxy({
  Kind: "connect-proxy",
  ID: "api-sidecar-proxy",
  Name: "api-sidecar-proxy",
  Address: "127.0.0.1",
  Port: apiPort,
  Proxy: { DestinationServiceName: "api", DestinationServiceID: "api-1", LocalServiceAddress: "127.0.0.1", LocalServicePort: apiApp.port, Config: { protocol: "http" } },
});
const api = await consulSidecar(t, d, ["-proxy-id", "api-sidecar-proxy"]);
d.setChain("api", { ...defaultDiscoveryChain("api", "dc1", d.trustDomain), Protocol: "http" });
const web = await consulSidecar(t, d, ["-service", "web", "-upstream", "db:0", "-upstream", "api:0"]);

const prom = await startPrometheus(t, [
  { address: web.adminAddr, path: "/stats/prometheus", labels: { app: "web" } },
  { address: db.adminAddr, path: "/stats/prometheus", labels: { app: "db" } },
  { address: api.adminAddr, path: "/stats/prometheus", labels: { app: "api" } },
]);

async function value(q: string): Promise<number | null> {
  const r = await prom.query(q);
  const v = r.result[0]?.value?.[1];
  return v === undefined ? null : Number(v);
}

async function get(path: string): Promise<number> {
  const res = await fetch(`http://${web.upstreams["api"]}${path}`);
  await res.text();
  return res.status;
}

// One request creates web's per-cluster request series; Prometheus must see every series at its
// starting value before the measured traffic, or rate() has nothing to compare with.
// Setup failures throw: tap assertions belong in the subtests below.
function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(`setup: ${what}`);
}
check((await get("/warmup")) === 200, "a warm-up request crosses web → api");
await until(
  async () =>
    (await value(`sum(envoy_cluster_upstream_rq_completed{consul_source_service="web",consul_destination_service="api"})`)) === 1 &&
    (await value(`sum(envoy_tcp_downstream_cx_total{consul_source_service="db",envoy_tcp_prefix="public_listener"})`)) === 0 &&
    (await value(`sum(envoy_tcp_downstream_cx_total{consul_source_service="web",consul_upstream_service="db"})`)) === 0 &&
    (await value(`sum(envoy_http_downstream_rq_completed{consul_source_service="api",envoy_http_conn_manager_prefix="public_listener"})`)) === 1,
  30_000,
  `Prometheus to scrape the three sidecars' starting values; its stderr:\n${prom.stderr()}`,
);

const payload = "x".repeat(TCP_BYTES - 1) + "\n";
for (let i = 0; i < TCP_CONNECTIONS; i++) check((await roundTrip(web.upstreams["db"]!, payload)).toString() === payload, `tcp connection ${i + 1} echoed through web → db`);
let statuses = 0;
for (let i = 0; i < OK_REQUESTS; i++) statuses += (await get("/ok")) === 200 ? 1 : 0;
for (let i = 0; i < FAILED_REQUESTS; i++) statuses += (await get("/fail")) === 500 ? 1 : 0;
check(statuses === OK_REQUESTS + FAILED_REQUESTS, "every request through web → api got the app's status");
const HTTP_TOTAL = OK_REQUESTS + FAILED_REQUESTS + 1;

await until(
  async () =>
    (await value(`sum(envoy_tcp_downstream_cx_rx_bytes_total{consul_source_service="db",envoy_tcp_prefix="public_listener"})`)) === TCP_CONNECTIONS * TCP_BYTES &&
    (await value(`sum(envoy_http_downstream_rq_completed{consul_source_service="api",envoy_http_conn_manager_prefix="public_listener"})`)) === HTTP_TOTAL &&
    (await value(`sum(envoy_http_downstream_rq_completed{consul_source_service="web",envoy_http_conn_manager_prefix="upstream"})`)) === HTTP_TOTAL &&
    (await value(`sum(envoy_cluster_upstream_cx_tx_bytes_total{consul_source_service="web",consul_destination_service="db"})`)) === TCP_CONNECTIONS * TCP_BYTES &&
    // rate() needs two samples of the last counts
    ((await value(`sum(rate(envoy_cluster_upstream_rq_xx{consul_source_service="web",envoy_response_code_class="5"}[15m]))`)) ?? 0) > 0,
  30_000,
  "Prometheus to scrape the traffic",
);

t.test("the series carry Consul's labels and count exactly the traffic sent", async (t) => {
  const bytes = TCP_CONNECTIONS * TCP_BYTES;
  const db1 = `consul_source_service="db",consul_source_namespace="default",consul_source_partition="default",consul_source_datacenter="dc1",local_cluster="db"`;
  t.equal(await value(`sum(envoy_tcp_downstream_cx_total{${db1},envoy_tcp_prefix="public_listener"})`), TCP_CONNECTIONS, "db: tcp.public_listener.downstream_cx_total");
  t.equal(await value(`sum(envoy_tcp_downstream_cx_rx_bytes_total{${db1},envoy_tcp_prefix="public_listener"})`), bytes, "db: bytes from web");
  t.equal(await value(`sum(envoy_tcp_downstream_cx_tx_bytes_total{${db1},envoy_tcp_prefix="public_listener"})`), bytes, "db: bytes back to web");
  t.equal(await value(`sum(envoy_tcp_downstream_cx_no_route{${db1},envoy_tcp_prefix="public_listener"})`), 0, "db: no_route 0, and present");
  t.equal(await value(`sum(envoy_cluster_upstream_cx_total{${db1},envoy_cluster_name="local_app"})`), TCP_CONNECTIONS, "db: local_app cluster connections");
  t.equal(await value(`sum(envoy_cluster_upstream_cx_tx_bytes_total{${db1},envoy_cluster_name="local_app"})`), bytes, "db: bytes to its app on local_app");
  const up = `consul_source_service="web",envoy_tcp_prefix="upstream",consul_upstream_service="db",consul_upstream_namespace="default",consul_upstream_partition="default",consul_upstream_datacenter="dc1"`;
  t.equal(await value(`sum(envoy_tcp_downstream_cx_total{${up}})`), TCP_CONNECTIONS, "web: tcp.upstream.db.default.default.dc1.downstream_cx_total");
  t.equal(await value(`sum(envoy_tcp_downstream_cx_rx_bytes_total{${up}})`), bytes, "web: bytes from its app to db");
  const dest = `consul_source_service="web",consul_destination_service="db",consul_destination_namespace="default",consul_destination_datacenter="dc1",consul_destination_routing_type="internal",consul_destination_target="db.default.dc1",consul_service="db",consul_target="db.default.dc1"`;
  t.equal(await value(`sum(envoy_cluster_upstream_cx_total{${dest}})`), TCP_CONNECTIONS, "web: cluster db… upstream_cx_total with consul_destination_* and the legacy consul_* labels");
  t.equal(await value(`sum(envoy_cluster_upstream_cx_rx_bytes_total{${dest}})`), bytes, "web: bytes back from db");
  const apiPub = `consul_source_service="api",envoy_http_conn_manager_prefix="public_listener"`;
  t.equal(await value(`sum(envoy_http_downstream_rq_xx{${apiPub},envoy_response_code_class="2"})`), OK_REQUESTS + 1, "api: 2xx on the public listener");
  t.equal(await value(`sum(envoy_http_downstream_rq_xx{${apiPub},envoy_response_code_class="5"})`), FAILED_REQUESTS, "api: 5xx on the public listener");
  t.equal(await value(`sum(envoy_listener_http_downstream_rq_xx{${apiPub},envoy_response_code_class="5"})`), FAILED_REQUESTS, "api: per listener address too");
  t.equal(await value(`sum(envoy_http_downstream_rq_time_count{${apiPub}})`), HTTP_TOTAL, "api: request time histogram");
  t.equal(await value(`sum(envoy_cluster_upstream_rq_completed{consul_source_service="api",envoy_cluster_name="local_app"})`), HTTP_TOTAL, "api: requests answered by local_app");
  const webApi = `consul_source_service="web",envoy_http_conn_manager_prefix="upstream",consul_upstream_service="api"`;
  t.equal(await value(`sum(envoy_http_downstream_rq_xx{${webApi},envoy_response_code_class="5"})`), FAILED_REQUESTS, "web: http.upstream.api… 5xx");
  t.equal(await value(`sum(envoy_cluster_upstream_rq_xx{consul_source_service="web",consul_destination_service="api",envoy_response_code_class="2"})`), OK_REQUESTS + 1, "web: cluster api… 2xx");
  t.equal(await value(`envoy_server_live{consul_source_service="web"}`), 1, "envoy_server_live carries consul_source_service (Grafana's service variable)");
  t.equal(await value(`count(envoy_tcp_downstream_cx_total{consul_source_service="api"})`), null, "an HTTP public listener has no tcp_proxy series, as Envoy's HCM");
});

function groups(r: PromResult, infix: "upstream" | "source"): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of r.result) {
    const m = s.metric;
    out[`${m[`consul_${infix}_service`]}.${m[`consul_${infix}_namespace`]}.${m[`consul_${infix}_datacenter`]}`] = Number(s.value?.[1]);
  }
  return out;
}

async function run(q: UiQuery): Promise<PromResult> {
  return q.kind === "series" ? prom.range(q.query, 15 * 60) : prom.query(q.query);
}

/** Runs a page's 26 queries; all must be valid PromQL that Prometheus answers. */
async function page(t: Test, service: string): Promise<Map<string, PromResult>> {
  const out = new Map<string, PromResult>();
  const queries = consulUiQueries(service, "dc1", "default");
  t.equal(queries.length, 26, "the provider's 26 queries");
  for (const q of queries) {
    const r = await run(q);
    t.equal(r.status, "success", `${service} ${q.id}: Prometheus answers ${r.error ?? ""}`);
    out.set(q.id.split(" ")[0]!, r);
  }
  return out;
}

const stat = (r: PromResult | undefined) => Number(r?.result[0]?.value?.[1]);
const positive = (n: number | undefined) => n !== undefined && Number.isFinite(n) && n > 0;

t.test("Consul UI, db's page (tcp): service stats from db's sidecar, downstreams from web's", async (t) => {
  const r = await page(t, "db");
  const series = r.get("U2")!.result;
  t.same(series.map((s) => s.metric["label"]).sort(), ["Inbound", "Outbound"], "U2: the L4 graph has Inbound and Outbound");
  // irate() is above zero only from the first scrape after the traffic to the next (1 s); the UI's
  // 10 s step lands there for one end time in ten when the traffic fit between two scrapes (a
  // loaded machine). The query is asked again as `end`, and with it the step grid, moves on.
  const u2 = consulUiQueries("db", "dc1", "default").find((q) => q.id.startsWith("U2 "))!;
  const traffic = (r: PromResult) => r.result.length === 2 && r.result.every((s) => s.values?.some(([, v]) => Number(v) > 0));
  let seen = traffic(r.get("U2")!);
  if (!seen) await until(async () => (seen = traffic(await run(u2))), 15_000, "U2 over a step grid that holds the traffic").catch(() => undefined);
  t.ok(seen, "U2: with traffic in both");
  for (const id of ["U7", "U8", "U9"]) t.ok(positive(stat(r.get(id))), `${id}: connection rate / RX / TX > 0 (${stat(r.get(id))})`);
  t.equal(stat(r.get("U10")), 0, "U10: no route 0");
  for (const id of ["U23", "U24", "U25"]) t.ok(positive(groups(r.get(id)!, "source")["web.default.dc1"]), `${id}: downstream web.default.dc1 > 0`);
  t.equal(groups(r.get("U26")!, "source")["web.default.dc1"], 0, "U26: web's connect failures to db: 0");
  t.same(Object.keys(groups(r.get("U23")!, "source")), ["web.default.dc1"], "db's only downstream is web");
});

t.test("Consul UI, api's page (http): service stats from api's sidecar, downstreams from web's", async (t) => {
  const r = await page(t, "api");
  const series = r.get("U1")!.result;
  t.same(series.map((s) => s.metric["label"]).sort(), ["Errors", "Successes"], "U1: the L7 graph has Successes and Errors");
  t.ok(positive(stat(r.get("U3"))), "U3: requests per second > 0");
  const er = stat(r.get("U4"));
  t.ok(Math.abs(er - FAILED_REQUESTS / HTTP_TOTAL) < 0.05, `U4: error rate ${er} ≈ ${FAILED_REQUESTS}/${HTTP_TOTAL}`);
  for (const id of ["U5", "U6"]) t.ok(positive(stat(r.get(id))), `${id}: latency percentile ${stat(r.get(id))} ms`);
  for (const id of ["U19", "U21", "U22"]) t.ok(positive(groups(r.get(id)!, "source")["web.default.dc1"]), `${id}: downstream web.default.dc1 > 0`);
  const der = groups(r.get("U20")!, "source")["web.default.dc1"]!;
  t.ok(Math.abs(der - FAILED_REQUESTS / HTTP_TOTAL) < 0.05, `U20: web's error rate to api ${der}`);
});

t.test("Consul UI, web's page: its upstreams db (tcp) and api (http)", async (t) => {
  const r = await page(t, "web");
  for (const id of ["U11", "U13", "U14"]) t.ok(positive(groups(r.get(id)!, "upstream")["api.default.dc1"]), `${id}: upstream api.default.dc1 > 0`);
  const er = groups(r.get("U12")!, "upstream")["api.default.dc1"]!;
  t.ok(Math.abs(er - FAILED_REQUESTS / HTTP_TOTAL) < 0.05, `U12: error rate to api ${er}`);
  for (const id of ["U15", "U16", "U17"]) t.ok(positive(groups(r.get(id)!, "upstream")["db.default.dc1"]), `${id}: upstream db.default.dc1 > 0`);
  t.equal(groups(r.get("U18")!, "upstream")["db.default.dc1"], 0, "U18: no route to db: 0");
  t.equal(stat(r.get("U3")), 0, "U3: web's own public listener served nothing (0, from vector(0))");
});

t.test("the example Grafana dashboard: every panel query returns data", async (t) => {
  const dash = JSON.parse(await readFile(join(ROOT, "examples", "grafana", "meshproxy-dashboard.json"), "utf8")) as Dashboard;
  // The mesh gateway panels ($gateway) are checked against gateways in test/e2e/gateway-metrics.test.ts.
  const targets = dash.panels.flatMap((p) => (p.targets ?? []).filter((tg) => !tg.expr.includes("$gateway")).map((tg) => ({ panel: p.title, expr: tg.expr })));
  t.ok(targets.length >= 8, `${targets.length} panel queries`);
  const queryVars = dash.templating.list.filter((v) => v.type === "query" && v.name !== "gateway");
  t.same(queryVars.map((v) => v.name), ["service"], "one query variable for sidecars: the service");
  // Grafana's "All" for a multi-value variable: its allValue, in a =~ matcher.
  const vars: Record<string, string> = { service: ".*" };
  for (const v of queryVars) {
    const r = await prom.query(v.query.replace(/^label_values\((.*), *([a-z_]+)\)$/, "group by ($2) ($1)"));
    t.same(r.result.map((s) => s.metric["consul_source_service"]).sort(), ["api", "db", "web"], `variable ${v.name}: ${v.query} lists the three sidecars`);
  }
  for (const { panel, expr } of targets) {
    const q = expr.replace(/\$__rate_interval/g, "1m").replace(/\$([a-z_]+)/g, (_, n: string) => vars[n] ?? `$${n}`);
    const r = await prom.query(q);
    t.equal(r.status, "success", `${panel}: ${r.error ?? "valid"}`);
    t.ok(r.result.length > 0, `${panel}: returns data (${q})`);
  }
});

interface Dashboard {
  panels: Array<{ title: string; targets?: Array<{ expr: string }> }>;
  templating: { list: Array<{ name: string; type: string; query: string }> };
}
