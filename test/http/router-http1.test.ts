// The outbound path on the HTTP/1 core, in-process: an upstream listener's OutboundHttp1 with the
// router, against real mTLS peers. What the core's endpoint stage adds to the router's rules:
// nothing of a request leaves before the peer's identity is verified, a request waiting for a
// connection (MaxConnections) is held to the route's timeout, and a header mutation cannot
// reframe the request.
import t from "tap";
import { once } from "node:events";
import { createHash } from "node:crypto";
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from "node:http";
import { createServer as createTlsServer } from "node:tls";
import { createSecureServer, type ServerHttp2Stream } from "node:http2";
import type { AddressInfo } from "node:net";
import { loadUndici } from "../../src/http/undici.js";
import { OutboundHttpState } from "../../src/outbound/http-router.js";
import { NO_RETRIES, type RouteAction } from "../../src/config/http.js";
import { meshTls } from "../helpers/mesh-tls.js";
import { apiCluster, apiRoutes, listenOutboundHttp1 } from "../helpers/outbound-router.js";
import type { Metrics } from "../../src/telemetry/metrics.js";
import { exchange, hasResponses, onRequestTargets, parseResponses, plainTo } from "../helpers/raw-http.js";

await loadUndici();
const { tls, leaf } = await meshTls();

/** A peer sidecar stand-in: TLS with `service`'s leaf, node:http behind it; counts the bytes it got after each handshake. */
async function peer(service: string, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ port: number; bytes: () => number }> {
  const l = await leaf(service);
  const http = createHttpServer(handler);
  let bytes = 0;
  const server = createTlsServer({ cert: l.certPem, key: l.keyPem }, (s) => {
    s.on("data", (d: Buffer) => (bytes += d.length));
    s.on("error", () => s.destroy());
    http.emit("connection", s);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => {
    http.closeAllConnections();
    server.close();
  });
  return { port: (server.address() as AddressInfo).port, bytes: () => bytes };
}

/** web's upstream listener for api (cluster expecting api's identity) with one route; returns its address. */
async function listener(peerPort: number, cluster: { maxConnections?: number; http2?: boolean } = {}, action: Partial<RouteAction> = {}): Promise<string> {
  return (await listenerWithMetrics(peerPort, cluster, action)).addr;
}

async function listenerWithMetrics(peerPort: number, cluster: { maxConnections?: number; http2?: boolean } = {}, action: Partial<RouteAction> = {}): Promise<{ addr: string; metrics: Metrics }> {
  const api = apiCluster(tls, peerPort, cluster);
  const upstream = await listenOutboundHttp1(new OutboundHttpState("api", apiRoutes(api.clusters, action), api.clusters));
  t.teardown(async () => {
    upstream.close();
    await api.close();
  });
  return { addr: `127.0.0.1:${upstream.port}`, metrics: upstream.metrics };
}

/** The sum of a metric's series in the registry. */
async function total(metrics: Metrics, name: string): Promise<number> {
  const m = await metrics.registry.getSingleMetric(name)?.get();
  return (m?.values ?? []).reduce((n, v) => n + v.value, 0);
}

t.test("a peer with the wrong identity gets no byte of the request: 503 UF", async (t) => {
  const evil = await peer("evil", (_req, res) => res.end("should not be reached"));
  const { addr, metrics } = await listenerWithMetrics(evil.port);
  const x = await exchange(plainTo(addr), "POST /secret HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer s3cret\r\nContent-Length: 4\r\n\r\nbody", { done: hasResponses(1) });
  const r = parseResponses(x.data)[0];
  t.equal(r?.status, 503, "503");
  t.equal(r?.headers["x-meshproxy-response-flags"], "UF", "flagged UF");
  t.match(String(r?.body), /connect-failure/, "a connect failure, as the router describes one");
  t.equal(evil.bytes(), 0, "the impostor received no application byte (head, credentials or body)");
  // Counted as the L4 path counts a peer with the wrong identity: a failed connect, and why.
  t.equal(await total(metrics, "envoy_cluster_upstream_cx_connect_fail"), 1, "envoy_cluster_upstream_cx_connect_fail");
  t.equal(await total(metrics, "meshproxy_upstream_identity_rejected_total"), 1, "meshproxy_upstream_identity_rejected_total");
  t.equal(await total(metrics, "envoy_cluster_upstream_cx_connect_timeout"), 0, "not a timeout");
});

t.test("a request waiting for a connection (MaxConnections 1, the one busy) is held to the route timeout: 504 UT", async (t) => {
  const held: { release: (() => void) | null } = { release: null };
  const api = await peer("api", (req, res) => {
    if (req.url === "/hold") {
      // Answered at once, the body left open: the connection stays busy past any head timeout.
      res.writeHead(200, { "content-type": "text/plain" });
      res.write("held ");
      held.release = () => res.end("done");
    }
    else res.end("ok");
  });
  const addr = await listener(api.port, { maxConnections: 1 }, { timeoutMs: 300 });
  // The first request takes the only connection and keeps it: its answer streams until released.
  const first = exchange(plainTo(addr), "GET /hold HTTP/1.1\r\nHost: api\r\n\r\n", { done: hasResponses(1) });
  while (held.release === null) await new Promise((r) => setTimeout(r, 5));
  const started = performance.now();
  const second = await exchange(plainTo(addr), "GET /next HTTP/1.1\r\nHost: api\r\n\r\n", { done: hasResponses(1) });
  const took = performance.now() - started;
  const r = parseResponses(second.data)[0];
  t.same([r?.status, r?.headers["x-meshproxy-response-flags"]], [504, "UT"], "the waiting request times out as UT");
  t.ok(took < 2_000, `within about the route timeout (${took.toFixed(0)} ms), not when the connection frees`);
  held.release();
  const f = parseResponses((await first).data)[0];
  t.same([f?.status, String(f?.body)], [200, "held done"], "the streaming answer was not disturbed by the wait that gave up");
});

// A route timeout of 0 is "none" (Envoy's 0s). Passed on as an infinite per-try timeout, it
// became setTimeout(Infinity), which Node fires after 1 ms: every answer slower than that was a
// 504 UT.
t.test("a route without a timeout (0: none) waits for a slow answer: on the HTTP/1 core, while waiting for a connection, and through undici", async (t) => {
  const slow = await peer("api", (_req, res) => setTimeout(() => res.end("slow ok"), 80));
  const addr = await listener(slow.port, { maxConnections: 1 }, { timeoutMs: 0 });
  // Two requests on two connections: the second waits for the only upstream connection.
  const [a, b] = await Promise.all(["/a", "/b"].map((path) => exchange(plainTo(addr), `GET ${path} HTTP/1.1\r\nHost: api\r\n\r\n`, { done: hasResponses(1) })));
  t.same([a, b].map((x) => { const r = parseResponses(x!.data)[0]; return [r?.status, String(r?.body)]; }), [[200, "slow ok"], [200, "slow ok"]], "both answered by the app, the one that waited too");

  const l = await leaf("api");
  const h2 = createSecureServer({ cert: l.certPem, key: l.keyPem });
  h2.on("stream", (stream: ServerHttp2Stream) => setTimeout(() => {
    stream.respond({ ":status": 200 });
    stream.end("slow h2");
  }, 80));
  h2.listen(0, "127.0.0.1");
  await once(h2, "listening");
  t.teardown(() => h2.close());
  const h2addr = await listener((h2.address() as AddressInfo).port, { http2: true }, { timeoutMs: 0 });
  const x = await exchange(plainTo(h2addr), "GET /c HTTP/1.1\r\nHost: api\r\n\r\n", { done: hasResponses(1) });
  const r = parseResponses(x.data)[0];
  t.same([r?.status, String(r?.body)], [200, "slow h2"], "the HTTP/2 cluster's slow answer too");
});

t.test("a request header mutation cannot reframe the request: the peer reads the body the app sent", async (t) => {
  const got: { body: string; cl: string | undefined }[] = [];
  const api = await peer("api", (req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      got.push({ body: Buffer.concat(chunks).toString(), cl: req.headers["content-length"] });
      res.end("ok");
    });
  });
  const addr = await listener(api.port, {}, { requestHeaders: { add: {}, set: { "content-length": "1", "transfer-encoding": "chunked", connection: "close" }, remove: [] } });
  const x = await exchange(plainTo(addr), "POST /a HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n", { done: hasResponses(2) });
  t.same(parseResponses(x.data).map((r) => r.status), [200, 200], "both requests answered");
  t.same(got, [{ body: "hello", cl: "5" }, { body: "", cl: undefined }], "the peer got the five bytes as the first body, and the second request as a request of its own");
});

