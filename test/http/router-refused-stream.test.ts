// RetryOn: refused-stream. An HTTP/2 upstream that resets a stream with REFUSED_STREAM did not
// process the request (RFC 9113 §8.7), and Envoy's refused-stream retries exactly that. The
// outbound router runs in-process here against a real h2 upstream over mTLS, so the reset comes
// from node:http2 through undici as it would from a peer sidecar.
import t from "tap";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { createServer as createHttpServer } from "node:http";
import { constants, createSecureServer, type ServerHttp2Stream } from "node:http2";
import { request } from "undici";
import { loadUndici } from "../../src/http/undici.js";
import { HttpRouter, OutboundHttpState } from "../../src/outbound/http-router.js";
import { Metrics } from "../../src/telemetry/metrics.js";
import { AccessLog } from "../../src/telemetry/access-log.js";
import { createLogger } from "../../src/telemetry/log.js";
import { NO_RETRIES, type RetryOn } from "../../src/config/http.js";
import { meshTls } from "../helpers/mesh-tls.js";
import { apiCluster, apiRoutes } from "../helpers/outbound-router.js";

await loadUndici();
const { tls, leaf } = await meshTls();
const apiLeaf = await leaf("api");

// The api instance: refuses every stream whose path starts with /refuse-once the first time it
// sees that path, answers everything else.
const seen = new Map<string, number>();
const upstream = createSecureServer({ cert: apiLeaf.certPem, key: apiLeaf.keyPem });
upstream.on("stream", (stream: ServerHttp2Stream, headers) => {
  const path = String(headers[":path"]);
  const n = (seen.get(path) ?? 0) + 1;
  seen.set(path, n);
  // Closing with an error code also reports it on this side's stream: expected, nothing to do.
  stream.on("error", () => {});
  if (path.startsWith("/refuse-once") && n === 1) return stream.close(constants.NGHTTP2_REFUSED_STREAM);
  stream.respond({ ":status": 200 });
  stream.end(`attempt ${n}`);
});
upstream.listen(0, "127.0.0.1");
await once(upstream, "listening");
t.teardown(() => upstream.close());
const upstreamPort = (upstream.address() as AddressInfo).port;

const metrics = new Metrics();
const api = apiCluster(tls, upstreamPort, { http2: true });
t.teardown(() => api.close());
const router = new HttpRouter(createLogger({ level: "error" }), metrics.http, { tracing: null, accessLog: new AccessLog("off", metrics.accessLogDropped) }, metrics.outboundRejected);

/** web's upstream listener for api, with one catch-all route retrying once on `retryOn`. */
async function listener(retryOn: RetryOn[]): Promise<string> {
  const state = new OutboundHttpState("api", apiRoutes(api.clusters, { retry: { ...NO_RETRIES, numRetries: 1, retryOn } }), api.clusters);
  const server = createHttpServer((req, res) => router.handle(req, res, state));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

t.test("RetryOn refused-stream: a REFUSED_STREAM reset is retried and the retry answers", async (t) => {
  const url = await listener(["refused-stream"]);
  const r = await request(`${url}/refuse-once/a`);
  t.equal(r.statusCode, 200, "the client gets the retry's answer");
  t.equal(await r.body.text(), "attempt 2", "from the second attempt");
  t.equal(seen.get("/refuse-once/a"), 2, "the upstream saw the stream it refused and the retry");
});

t.test("without refused-stream (or reset, 5xx) in RetryOn the refusal is not retried", async (t) => {
  const url = await listener(["retriable-4xx"]);
  const r = await request(`${url}/refuse-once/b`);
  t.equal(r.statusCode, 503, "the client gets 503");
  t.equal(r.headers["x-meshproxy-response-flags"], "UF", "flagged UF");
  await r.body.text();
  t.equal(seen.get("/refuse-once/b"), 1, "one attempt only");
});

t.test("a refused stream is not mistaken for a connect failure: RetryOn connect-failure does not retry it", async (t) => {
  const url = await listener(["connect-failure"]);
  const r = await request(`${url}/refuse-once/c`);
  t.equal(r.statusCode, 503, "503");
  await r.body.text();
  t.equal(seen.get("/refuse-once/c"), 1, "one attempt only");
});
