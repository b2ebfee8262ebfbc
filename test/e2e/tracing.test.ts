// Tracing and access logs: a request through two sidecars produces a client span (web) and a
// server span (api) with the right parent/child links, exported over OTLP/HTTP to a small
// receiver; the app's traceparent points at the api sidecar's span; B3 works too; with tracing
// off no header is invented; exporter failures are counted; access-log lines carry the trace id.
import t from "tap";
import { createServer, type IncomingHttpHeaders } from "node:http";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import { request } from "undici";
import { startSidecar, tempDir } from "../helpers/mesh.js";
import { configWrite, metric, until } from "../helpers/l7.js";

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes?: Array<{ key: string; value: Record<string, unknown> }>;
}

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

async function headerApp(t: { teardown(fn: () => unknown): void }): Promise<{ port: number; seen: IncomingHttpHeaders[] }> {
  const seen: IncomingHttpHeaders[] = [];
  const server = createServer((req, res) => {
    seen.push(req.headers);
    res.end("ok");
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => new Promise<void>((r) => {
    server.closeAllConnections();
    server.close(() => r());
  }));
  return { port: (server.address() as AddressInfo).port, seen };
}

t.test("spans of both sidecars join the caller's trace, and the app continues it", async (t) => {
  const dir = await tempDir(t);
  const otlp = await otlpReceiver(t);
  const app = await headerApp(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  const tracing = ["-tracing-endpoint", otlp.url];
  await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`, "-access-log", join(dir, "api-access.log"), ...tracing]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0", "-access-log", join(dir, "web-access.log"), ...tracing]);
  const url = `http://${web.upstreams["api"]}/orders/7`;

  const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
  const callerSpan = "00f067aa0ba902b7";
  const res = await request(url, { headers: { traceparent: `00-${traceId}-${callerSpan}-01` } });
  t.equal(res.statusCode, 200);
  await res.body.text();
  await until(() => otlp.spans.filter((s) => s.traceId === traceId).length >= 2, 10_000, "two spans of the trace at the receiver");
  const mine = otlp.spans.filter((s) => s.traceId === traceId);
  const client = mine.find((s) => s.kind === 3);
  const server = mine.find((s) => s.kind === 2);
  t.ok(client, "web's sidecar exported a client span");
  t.ok(server, "api's sidecar exported a server span");
  t.equal(client?.parentSpanId, callerSpan, "web's span is a child of the caller's span");
  t.equal(server?.parentSpanId, client?.spanId, "api's span is a child of web's span");
  const tp = String(app.seen[0]?.["traceparent"] ?? "");
  t.equal(tp, `00-${traceId}-${server?.spanId}-01`, "the app's traceparent continues from api's span");
  t.ok(client?.attributes?.some((a) => a.key === "http.response.status_code"), "spans carry HTTP semantic-convention attributes");

  // B3 single header in, B3 out to the app as well, on the same trace.
  const b3trace = "463ac35c9f6413ad48485a3953bb6124";
  const b3res = await request(url, { headers: { b3: `${b3trace}-a2fb4a1d1a96d312-1` } });
  await b3res.body.text();
  await until(() => otlp.spans.filter((s) => s.traceId === b3trace).length >= 2, 10_000, "the B3 trace's spans");
  const b3server = otlp.spans.find((s) => s.traceId === b3trace && s.kind === 2);
  const b3client = otlp.spans.find((s) => s.traceId === b3trace && s.kind === 3);
  t.equal(b3client?.parentSpanId, "a2fb4a1d1a96d312", "a B3 parent is honoured");
  t.equal(String(app.seen[1]?.["b3"] ?? ""), `${b3trace}-${b3server?.spanId}-1`, "the app gets B3 back, pointing at api's span");

  // Access logs: one JSON line per request on each side, with the trace id.
  await until(async () => (await readFile(join(dir, "web-access.log"), "utf8").catch(() => "")).split("\n").filter(Boolean).length >= 2, 5000, "web's access log");
  const webLines = (await readFile(join(dir, "web-access.log"), "utf8")).split("\n").filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  t.match(webLines[0], { direction: "outbound", method: "GET", path: "/orders/7", status: 200, response_flags: "-", trace_id: traceId, attempts: 1 }, "web logs the request");
  await until(async () => (await readFile(join(dir, "api-access.log"), "utf8").catch(() => "")).length > 0, 5000, "api's access log");
  const apiLine = JSON.parse((await readFile(join(dir, "api-access.log"), "utf8")).split("\n")[0]!) as Record<string, unknown>;
  t.match(apiLine, { direction: "inbound", status: 200, trace_id: traceId, source_identity: /\/svc\/web$/ }, "api logs the request with the caller's identity");
});

t.test("tracing off invents no header; a dead collector is counted, not fatal", async (t) => {
  const dir = await tempDir(t);
  const app = await headerApp(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  const plain = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"]);
  const r1 = await request(`http://${plain.upstreams["api"]}/x`);
  await r1.body.text();
  t.equal(r1.statusCode, 200);
  for (const h of ["traceparent", "tracestate", "b3", "x-b3-traceid"]) t.equal(app.seen[0]?.[h], undefined, `no ${h} header invented with tracing off`);

  // A second web sidecar exports to a port nobody listens on.
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0", "-tracing-endpoint", "http://127.0.0.1:1/v1/traces"]);
  const res = await request(`http://${web.upstreams["api"]}/x`);
  t.equal(res.statusCode, 200, "requests flow while the collector is down");
  await res.body.text();
  await until(async () => (await metric(web.adminAddr, "meshproxy_tracing_export_failures_total")) > 0, 15_000, "an export failure to be counted");
  t.pass("export failures are counted");
});