t.test("an HTTP/1.1 app calling an HTTP/2 cluster: the attempt goes through undici, buffered and streamed bodies alike", async (t) => {
  const l = await leaf("api");
  const h2 = createSecureServer({ cert: l.certPem, key: l.keyPem });
  h2.on("stream", (stream: ServerHttp2Stream, headers) => {
    let n = 0;
    stream.on("data", (c: Buffer) => (n += c.length));
    stream.on("end", () => {
      stream.respond({ ":status": 200 });
      stream.end(`${String(headers[":method"])} ${String(headers[":path"])} ${n}`);
    });
  });
  h2.listen(0, "127.0.0.1");
  await once(h2, "listening");
  t.teardown(() => h2.close());
  const addr = await listener((h2.address() as AddressInfo).port, { http2: true });
  const big = "x".repeat(200_000);
  const chunked = `${big.length.toString(16)}\r\n${big}\r\n0\r\n\r\n`;
  const x = await exchange(
    plainTo(addr),
    `POST /small HTTP/1.1\r\nHost: api\r\nContent-Length: 3\r\n\r\nabcPOST /big HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${chunked}`,
    { done: hasResponses(2) },
  );
  const rs = parseResponses(x.data);
  t.same(rs.map((r) => [r.status, String(r.body)]), [[200, "POST /small 3"], [200, `POST /big ${big.length}`]], "both bodies reached the HTTP/2 peer whole");
});

