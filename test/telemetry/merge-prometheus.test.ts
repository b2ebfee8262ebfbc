// An app page that a real Prometheus would reject must not be merged: Prometheus drops the whole
// scrape for one bad line, the proxy's own series with it. Each target here is a metrics listener
// merging an app whose page has one line this Prometheus rejects; every target must stay up with
// the proxy's series, the app's page counted as invalid.
import t from "tap";
import { createServer } from "node:http";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { Counter, Registry } from "prom-client";
import { MetricsExposition } from "../../src/telemetry/merge.js";
import { MetricsServer } from "../../src/telemetry/metrics-server.js";
import { silentLogger } from "../../src/telemetry/log.js";
import { startPrometheus } from "../helpers/prometheus.js";
import { until } from "../helpers/l7.js";
import type { Teardown } from "../helpers/mesh.js";

/** Lines Prometheus 2.x refuses, each failing the scrape it is in ("up" 0, no series stored). */
const REJECTED: ReadonlyArray<readonly [string, string]> = [
  ["a __name__ label (a second metric name)", 'shop_orders{__name__="envoy_cluster_upstream_rq_total"} 1e9'],
  ["a signed NaN", "shop_ratio -nan"],
  ["a value beyond float64", "shop_ratio 1e400"],
  ["a negative timestamp", "shop_ratio 1 -5"],
  ["a timestamp beyond int64", "shop_ratio 1 99999999999999999999"],
  ["a vertical tab after the value", "shop_ratio 1\u000b"],
  ["a no-break space before the value", "shop_ratio \u00a01"],
];

async function listener(t: Teardown, appPage: string | null): Promise<string> {
  // null: an app that accepts the request and never answers.
  const app = createServer((_req, res) => (appPage === null ? undefined : res.end(`shop_ok 1\n${appPage}\n`)));
  app.listen(0, "127.0.0.1");
  await once(app, "listening");
  t.teardown(() => {
    app.closeAllConnections();
    app.close();
  });
  const reg = new Registry();
  new Counter({ name: "envoy_listener_downstream_cx_total", help: "cx", registers: [reg] }).inc(7);
  const exp = new MetricsExposition(reg, { url: `http://127.0.0.1:${(app.address() as AddressInfo).port}/metrics` }, silentLogger);
  const server = new MetricsServer(exp);
  const at = await server.listen("127.0.0.1", 0);
  t.teardown(async () => {
    server.close();
    await exp.close();
  });
  return `127.0.0.1:${at.port}`;
}

t.test("an app line Prometheus rejects is not merged: the proxy's scrape stays up with its series", async (t) => {
  const addresses = await Promise.all(REJECTED.map(([, line]) => listener(t, line)));
  const prom = await startPrometheus(t, addresses.map((address) => ({ address, path: "/metrics" })));
  const jobs = REJECTED.map((_, i) => `t${i}`);
  await until(async () => (await prom.query("count_over_time(up[1m]) >= 2")).result.length === jobs.length, 30_000, `every target scraped twice; Prometheus stderr:\n${prom.stderr()}`);
  const up = await prom.query("min_over_time(up[1m])");
  const cx = await prom.query("envoy_listener_downstream_cx_total");
  const appUp = await prom.query("meshproxy_app_metrics_up");
  REJECTED.forEach(([what], i) => {
    const job = (r: { metric: Record<string, string> }) => r.metric["job"] === jobs[i];
    t.equal(up.result.find(job)?.value?.[1], "1", `${what}: the scrape is up`);
    t.equal(cx.result.find(job)?.value?.[1], "7", `${what}: the proxy's series is stored`);
    t.equal(appUp.result.find(job)?.value?.[1], "0", `${what}: the app's page was refused (meshproxy_app_metrics_up 0)`);
  });
});

t.test("a stalled app under a scrape timeout shorter than the app timeout (2 s): the proxy's scrape stays up", async (t) => {
  // Prometheus here scrapes with a 1 s timeout and says so in X-Prometheus-Scrape-Timeout-Seconds;
  // the app is awaited for half of it, not the default 2 s, so the proxy's own page is served in time.
  const address = await listener(t, null);
  const prom = await startPrometheus(t, [{ address, path: "/metrics" }]);
  await until(async () => (await prom.query("count_over_time(up[1m]) >= 2")).result.length === 1, 30_000, `scraped twice; Prometheus stderr:\n${prom.stderr()}`);
  t.equal((await prom.query("min_over_time(up[1m])")).result[0]?.value?.[1], "1", "every scrape is up");
  t.equal((await prom.query("envoy_listener_downstream_cx_total")).result[0]?.value?.[1], "7", "the proxy's series is stored");
  t.equal((await prom.query("meshproxy_app_metrics_up")).result[0]?.value?.[1], "0", "the app's page is missing (meshproxy_app_metrics_up 0)");
  const timeouts = await prom.query('meshproxy_app_metrics_scrape_errors_total{reason="timeout"}');
  t.ok(Number(timeouts.result[0]?.value?.[1]) >= 1, "counted as a timeout");
});
