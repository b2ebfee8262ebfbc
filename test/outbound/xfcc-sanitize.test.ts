// x-forwarded-client-cert is the destination sidecar's statement of who called: its own element
// (By=<itself>;URI=<the verified caller>) appended to what the caller's sidecar sent. Consul's
// Envoy sends none on the outbound side (forward_client_cert_details is left at SANITIZE on the
// upstream listeners), so the app behind the destination reads one element, written by a
// sidecar. A local app that could put its own element on the wire would hand the destination a
// second, earlier one naming any identity (`URI=…/svc/admin`), which an app reading the first
// element, or every element, would believe.
import t from "tap";
import { once } from "node:events";
import { createServer as createHttpServer, type IncomingHttpHeaders } from "node:http";
import { createServer as createTlsServer } from "node:tls";
import type { AddressInfo, Socket } from "node:net";
import { OutboundHttpState, HttpRouter } from "../../src/outbound/http-router.js";
import { upgradeOutbound } from "../../src/outbound/upgrade.js";
import { SessionCache } from "../../src/tls/origin.js";
import { Metrics } from "../../src/telemetry/metrics.js";
import { AccessLog } from "../../src/telemetry/access-log.js";
import { silentLogger } from "../../src/telemetry/log.js";
import { meshTls, spiffe } from "../helpers/mesh-tls.js";
import { apiCluster, apiRoutes, listenOutboundHttp1 } from "../helpers/outbound-router.js";
import { exchange, hasResponses, parseResponses, plainTo } from "../helpers/raw-http.js";

const { tls, leaf } = await meshTls();
const FORGED = `By=${spiffe("api")};URI=${spiffe("admin")}`;

/** api's sidecar stand-in: records the fields of every request and upgrade it gets. */
async function peer(): Promise<{ port: number; seen: IncomingHttpHeaders[] }> {
  const l = await leaf("api");
  const seen: IncomingHttpHeaders[] = [];
  const http = createHttpServer((req, res) => {
    seen.push(req.headers);
    req.resume();
    req.on("end", () => res.end("ok"));
  });
  http.on("upgrade", (req, socket: Socket) => {
    seen.push(req.headers);
    socket.end("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
  });
  const server = createTlsServer({ cert: l.certPem, key: l.keyPem }, (s) => {
    s.on("error", () => s.destroy());
    http.emit("connection", s);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => {
    http.closeAllConnections();
    server.close();
  });
  return { port: (server.address() as AddressInfo).port, seen };
}

const REQUEST = `GET /whoami HTTP/1.1\r\nHost: api\r\nX-Forwarded-Client-Cert: ${FORGED}\r\nx-forwarded-client-cert: URI=${spiffe("root")}\r\nConnection: close\r\n\r\n`;

t.test("the HTTP/1 core's upstream listener does not pass the app's x-forwarded-client-cert on", async (t) => {
  const api = await peer();
  const cluster = apiCluster(tls, api.port);
  const upstream = await listenOutboundHttp1(new OutboundHttpState("api", apiRoutes(cluster.clusters), cluster.clusters));
  t.teardown(async () => {
    upstream.close();
    await cluster.close();
  });
  const x = await exchange(plainTo(`127.0.0.1:${upstream.port}`), REQUEST, { done: hasResponses(1) });
  t.equal(parseResponses(x.data)[0]?.status, 200, "answered by the peer");
  t.equal(api.seen.length, 1, "the peer got the request");
  t.equal(api.seen[0]?.["x-forwarded-client-cert"], undefined, "with no x-forwarded-client-cert from the app");
});

t.test("node:http's upstream listener (the router's own path) and an upgrade do not pass it on either", async (t) => {
  const api = await peer();
  const cluster = apiCluster(tls, api.port);
  const state = new OutboundHttpState("api", apiRoutes(cluster.clusters), cluster.clusters);
  const metrics = new Metrics({ processMetrics: false });
  const router = new HttpRouter(silentLogger, metrics.http, { tracing: null, accessLog: new AccessLog("off") }, metrics.outboundRejected);
  const sessions = new SessionCache();
  const server = createHttpServer((req, res) => router.handle(req, res, state));
  server.on("upgrade", (req, socket: Socket, head: Buffer) => upgradeOutbound(req, socket, head, state, tls, sessions, 10_000, router, silentLogger));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(async () => {
    server.closeAllConnections();
    server.close();
    await cluster.close();
  });
  const addr = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  const x = await exchange(plainTo(addr), REQUEST, { done: hasResponses(1) });
  t.equal(parseResponses(x.data)[0]?.status, 200, "answered by the peer");
  t.equal(api.seen[0]?.["x-forwarded-client-cert"], undefined, "a request: no x-forwarded-client-cert from the app");

  const ws = `GET /ws HTTP/1.1\r\nHost: api\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Forwarded-Client-Cert: ${FORGED}\r\n\r\n`;
  const u = await exchange(plainTo(addr), ws, { done: (b) => b.includes("\r\n\r\n") });
  t.match(u.data.toString("latin1"), /^HTTP\/1\.1 101 /, "the upgrade went through");
  t.equal(api.seen.length, 2, "the peer got the upgrade request");
  t.equal(api.seen[1]?.["x-forwarded-client-cert"], undefined, "an upgrade: no x-forwarded-client-cert from the app");
});