// A 503 the route retries is dropped, not delivered, and the retry's slot of the budget is taken
// when its head arrives and held until the retried attempt is over. A client that left while a
// retried answer was still draining used to leave that slot taken for good: the budget (20 % of
// active requests, at least 10) shrank by one each time, until no retry was sent at all. The
// dropped answer is no longer waited for (retry-drain.test.ts), so the client leaves while the
// retry is in flight instead.
for (const http2 of [false, true]) {
  t.test(`a client gone while a retry is in flight gives its retry slot back (${http2 ? "HTTP/2 cluster, undici" : "HTTP/1 core"})`, async (t) => {
    const l = await leaf("api");
    let heads = 0;
    const answer = (write: (status: number) => void): void => {
      heads++;
      // A retriable head with a body that never ends; the retry is never answered.
      if (heads === 1) write(503);
    };
    let port: number;
    if (http2) {
      const h2 = createSecureServer({ cert: l.certPem, key: l.keyPem });
      h2.on("stream", (stream: ServerHttp2Stream) => answer((status) => {
        stream.respond({ ":status": status });
        stream.write("draining ");
      }));
      h2.on("sessionError", () => {});
      h2.listen(0, "127.0.0.1");
      await once(h2, "listening");
      t.teardown(() => h2.close());
      port = (h2.address() as AddressInfo).port;
    } else {
      port = (await peer("api", (_req, res) => answer((status) => {
        res.writeHead(status, { "content-type": "text/plain" });
        res.write("draining ");
      }))).port;
    }
    const api = apiCluster(tls, port, { http2 });
    const upstream = await listenOutboundHttp1(new OutboundHttpState("api", apiRoutes(api.clusters, { retry: { ...NO_RETRIES, numRetries: 1, retryOn: ["5xx"] } }), api.clusters));
    t.teardown(async () => {
      upstream.close();
      await api.close();
    });
    const breaker = api.clusters.get("api")!.breaker;
    const client = await plainTo(`127.0.0.1:${upstream.port}`)();
    client.on("error", () => {});
    client.write("GET /flaky HTTP/1.1\r\nHost: api\r\n\r\n");
    await until(() => heads === 2 && breaker.state.activeRetries === 1, "the router to hold a retry slot for the retry in flight");
    // A reset, not a FIN: after a FIN the client may still be reading (a half-close), and the
    // request goes on as node:http's would.
    client.resetAndDestroy();
    await until(() => breaker.state.activeRetries === 0, "the slot to be given back once the client is gone");
    t.equal(breaker.state.activeRetries, 0, "no retry slot held after the request ended");
    t.equal(heads, 2, "no further attempt for a client that is gone");
  });
}

