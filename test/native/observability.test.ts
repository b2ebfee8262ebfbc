// A native service's HTTP requests are observed as a sidecar's are: a client span per dispatcher
// request and a server span per request its server takes (the sidecar's names and attributes),
// trace context carried so the caller's span parents the client span, which parents the server
// span, which the app's handler continues; access-log lines in the sidecar's format both ways;
// the public listener's HTTP stats and the upstream cluster's request stats.
import t from "tap";
import { createServer } from "node:http";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import { fetch } from "undici";
import { tempDir } from "../helpers/mesh.js";
import { pollUntil, sample } from "../helpers/peers.js";
import { fetchUntil, intentions, serve, service } from "../helpers/native.js";
import { configWrite } from "../helpers/l7.js";

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes?: Array<{ key: string; value: { stringValue?: string; intValue?: string | number } }>;
}

/** An OTLP/HTTP (JSON) receiver on loopback, as in test/e2e/tracing.test.ts. */
async function otlpReceiver(t: { teardown(fn: () => unknown): void }): Promise<{ url: string; spans: OtlpSpan[] }> {
  const spans: OtlpSpan[] = [];
  const server = createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8").on("data", (d: string) => (body += d));
    req.on("end", () => {
      const doc = JSON.parse(body) as { resourceSpans?: Array<{ scopeSpans?: Array<{ spans?: OtlpSpan[] }> }> };
      for (const rs of doc.resourceSpans ?? []) for (const ss of rs.scopeSpans ?? []) spans.push(...(ss.spans ?? []));
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`, spans };
}

const attr = (s: OtlpSpan | undefined, key: string) => {
  const v = s?.attributes?.find((a) => a.key === key)?.value;
  return v?.stringValue ?? (v?.intValue !== undefined ? Number(v.intValue) : undefined);
};

async function lines(file: string, n: number): Promise<Array<Record<string, unknown>>> {
  let out: Array<Record<string, unknown>> = [];
  const ok = await pollUntil(async () => {
    const text = await readFile(file, "utf8").catch(() => "");
    out = text.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as Record<string, unknown>);
    return out.length >= n;
  }, 10_000);
  if (ok === null) throw new Error(`${file}: fewer than ${n} lines within 10 s: ${JSON.stringify(out)}`);
  return out;
}

t.test("spans, access-log lines and stats of a native client → native server request", async (t) => {
  const dir = await tempDir(t);
  const otlp = await otlpReceiver(t);
  const tracing = { endpoint: otlp.url };
  const api = await service(t, { name: "api", dataDir: dir, tracing, accessLog: { file: join(dir, "api.log") } });
  const web = await service(t, { name: "web", dataDir: dir, tracing, accessLog: { file: join(dir, "web.log") } });
  const seenTraceparent: string[] = [];
  await serve(t, api, (req, res) => {
    seenTraceparent.push(String(req.headers["traceparent"]));
    res.end("traced");
  });
  await fetchUntil(web, "https://api.service.consul/warmup");
  const warm = { web: (await lines(join(dir, "web.log"), 1)).length, api: (await lines(join(dir, "api.log"), 1)).length };

  const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
  const callerSpan = "00f067aa0ba902b7";
  const res = await fetch("https://api.service.consul/orders/7?x=1", { dispatcher: web.dispatcher(), headers: { traceparent: `00-${traceId}-${callerSpan}-01`, "user-agent": "native-test" } });
  t.equal(await res.text(), "traced");

  // close() flushes the spans still batched (the batch's own timer does not fire in tap's test
  // process; in a plain node process it exports every 500 ms, as the sidecar's does).
  await web.close();
  await api.close();
  const both = await pollUntil(async () => otlp.spans.filter((s) => s.traceId === traceId).length >= 2, 10_000);
  t.not(both, null, "two spans of the trace reached the receiver");
  const mine = otlp.spans.filter((s) => s.traceId === traceId);
  const client = mine.find((s) => s.kind === 3);
  const server = mine.find((s) => s.kind === 2);
  t.equal(client?.name, "egress api", "web's client span, named as a sidecar names it");
  t.equal(server?.name, "ingress GET", "api's server span, likewise");
  t.equal(client?.parentSpanId, callerSpan, "web's span is a child of the caller's span");
  t.equal(server?.parentSpanId, client?.spanId, "api's span is a child of web's span");
  t.equal(seenTraceparent.at(-1), `00-${traceId}-${server?.spanId}-01`, "the handler's traceparent continues from api's span");
  t.equal(attr(client, "peer.service"), "api");
  t.equal(attr(client, "http.response.status_code"), 200);
  t.equal(attr(server, "meshproxy.source_identity"), web.spiffeId, "the server span names the verified caller");
  t.equal(attr(server, "url.path"), "/orders/7?x=1");

  const out = (await lines(join(dir, "web.log"), warm.web + 1)).at(-1);
  t.match(out, { direction: "outbound", method: "GET", path: "/orders/7?x=1", status: 200, response_flags: "-", attempts: 1, user_agent: "native-test", trace_id: traceId }, "web's line, in the sidecar's fields");
  t.match(String(out?.["upstream_cluster"]), /^api\.default\.dc1\.internal\./, "naming the upstream cluster");
  t.match(String(out?.["upstream_host"]), /^127\.0\.0\.1:\d+$/, "and the instance");
  const inn = (await lines(join(dir, "api.log"), warm.api + 1)).at(-1);
  t.match(inn, { direction: "inbound", method: "GET", path: "/orders/7?x=1", status: 200, response_flags: "-", source_identity: web.spiffeId, trace_id: traceId }, "api's line");

  const apiMetrics = await api.metrics.registry.metrics();
  t.equal(sample(apiMetrics, "envoy_http_downstream_rq_total", { envoy_http_conn_manager_prefix: "public_listener" }), 2, "api's public listener counted both requests");
  t.equal(sample(apiMetrics, "envoy_http_downstream_rq_xx", { envoy_http_conn_manager_prefix: "public_listener", envoy_response_code_class: "2" }), 2, "as 2xx");
  const webMetrics = await web.metrics.registry.metrics();
  t.equal(sample(webMetrics, "envoy_cluster_upstream_rq_total", { consul_destination_service: "api" }), 2, "web's upstream cluster counted both");
});

t.test("with tracing off nothing is injected; an access-log line still has no trace id", async (t) => {
  const dir = await tempDir(t);
  const api = await service(t, { name: "api", dataDir: dir, accessLog: { file: join(dir, "api.log") } });
  const web = await service(t, { name: "web", dataDir: dir });
  const seen: Array<string | undefined> = [];
  await serve(t, api, (req, res) => {
    const tp = req.headers["traceparent"];
    seen.push(typeof tp === "string" ? tp : undefined);
    res.end("ok");
  });
  await fetchUntil(web, "https://api.service.consul/");
  t.same(seen, [undefined], "no traceparent invented");
  const [line] = await lines(join(dir, "api.log"), 1);
  t.equal(line?.["trace_id"], undefined, "no trace id");
  t.equal(line?.["source_identity"], web.spiffeId);
});

t.test("a bad tracing option fails Service.create with what to write", async (t) => {
  const dir = await tempDir(t);
  const error = (tracing: { endpoint: string; sampleRate?: number }) => service(t, { name: "api", dataDir: dir, tracing }).then(() => "created", (e: unknown) => String(e));
  t.match(await error({ endpoint: "127.0.0.1:4318" }), /tracing\.endpoint "127\.0\.0\.1:4318": not a URL; want e\.g\. http:\/\/127\.0\.0\.1:4318\/v1\/traces/);
  t.match(await error({ endpoint: "ftp://collector/v1/traces" }), /want an http\(s\) URL/);
  t.match(await error({ endpoint: "http://127.0.0.1:4318/v1/traces", sampleRate: 2 }), /tracing\.sampleRate 2: want a number from 0 to 1/);
});

t.test("requests the gate refuses are logged with the sidecar's flags and counted on the listener", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  await intentions(dir, "deny", [{ source: "web", destination: "api", permissions: [{ action: "allow", http: { path_prefix: "/public/" } }] }]);
  const api = await service(t, { name: "api", dataDir: dir, accessLog: { file: join(dir, "api.log") } });
  const web = await service(t, { name: "web", dataDir: dir });
  const served = await serve(t, api);
  await fetchUntil(web, "https://api.service.consul/public/a");
  const denied = await fetch("https://api.service.consul/private", { dispatcher: web.dispatcher() });
  t.equal(denied.status, 403);
  await denied.text();
  const [ok, refused] = await lines(join(dir, "api.log"), 2);
  t.match(ok, { path: "/public/a", status: 200, response_flags: "-" });
  t.match(refused, { direction: "inbound", path: "/private", status: 403, response_flags: "UAEX", source_identity: web.spiffeId }, "the refusal, as a sidecar logs it");
  t.same(served.seen.map((s) => s.url), ["/public/a"], "the handler saw only the allowed one");
  const m = await api.metrics.registry.metrics();
  t.equal(sample(m, "envoy_http_downstream_rq_xx", { envoy_http_conn_manager_prefix: "public_listener", envoy_response_code_class: "4" }), 1, "the 403 counted as 4xx");
});
