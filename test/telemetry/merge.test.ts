// Metrics merging: the text-format parser is as strict as Prometheus, app families are kept whole
// and renamed (or dropped) on a name collision, and a down, slow, failing, huge or garbled app
// costs only its own series for that scrape — counted — never the proxy's.
import t from "tap";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { Counter, Histogram, Registry } from "prom-client";
import { ExpositionError, formatFamilies, parseExposition } from "../../src/telemetry/exposition.js";
import { APP_PREFIX, MetricsExposition, appDeadlineMs, mergeFamilies, registryNames } from "../../src/telemetry/merge.js";
import { silentLogger } from "../../src/telemetry/log.js";
import { runCommand, sample } from "../helpers/peers.js";
import type { Teardown } from "../helpers/mesh.js";

const APP = `# HELP shop_orders_total Orders placed.
# TYPE shop_orders_total counter
shop_orders_total{kind="book"} 3
shop_orders_total{kind="pen",note="a \\"quoted\\" \\\\ value\\n"} 1 1700000000000
# A comment that is not HELP or TYPE.
# HELP shop_latency_seconds Latency.
# TYPE shop_latency_seconds histogram
shop_latency_seconds_bucket{le="0.1"} 1
shop_latency_seconds_bucket{le="+Inf"} 2
shop_latency_seconds_sum 0.3
shop_latency_seconds_count 2
untyped_thing 1.5e3
shop_orders_total{kind="cup"} 2
`;

t.test("parse: families with HELP, TYPE and samples; split families are gathered whole", async (t) => {
  const fs = parseExposition(APP);
  t.same(
    fs.map((f) => [f.name, f.type, f.samples.length]),
    [
      ["shop_orders_total", "counter", 3],
      ["shop_latency_seconds", "histogram", 4],
      ["untyped_thing", null, 1],
    ],
  );
  t.equal(fs[0]!.help, "Orders placed.");
  t.equal(fs[0]!.samples[2], `shop_orders_total{kind="cup"} 2`, "the late sample joined its family");
  const again = parseExposition(formatFamilies(fs));
  t.same(again, fs, "formatting and parsing again gives the same families");
  t.notMatch(formatFamilies(fs), /A comment/, "plain comments are dropped");
});

t.test("parse: what Prometheus accepts", async (t) => {
  for (const text of [
    "a 1\n",
    "a{} 1\n",
    'a{b="c",} 1\n',
    'a { b = "c" , d="e" } -2.5e-3 17\n',
    "a NaN\nb +Inf\nc -Inf\n",
    "a 1\r\nb 2\r\n",
    "# TYPE x gauge\n",
    "# HELP x\n",
    "# HELP x a \\\\ backslash and a \\n newline\n",
    "ns:sub_metric .5\n",
    'a {b="c"} 1\n',
    'a{b="c"}1\n',
    "a Infinity\nb -inf\n",
    "a 1e-400\nb 1.7976931348623157e308\nc 1 9223372036854775807\n",
    'a{__b="c"} 1\n',
    // An untyped x_count before a summary x: Prometheus reads both.
    '# TYPE x_count gauge\nx_count 1\n# TYPE x summary\nx{quantile="0.5"} 1\nx_count 2\n',
  ]) {
    t.doesNotThrow(() => parseExposition(text), JSON.stringify(text));
  }
});