/** Polls `ok` every 5 ms (the breaker's state has no event) for up to 5 s. */
async function until(ok: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (ok()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`timed out waiting for ${what}`);
}

// The core reads its upstream connections into one buffer shared by every socket (onread): a
// slow client must still stop the reads (nothing piles up in the sidecar), and answers streaming
// side by side must each arrive intact although every read overwrites the same buffer.
t.test("answers streaming side by side to a client that stalls: the sidecar stops reading, and each answer arrives intact", async (t) => {
  const size = 48 * 1024 * 1024;
  const sent = new Map<string, { bytes: number; hash: string }>();
  const api = await peer("api", (req, res) => {
    // Different bytes per request, from a counter: a read that lands in the other answer shows.
    const seed = req.url === "/a" ? 1 : 7;
    const hash = createHash("sha256");
    const rec = { bytes: 0, hash: "" };
    sent.set(String(req.url), rec);
    res.writeHead(200, { "content-type": "application/octet-stream", "content-length": String(size) });
    let n = 0;
    const more = (): void => {
      while (n < size) {
        const chunk = Buffer.alloc(Math.min(61_440, size - n), (n / 61_440 + seed) % 251);
        n += chunk.length;
        hash.update(chunk);
        rec.bytes = n;
        if (!res.write(chunk)) return void res.once("drain", more);
      }
      rec.hash = hash.digest("hex");
      res.end();
    };
    more();
  });
  const addr = await listener(api.port);
  const open = plainTo(addr);
  const clients = await Promise.all(["/a", "/b"].map(async (path) => {
    const s = await open();
    s.pause();
    s.write(`GET ${path} HTTP/1.1\r\nHost: api\r\n\r\n`);
    return { path, s };
  }));
  t.teardown(() => clients.forEach((c) => c.s.destroy()));
  // Neither client reads: the app's writes must stall far short of the whole answer.
  let last = -1;
  for (;;) {
    await new Promise((r) => setTimeout(r, 200));
    const now = [...sent.values()].reduce((a, r) => a + r.bytes, 0);
    if (now === last) break;
    last = now;
  }
  for (const [path, r] of sent) t.ok(r.bytes < size / 2, `${path}: the app could write ${(r.bytes / 1048576).toFixed(1)} of ${size / 1048576} MiB while the client read nothing`);
  const got = await Promise.all(clients.map(({ path, s }) => new Promise<{ path: string; hash: string; bytes: number }>((resolve) => {
    const hash = createHash("sha256");
    let head = Buffer.alloc(0);
    let inBody = false;
    let bytes = 0;
    s.on("data", (d: Buffer) => {
      if (!inBody) {
        head = Buffer.concat([head, d]);
        const i = head.indexOf("\r\n\r\n");
        if (i < 0) return;
        inBody = true;
        d = head.subarray(i + 4);
      }
      bytes += d.length;
      hash.update(d);
      if (bytes >= size) resolve({ path, hash: hash.digest("hex"), bytes });
    });
    s.resume();
  })));
  for (const g of got) t.same([g.bytes, g.hash], [size, sent.get(g.path)?.hash], `${g.path}: every byte arrived, in order, none of the other answer's`);
});

