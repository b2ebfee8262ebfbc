// A retry decided on an answer's status (RetryOn 5xx) goes out once that answer is dropped. An
// upstream that answers 503 and then trickles its body (slowly, or without end) must not hold
// the retry back: Envoy resets the upstream request when it retries on headers, and so does the
// sidecar for a body not already read. Otherwise one bad host stalls every request retried off
// it for as long as its body lasts, past the route timeout (which ends at the response headers).
import t from "tap";
import { once } from "node:events";
import { createServer as createTlsServer } from "node:tls";
import { createServer as createHttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { HttpRouter, OutboundHttpState } from "../../src/outbound/http-router.js";
import type { RouteAction } from "../../src/config/http.js";
import { loadUndici } from "../../src/http/undici.js";
import { Metrics } from "../../src/telemetry/metrics.js";
import { AccessLog } from "../../src/telemetry/access-log.js";
import { silentLogger } from "../../src/telemetry/log.js";
import { meshTls } from "../helpers/mesh-tls.js";
import { apiCluster, apiRoutes, listenOutboundHttp1 } from "../helpers/outbound-router.js";
import { exchange, hasResponses, onRequestTargets, parseResponses, plainTo } from "../helpers/raw-http.js";

await loadUndici();
const { tls, leaf } = await meshTls();
const RETRY_5XX: Partial<RouteAction> = { timeoutMs: 3_000, retry: { numRetries: 1, retryOn: ["5xx"], retriableStatusCodes: [], backoffBaseMs: 1, backoffMaxMs: 1, perTryTimeoutMs: 0 } };

/** api's sidecar stand-in: the first request gets `first`, then a trickle of chunks if `trickle`; later ones 200. */
async function flakyPeer(first: string, trickle: boolean): Promise<{ port: number; attempts: () => number; connections: () => number }> {
  const l = await leaf("api");
  let attempts = 0;
  let connections = 0;
  const trickles = new Set<NodeJS.Timeout>();
  const server = createTlsServer({ cert: l.certPem, key: l.keyPem }, (s) => {
    connections++;
    s.on("error", () => s.destroy());
    s.on("close", () => {
      for (const i of trickles) clearInterval(i);
    });
    onRequestTargets(s, () => {
      attempts++;
      if (attempts > 1) return void s.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
      s.write(first);
      if (trickle) trickles.add(setInterval(() => s.write("1\r\nx\r\n"), 50));
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => {
    for (const i of trickles) clearInterval(i);
    server.close();
  });
  return { port: (server.address() as AddressInfo).port, attempts: () => attempts, connections: () => connections };
}

const TRICKLING_503 = "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n";

t.test("through undici (the node:http upstream listener): a trickling 503 does not hold the retry either", async (t) => {
  const peer = await flakyPeer(TRICKLING_503, true);
  const api = apiCluster(tls, peer.port);
  const state = new OutboundHttpState("api", apiRoutes(api.clusters, RETRY_5XX), api.clusters);
  const metrics = new Metrics({ processMetrics: false });
  const router = new HttpRouter(silentLogger, metrics.http, { tracing: null, accessLog: new AccessLog("off") }, metrics.outboundRejected);
  const server = createHttpServer((req, res) => router.handle(req, res, state));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(async () => {
    server.closeAllConnections();
    server.close();
    await api.close();
  });
  const x = await exchange(plainTo(`127.0.0.1:${(server.address() as AddressInfo).port}`), "GET /flaky HTTP/1.1\r\nHost: api\r\n\r\n", { done: hasResponses(1), timeoutMs: 8_000 });
  const r = parseResponses(x.data)[0];
  t.same([r?.status, String(r?.body ?? "")], [200, "ok"], "the retry's answer");
  t.equal(peer.attempts(), 2, "two attempts");
  t.ok(x.ms < 1_500, `without waiting for the dropped body to end (${x.ms.toFixed(0)} ms)`);
});

t.test("a 503 whose whole body came with its head is drained: the retry reuses the connection", async (t) => {
  const peer = await flakyPeer("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 19\r\n\r\nno healthy upstream", false);
  const api = apiCluster(tls, peer.port);
  const upstream = await listenOutboundHttp1(new OutboundHttpState("api", apiRoutes(api.clusters, RETRY_5XX), api.clusters));
  t.teardown(async () => {
    upstream.close();
    await api.close();
  });
  const x = await exchange(plainTo(`127.0.0.1:${upstream.port}`), "GET /flaky HTTP/1.1\r\nHost: api\r\n\r\n", { done: hasResponses(1) });
  t.same([parseResponses(x.data)[0]?.status, peer.attempts(), peer.connections()], [200, 2, 1], "answered by the retry, on the same connection");
});

t.test("a 503 whose body trickles on is not drained before the retry: the retry is answered at once", async (t) => {
  const l = await leaf("api");
  let attempts = 0;
  const trickles = new Set<NodeJS.Timeout>();
  const server = createTlsServer({ cert: l.certPem, key: l.keyPem }, (s) => {
    s.on("error", () => s.destroy());
    s.on("close", () => {
      for (const i of trickles) clearInterval(i);
    });
    onRequestTargets(s, () => {
      attempts++;
      if (attempts > 1) return void s.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
      // The head, then a chunk every 50 ms for as long as the connection lasts.
      s.write("HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n");
      const i = setInterval(() => s.write("1\r\nx\r\n"), 50);
      trickles.add(i);
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => {
    for (const i of trickles) clearInterval(i);
    server.close();
  });
  const api = apiCluster(tls, (server.address() as AddressInfo).port);
  const upstream = await listenOutboundHttp1(
    new OutboundHttpState("api", apiRoutes(api.clusters, { timeoutMs: 3_000, retry: { numRetries: 1, retryOn: ["5xx"], retriableStatusCodes: [], backoffBaseMs: 1, backoffMaxMs: 1, perTryTimeoutMs: 0 } }), api.clusters),
  );
  t.teardown(async () => {
    upstream.close();
    await api.close();
  });
  const x = await exchange(plainTo(`127.0.0.1:${upstream.port}`), "GET /flaky HTTP/1.1\r\nHost: api\r\n\r\n", { done: hasResponses(1), timeoutMs: 8_000 });
  const r = parseResponses(x.data)[0];
  t.same([r?.status, String(r?.body ?? "")], [200, "ok"], "the retry's answer");
  t.equal(attempts, 2, "two attempts");
  t.ok(x.ms < 1_500, `without waiting for the dropped body to end (${x.ms.toFixed(0)} ms)`);
});