t.test("parse: what Prometheus rejects is rejected, with the line", async (t) => {
  const cases: Array<[string, RegExp]> = [
    ["<html>oops</html>\n", /line 1: .*does not start with a metric name/],
    ["a 1\nthis is not a metric\n", /line 2: .*"is" is not a number|line 2: this: want "value"/],
    ["a one\n", /"one" is not a number/],
    ["a 1 2 3\n", /want "value" or "value timestamp"/],
    ["a 1 1.5\n", /not a millisecond timestamp/],
    ['a{b="c} 1\n', /unterminated value/],
    ['a{b="\\x"} 1\n', /invalid escape/],
    ['a{b="1",b="2"} 1\n', /label "b" given twice/],
    ["a{b=1} 1\n", /want a quoted value/],
    ["a{0b=\"1\"} 1\n", /bad label name/],
    ["# TYPE a gauge\n# TYPE a gauge\na 1\n", /second # TYPE for a/],
    ["# HELP a x\n# HELP a y\n", /second # HELP for a/],
    ["# HELP a some \\x help\n", /# HELP a: invalid escape/],
    ["a 1\n# TYPE a gauge\n", /# TYPE a after its samples/],
    ["# TYPE a gauges\n", /is not counter, gauge/],
    ["# TYPE 1a gauge\n", /is not a metric name/],
    ["a 0x1p3\n", /"0x1p3" is not a number/],
    ["a\n", /want "value"/],
    // Each of these fails the whole scrape in Prometheus (merge-prometheus.test.ts).
    ['a{__name__="b"} 1\n', /label "__name__" is the metric name/],
    ["a -nan\n", /"-nan" is not a number/],
    ["a +NaN\n", /"\+NaN" is not a number/],
    ["a 1e400\n", /out of float64 range/],
    ["a -1e309\n", /out of float64 range/],
    ["a 1 -17\n", /not a millisecond timestamp/],
    ["a 1 9223372036854775808\n", /not a millisecond timestamp/],
    ["a 1\u000b\n", /is not a number/],
    ["a \u00a01\n", /is not a number/],
    ["a 1 2\ufeff\n", /not a millisecond timestamp/],
  ];
  for (const [text, msg] of cases) {
    t.throws(() => parseExposition(text), ExpositionError, JSON.stringify(text));
    try {
      parseExposition(text);
    } catch (e) {
      t.match((e as Error).message, msg, `${JSON.stringify(text)}: ${(e as Error).message}`);
    }
  }
});

t.test("merge: no collision keeps names; a collision is renamed with the prefix; a taken prefixed name is dropped", async (t) => {
  const ours = new Set(["process_cpu_seconds_total", "envoy_cluster_upstream_rq_time", "envoy_cluster_upstream_rq_time_bucket", "envoy_cluster_upstream_rq_time_sum", "envoy_cluster_upstream_rq_time_count"]);
  const app = parseExposition(
    [
      "# TYPE process_cpu_seconds_total counter",
      "process_cpu_seconds_total 9",
      "# TYPE shop_orders_total counter",
      "shop_orders_total 3",
      // An app family whose sample name is one of ours: it collides although its own name does not.
      "# TYPE envoy_cluster_upstream_rq_time_count gauge",
      "envoy_cluster_upstream_rq_time_count 1",
      // Collides, and the prefixed name is the app's own next family: dropped.
      "# TYPE envoy_cluster_upstream_rq_time summary",
      'envoy_cluster_upstream_rq_time{quantile="0.5"} 1',
      "# TYPE app_envoy_cluster_upstream_rq_time gauge",
      "app_envoy_cluster_upstream_rq_time 2",
      "",
    ].join("\n"),
  );
  const r = mergeFamilies(ours, app);
  t.same(r.families.map((f) => f.name), ["app_process_cpu_seconds_total", "shop_orders_total", "app_envoy_cluster_upstream_rq_time_count", "app_envoy_cluster_upstream_rq_time"]);
  t.same(r.renamed, ["process_cpu_seconds_total", "envoy_cluster_upstream_rq_time_count"]);
  t.same(r.dropped, ["envoy_cluster_upstream_rq_time"]);
  t.same(r.families[0]!.samples, ["app_process_cpu_seconds_total 9"], "samples renamed with their family");
  t.equal(APP_PREFIX, "app_");
});

t.test("registryNames: each family and every histogram/summary sample name it may write", async (t) => {
  const reg = new Registry();
  new Histogram({ name: "h_ms", help: "h", registers: [reg] });
  new Counter({ name: "c_total", help: "c", registers: [reg] });
  const names = registryNames(reg);
  for (const n of ["h_ms", "h_ms_bucket", "h_ms_sum", "h_ms_count", "c_total"]) t.ok(names.has(n), n);
});

// ---- the scrape, against a real HTTP app ----

interface FakeApp {
  url: string;
  handler: (req: IncomingMessage, res: ServerResponse) => void;
  close(): Promise<void>;
}

async function fakeApp(t: Teardown): Promise<FakeApp> {
  const app: FakeApp = {
    url: "",
    handler: (_req, res) => res.end(APP),
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  const server = createServer((req, res) => app.handler(req, res));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  app.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`;
  t.teardown(() => (server.listening ? app.close() : undefined));
  return app;
}

function proxyRegistry(): Registry {
  const reg = new Registry();
  new Counter({ name: "envoy_listener_downstream_cx_total", help: "cx", labelNames: ["envoy_listener_address"], registers: [reg] }).labels("0.0.0.0_21000").inc(7);
  new Counter({ name: "shop_orders_total", help: "a proxy family the app also has", registers: [reg] }).inc();
  return reg;
}

async function promtool(t: Teardown, text: string): Promise<{ code: number | null; out: string }> {
  const r = await runCommand(t, "/usr/bin/promtool", ["check", "metrics"], { input: text });
  return { code: r.code, out: r.stdout + r.stderr };
}

t.test("scrape: the app's families follow ours, collisions renamed, and promtool parses the result", async (t) => {
  const app = await fakeApp(t);
  let accept = "";
  app.handler = (req, res) => {
    accept = req.headers.accept ?? "";
    res.end(APP);
  };
  const exp = new MetricsExposition(proxyRegistry(), { url: app.url }, silentLogger);
  t.teardown(() => exp.close());
  const text = await exp.render();
  t.match(accept, /^text\/plain;version=0\.0\.4/, "asks for the text format");
  t.equal(sample(text, "envoy_listener_downstream_cx_total", { envoy_listener_address: "0.0.0.0_21000" }), 7, "proxy series");
  t.equal(sample(text, "shop_orders_total"), 1, "our shop_orders_total is ours");
  t.equal(sample(text, "app_shop_orders_total", { kind: "book" }), 3, "the app's is renamed");
  t.equal(sample(text, "shop_latency_seconds_count"), 2, "an app histogram");
  t.equal(sample(text, "meshproxy_app_metrics_up"), 1);
  t.equal(sample(text, "meshproxy_app_metrics_families", { result: "renamed" }), 1);
  t.equal(sample(text, "meshproxy_app_metrics_families", { result: "kept" }), 2);
  for (const reason of ["connect", "timeout", "http_status", "too_large", "invalid"]) {
    t.equal(sample(text, "meshproxy_app_metrics_scrape_errors_total", { reason }), 0, `errors{reason=${reason}} exported at 0`);
  }
  // Every family's lines are contiguous: a name's HELP/TYPE appear once and its samples right after.
  const order = text
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => (l.startsWith("# ") ? l.split(" ")[2]! : l.replace(/[{ ].*$/, "").replace(/_(bucket|sum|count)$/, "")));
  const seen = new Set<string>();
  let prev = "";
  for (const n of order) {
    if (n !== prev && seen.has(n)) t.fail(`family ${n} is split`);
    seen.add(n);
    prev = n;
  }
  const pt = await promtool(t, text);
  t.not(pt.code, 1, `promtool parses the merged exposition: ${pt.out}`);
});

t.test("scrape: a down, failing, slow, huge or garbled app — proxy series still served, failure counted by reason", async (t) => {
  const app = await fakeApp(t);
  const reg = proxyRegistry();
  const exp = new MetricsExposition(reg, { url: app.url, timeoutMs: 300, maxBytes: 4096 }, silentLogger);
  t.teardown(() => exp.close());
  const check = async (reason: string, setup: () => void | Promise<void>) => {
    await setup();
    const text = await exp.render();
    t.equal(sample(text, "envoy_listener_downstream_cx_total", { envoy_listener_address: "0.0.0.0_21000" }), 7, `${reason}: proxy series served`);
    t.equal(sample(text, "meshproxy_app_metrics_scrape_errors_total", { reason }), 1, `${reason}: counted`);
    t.equal(sample(text, "meshproxy_app_metrics_up"), 0, `${reason}: up is 0`);
    t.equal(sample(text, "shop_latency_seconds_count"), null, `${reason}: no app series`);
    t.equal(sample(text, "meshproxy_app_metrics_families", { result: "kept" }), 0);
    const pt = await promtool(t, text);
    t.not(pt.code, 1, `${reason}: promtool parses it`);
  };
  await check("invalid", () => void (app.handler = (_q, res) => res.end("<html><body>Whitelabel Error Page</body></html>\n")));
  await check("http_status", () => void (app.handler = (_q, res) => res.writeHead(500).end("boom\n")));
  await check("too_large", () => void (app.handler = (_q, res) => res.end(`# HELP x ${"y".repeat(5000)}\nx 1\n`)));
  const started = Date.now();
  await check("timeout", () => void (app.handler = () => {})); // never answers
  t.ok(Date.now() - started < 2000, `a stalled app costs about its timeout (${Date.now() - started} ms), not Prometheus' scrape timeout`);
  await check("connect", () => app.close());
  const durations = sample(await exp.render(), "meshproxy_app_metrics_scrape_duration_seconds");
  t.ok(durations !== null && durations >= 0, "scrape duration exported");
});

t.test("scrape: garbage in the middle of a good page rejects the page, the next good page merges again", async (t) => {
  const app = await fakeApp(t);
  const exp = new MetricsExposition(proxyRegistry(), { url: app.url }, silentLogger);
  t.teardown(() => exp.close());
  app.handler = (_q, res) => res.end(APP.replace("untyped_thing 1.5e3", "untyped_thing {oops} 1"));
  let text = await exp.render();
  t.equal(sample(text, "meshproxy_app_metrics_scrape_errors_total", { reason: "invalid" }), 1);
  t.equal(sample(text, "app_shop_orders_total", { kind: "book" }), null, "none of that page is served");
  app.handler = (_q, res) => res.end(APP);
  text = await exp.render();
  t.equal(sample(text, "app_shop_orders_total", { kind: "book" }), 3, "merged again once the app recovers");
  t.equal(sample(text, "meshproxy_app_metrics_up"), 1);
});

t.test("no app URL: the registry's exposition alone, no app_* or scrape metrics", async (t) => {
  const reg = proxyRegistry();
  const exp = new MetricsExposition(reg, null, silentLogger);
  const text = await exp.render();
  t.equal(text, await reg.metrics());
  t.notMatch(text, /meshproxy_app_metrics/);
  await exp.close();
});

t.test("X-Prometheus-Scrape-Timeout-Seconds: the app gets half the scrape's budget, at most its own timeout", async (t) => {
  t.equal(appDeadlineMs(2000, undefined), 2000, "no header: the configured timeout");
  t.equal(appDeadlineMs(2000, "10"), 2000, "Prometheus' default 10 s: still 2 s");
  t.equal(appDeadlineMs(2000, "1"), 500);
  t.equal(appDeadlineMs(2000, "1.5"), 750);
  t.equal(appDeadlineMs(2000, ["0.4", "9"]), 200, "the first of repeated headers");
  for (const bad of ["", "0", "-1", "abc", "1e3", "Infinity", "NaN"]) t.equal(appDeadlineMs(2000, bad), 2000, `${JSON.stringify(bad)} is ignored`);

  const app = await fakeApp(t);
  app.handler = () => {}; // never answers
  const exp = new MetricsExposition(proxyRegistry(), { url: app.url }, silentLogger);
  t.teardown(() => exp.close());
  const started = Date.now();
  const text = await exp.render("0.6");
  const took = Date.now() - started;
  t.ok(took < 1000, `answered within the 0.6 s scrape budget (${took} ms), not after the 2 s app timeout`);
  t.equal(sample(text, "meshproxy_app_metrics_scrape_errors_total", { reason: "timeout" }), 1, "counted as a timeout");
  t.equal(sample(text, "envoy_listener_downstream_cx_total", { envoy_listener_address: "0.0.0.0_21000" }), 7, "proxy series served");
});