// The outbound hop passes an answer's parsed lines to the app without a header record in
// between. An upstream that answers with hop-by-hop fields, fields its Connection nominates,
// conflicting framing or bytes past its body must neither reach the app as fields it acts on nor
// shift the app's keep-alive connection: the answer to the next request on it must be that
// request's own.
t.test("a hostile upstream answer cannot smuggle fields or a response into the app's connection", async (t) => {
  const l = await leaf("api");
  const answers: Record<string, string> = {
    "/hop": "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nX-Internal: secret\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\nProxy-Authenticate: Basic\r\nTrailer: X-T\r\nX-End: kept\r\nContent-Length: 3\r\n\r\nhop",
    // Both framings: the body as chunks (TE wins), with a length that would cut it short.
    "/te-cl": "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2c\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled\r\n0\r\n\r\n",
    "/two-cl": "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
    // A response past the declared body, sent at once on the same connection.
    "/extra": "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
    // HEAD: the length describes a body that is not sent, and no byte of one may be read as it.
    "/head": "HTTP/1.1 200 OK\r\nContent-Length: 37\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n",
    // A chunk size that does not parse, in the read that carried the head.
    "/bad-chunk": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nsmuggled\r\n0\r\n\r\n",
  };
  const server = createTlsServer({ cert: l.certPem, key: l.keyPem }, (s) => {
    onRequestTargets(s, (path) => s.write(answers[path] ?? `HTTP/1.1 200 OK\r\nContent-Length: ${path.length}\r\n\r\n${path}`));
    s.on("error", () => s.destroy());
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => server.close());
  const { addr, metrics } = await listenerWithMetrics((server.address() as AddressInfo).port);
  const next = "GET /next HTTP/1.1\r\nHost: api\r\n\r\n";

  const hop = parseResponses((await exchange(plainTo(addr), `GET /hop HTTP/1.1\r\nHost: api\r\n\r\n${next}`, { done: hasResponses(2) })).data);
  t.same(hop.map((r) => [r.status, String(r.body)]), [[200, "hop"], [200, "/next"]], "the answer, then the next request's own");
  for (const name of ["x-internal", "upgrade", "proxy-authenticate", "trailer"]) t.equal(hop[0]?.headers[name], undefined, `${name} did not reach the app`);
  t.notMatch(hop[0]?.headers["connection"] ?? "", /x-internal/i, "nor the Connection that nominated it");
  t.equal(hop[0]?.headers["x-end"], "kept", "an end-to-end field went on");

  for (const path of ["/te-cl", "/two-cl", "/extra"]) {
    const x = await exchange(plainTo(addr), `GET ${path} HTTP/1.1\r\nHost: api\r\n\r\n${next}`, { done: hasResponses(2), timeoutMs: 3_000 });
    const rs = parseResponses(x.data, { closed: x.closed });
    t.notMatch(x.data.toString("latin1"), /smuggled/, `${path}: the smuggled answer reached the app in no form`);
    const last = rs.at(-1);
    t.ok(rs.length <= 2 && (rs.length < 2 || String(last?.body) === "/next"), `${path}: a second answer on the app's connection is its own request's (got ${JSON.stringify(rs.map((r) => [r.status, String(r.body)]))})`);
  }

  // The head waited for its body and had not left: the app gets the router's local reply, 502
  // UPE as Envoy's (no retry policy here), not a 200 cut off, and its connection goes on.
  const bad = await exchange(plainTo(addr), `GET /bad-chunk HTTP/1.1\r\nHost: api\r\n\r\n${next}`, { done: hasResponses(2), timeoutMs: 3_000 });
  const badRs = parseResponses(bad.data);
  t.notMatch(bad.data.toString("latin1"), /smuggled/, "/bad-chunk: no byte of the bad answer reached the app");
  t.same(
    badRs.map((r) => [r.status, r.headers["x-meshproxy-response-flags"] ?? null]),
    [
      [502, "UPE"],
      [200, null],
    ],
    "/bad-chunk: a local reply, then the next request's own answer",
  );
  t.match(String(badRs[0]?.body), /reset reason: protocol error: .*did not parse: Invalid character in chunk size/, "/bad-chunk: the reply says what failed");
  t.equal(String(badRs[1]?.body), "/next");
  // /te-cl, /two-cl (their heads did not parse) and /bad-chunk.
  t.match(await metrics.registry.metrics(), /^envoy_cluster_upstream_rq\{[^}]*envoy_response_code="502"[^}]*\} 3$/m, "each 502 UPE is charged to the cluster, as a 503 UF would be");

  const head = await exchange(plainTo(addr), `HEAD /head HTTP/1.1\r\nHost: api\r\n\r\n${next}`, { done: (b) => b.toString("latin1").includes("/next"), timeoutMs: 3_000 });
  const text = head.data.toString("latin1");
  t.notMatch(text, /Content-Length: 8/i, "HEAD: the bytes after the head were not passed on as a body or a response");
  t.match(text, /\r\n\r\n\/next$|\/next$/, "the next request's own answer came after it");
});
