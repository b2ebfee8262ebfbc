// Differential properties of the llhttp HTTP/1 core against node:http, over random and hostile
// request streams (conflicting framing, bad chunking, obs-fold, bare LF, repeated fields, odd
// versions and targets, pipelining, bytes split across reads):
//  1. the core's server accepts exactly what node:http accepts and yields the same (method,
//     target, fields, body) for each request;
//  2. smuggling: what the inbound path forwards to an app, parsed by node:http, is exactly the
//     sequence of requests the authorization allowed, with the fields it read, and nothing else;
//  3. smuggling, outbound: what the upstream listener's path sends to the peer sidecar over mTLS,
//     parsed by node:http, is exactly the sequence of requests the router routed, with the fields
//     it routed on, and nothing else;
//  4. response smuggling: whatever bytes an origin sends with one answer (a second response, half
//     of one, junk, after a HEAD or a 204), the pool's next requests get their own answers or an
//     error, never bytes of that answer.
import t from "tap";
import fc from "fast-check";
import { createServer as createNetServer, connect, type AddressInfo, type Server as NetServer, type Socket } from "node:net";
import { createServer as createHttpServer, type IncomingHttpHeaders, type Server as HttpServer } from "node:http";
import { once } from "node:events";
import { fuzzParams } from "./params.js";
import { Http1Server } from "../../src/http1/server.js";
import { OriginPool, type ResponseEvents } from "../../src/http1/client.js";
import { fieldRecord, fieldValue, lowerName } from "../../src/http1/fields.js";
import { HOP_BY_HOP, SIDECAR_ONLY_FIELD } from "../../src/http/headers.js";
import { InboundHttp1, type Http1Caller } from "../../src/inbound/http1-inbound.js";
import { Metrics } from "../../src/telemetry/metrics.js";
import { AccessLog } from "../../src/telemetry/access-log.js";
import { silentLogger } from "../../src/telemetry/log.js";
import { createServer as createTlsServer } from "node:tls";
import { loadUndici } from "../../src/http/undici.js";
import { OutboundHttpState } from "../../src/outbound/http-router.js";
import type { RequestView } from "../../src/http/route-match.js";
import type { CompiledRoute } from "../../src/compile/routes.js";
import { meshTls } from "../helpers/mesh-tls.js";
import { apiCluster, apiRoutes, listenOutboundHttp1 } from "../helpers/outbound-router.js";
import { onRequestTargets } from "../helpers/raw-http.js";

// ---- generators ----

type ValueOf<A> = A extends fc.Arbitrary<infer T> ? T : never;

const EOL = fc.constantFrom("\r\n", "\r\n", "\r\n", "\r\n", "\n");
const NAMES = ["Host", "host", "Content-Length", "Transfer-Encoding", "Cookie", "Authorization", "X-Forwarded-Client-Cert", "Connection", "Keep-Alive", "TE", "X-A", "x-a", "User-Agent", "Content-Type", "Trailer", "Proxy-Authorization", "X-Dup", "Set-Cookie", "Referer", "X-B3-TraceId"];
const VALUES = ["chunked", "identity", "chunked, identity", "gzip, chunked", "chunked ", "0", "5", "-1", "10", " 7", "0x5", "close", "keep-alive", "X-A, x-dup", "trailers", "a=1", "Bearer t", "h", "", "a\tb", "v\u00e9", "a\u0000b", "x\r\n y", "q\rz", "1, 1"];
const token = fc.string({ unit: fc.constantFrom(..."abcxyz019-_.~=;, /"), maxLength: 10 });
const hostileField = fc.tuple(fc.constantFrom(...NAMES), fc.oneof(fc.constantFrom(...VALUES), fc.string({ maxLength: 12 })), fc.constantFrom(": ", ":", " : ", ":\t"));
const cleanField = fc.tuple(fc.constantFrom(...NAMES), fc.oneof(fc.constantFrom("chunked", "close", "keep-alive", "X-A, x-dup", "trailers", "a=1", "Bearer t", "h", "", "v\u00e9"), token), fc.constantFrom(": ", ":"));
const hostileTarget = fc.oneof(
  fc.constantFrom("/", "/a", "/a/../b", "/%2e%2e/x", "http://h/abs?q=1", "*", "/deny/x", "/a/%2Fdeny", "//x", "/a?b=c", "/x y", "/\u00e9", "/a#f", "/deny"),
  fc.string({ maxLength: 10 }).map((s) => `/${s}`),
);
const cleanTarget = fc.oneof(fc.constantFrom("/", "/a", "/a/../b", "/%2e%2e/x", "http://h/abs?q=1", "/deny/x", "/a/%2Fdeny", "/a?b=c", "/deny", "/./deny"), token.map((s) => `/${s.replace(/[ ,;]/g, "")}`));
type Framing = "none" | "cl" | "cl-short" | "cl-long" | "chunked" | "chunked-bad" | "both";
const hostileRequest = fc.record({
  method: fc.constantFrom("GET", "GET", "POST", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "G@T", "get", "PATCH"),
  target: hostileTarget,
  version: fc.constantFrom("HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTP/1.1 "),
  host: fc.constantFrom(true, true, true, true, false),
  fields: fc.array(hostileField, { maxLength: 6 }),
  framing: fc.constantFrom<Framing>("none", "none", "cl", "cl", "chunked", "chunked", "cl-short", "cl-long", "chunked-bad", "both"),
  body: fc.string({ maxLength: 20 }),
  eol: EOL,
});
const cleanRequest = fc.record({
  method: fc.constantFrom("GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH"),
  target: cleanTarget,
  version: fc.constantFrom("HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0"),
  host: fc.constantFrom(true, true, true, true, false),
  fields: fc.array(cleanField, { maxLength: 6 }),
  framing: fc.constantFrom<Framing>("none", "cl", "chunked", "none", "cl", "chunked", "cl-short"),
  body: fc.string({ maxLength: 20 }),
  eol: fc.constant("\r\n"),
});
const request = fc.oneof({ arbitrary: cleanRequest, weight: 3 }, { arbitrary: hostileRequest, weight: 1 });

function build(r: ValueOf<typeof hostileRequest>): string {
  const e = r.eol;
  let s = `${r.method} ${r.target} ${r.version}${e}`;
  if (r.host) s += `Host: h${e}`;
  for (const [n, v, sep] of r.fields) {
    // Framing comes from `framing` only, so most requests are well framed and reach the app.
    if (/^(content-length|transfer-encoding)$/i.test(n) && r.framing !== "both") continue;
    s += `${n}${sep}${v}${e}`;
  }
  const len = Buffer.byteLength(r.body, "latin1");
  const chunk = (body: string) => (body.length > 0 ? `${len.toString(16)}\r\n${body}\r\n` : "") + "0\r\n\r\n";
  switch (r.framing) {
    case "none":
      return `${s}${e}`;
    case "cl":
      return `${s}Content-Length: ${len}${e}${e}${r.body}`;
    case "cl-short":
      return `${s}Content-Length: ${Math.max(0, len - 1)}${e}${e}${r.body}`;
    case "cl-long":
      return `${s}Content-Length: ${len + 3}${e}${e}${r.body}`;
    case "chunked":
      return `${s}Transfer-Encoding: chunked${e}${e}${chunk(r.body)}`;
    case "chunked-bad":
      return `${s}Transfer-Encoding: chunked${e}${e}${(len + 2).toString(16)}\r\n${r.body}\r\n0\r\n\r\n`;
    case "both":
      return `${s}Content-Length: ${len}${e}Transfer-Encoding: chunked${e}${e}${chunk(r.body)}`;
  }
}

/** 1–3 pipelined requests, optionally a byte flipped, split into 1–3 writes. */
const stream = fc.record({
  requests: fc.array(request, { minLength: 1, maxLength: 3 }),
  flip: fc.option(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { freq: 8 }),
  splits: fc.array(fc.nat(), { maxLength: 2 }),
});

function bytesOf(s: ValueOf<typeof stream>): Buffer[] {
  const b = Buffer.from(s.requests.map(build).join(""), "latin1");
  if (s.flip && b.length > 0) b[s.flip[0] % b.length] = s.flip[1];
  const cuts = [...new Set(s.splits.map((n) => n % (b.length + 1)))].sort((x, y) => x - y);
  const out: Buffer[] = [];
  let at = 0;
  for (const c of cuts) {
    out.push(b.subarray(at, c));
    at = c;
  }
  out.push(b.subarray(at));
  return out.filter((p) => p.length > 0);
}

// ---- harness: send bytes, half-close, wait for the server to close ----

async function listen(server: NetServer | HttpServer): Promise<number> {
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return (server.address() as AddressInfo).port;
}

function play(port: number, parts: Buffer[]): Promise<void> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port }, () => {
      for (const p of parts) s.write(p);
      s.end();
    });
    const timer = setTimeout(() => s.destroy(), 3000);
    s.on("data", () => {});
    s.on("error", () => {});
    s.on("close", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

interface Parsed {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

/**
 * Requests after one that closes the connection are node's to parse and never answer: compare up
 * to it. A request line claiming another major version (HTTP/2.0 in HTTP/1 syntax) node:http
 * serves; the core refuses it with 505 (a deliberate difference): compare up to before it.
 */
function untilClose(list: Parsed[], versions: string[]): Parsed[] {
  // node:http's own default (requireHostHeader) refuses an HTTP/1.1 request without Host; the
  // comparison server turns it off to see what follows, and stops before it.
  const v = versions.findIndex((x, k) => !x.startsWith("1.") || (x === "1.1" && list[k]?.headers.host === undefined));
  const upTo = v < 0 ? list : list.slice(0, v);
  const i = upTo.findIndex((p, k) => versions[k] === "1.0" || /close/i.test(String(p.headers["connection"] ?? "")));
  return i < 0 ? upTo : upTo.slice(0, i + 1);
}

const nodeSeen: Parsed[] = [];
const nodeVersions: string[] = [];
let nodeRefused = 0;
const nodeServer = createHttpServer({ requireHostHeader: false }, (req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("error", () => {});
  req.on("end", () => {
    nodeSeen.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers, body: Buffer.concat(chunks).toString("latin1") });
    nodeVersions.push(req.httpVersion);
    res.end("ok");
  });
});
nodeServer.on("clientError", (_e, socket: Socket) => {
  nodeRefused++;
  socket.destroy();
});
const nodePort = await listen(nodeServer);

const coreSeen: Parsed[] = [];
const coreVersions: string[] = [];
let coreRefused = 0;
const core = new Http1Server<null>({
  request(ex) {
    const chunks: Buffer[] = [];
    ex.setBodySink({
      data: (c) => chunks.push(c),
      end: () => {
        coreSeen.push({ method: ex.method, url: ex.url, headers: fieldRecord(ex.rawHeaders), body: Buffer.concat(chunks).toString("latin1") });
        coreVersions.push(ex.httpVersion);
        ex.writeHead(200, "OK", "", 2, ex.method === "HEAD");
        ex.end(ex.method === "HEAD" ? "" : "ok");
      },
    });
  },
  upgrade(_ex, socket) {
    socket.destroy();
  },
  clientError() {
    coreRefused++;
  },
});
const coreNet = createNetServer({ allowHalfOpen: true }, (s) => core.accept(s, null));
const corePort = await listen(coreNet);

t.teardown(() => {
  nodeServer.closeAllConnections();
  nodeServer.close();
  core.destroyAll();
  coreNet.close();
});

t.test("the core's server accepts what node:http accepts and parses it the same", async (t) => {
  let compared = 0;
  let accepted = 0;
  let refusedByBoth = 0;
  await fc.assert(
    fc.asyncProperty(stream, async (s) => {
      const parts = bytesOf(s);
      nodeSeen.length = coreSeen.length = nodeVersions.length = coreVersions.length = 0;
      nodeRefused = coreRefused = 0;
      await Promise.all([play(nodePort, parts), play(corePort, parts)]);
      const n = untilClose(nodeSeen, nodeVersions);
      const c = untilClose(coreSeen, coreVersions);
      compared++;
      accepted += c.length;
      if (JSON.stringify(n) !== JSON.stringify(c)) throw new Error(`node:http parsed ${JSON.stringify(n)}\nthe core parsed ${JSON.stringify(c)}`);
      refusedByBoth += nodeRefused > 0 && coreRefused > 0 ? 1 : 0;
    }),
    fuzzParams(),
  );
  // (node:http answers a missing Host with 400 without a clientError, so refusals are compared
  // by what was yielded: a refused stream yields nothing from the refused request on.)
  t.ok(accepted > compared / 4, `${accepted} requests accepted by both in ${compared} streams (the generator reaches valid requests)`);
  t.ok(refusedByBoth > compared / 10, `${refusedByBoth} streams refused by both (the generator reaches hostile ones)`);
});

// ---- the smuggling property: through the inbound path to a node:http app ----

interface Authorized {
  method: string;
  path: string;
  fields: Map<string, string | undefined>;
}

const authorized: Authorized[] = [];
const appSeen: Parsed[] = [];
const app = createHttpServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("error", () => {});
  req.on("end", () => {
    appSeen.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers, body: Buffer.concat(chunks).toString("latin1") });
    res.end("ok");
  });
});
const appPort = await listen(app);
const probe = [...new Set(NAMES.map((n) => n.toLowerCase()))];
const caller: Http1Caller = {
  uri: "spiffe://fuzz/ns/default/dc/dc1/svc/web",
  authorizer: {
    intention: null,
    authorize(req) {
      // Reads every field a permission could name, as a permission would.
      const fields = new Map<string, string | undefined>();
      for (const n of probe) fields.set(n, req.header(n));
      const allowed = !req.path.startsWith("/deny");
      if (allowed) authorized.push({ method: req.method, path: req.path, fields });
      return { allowed, reason: allowed ? "allowed" : "denied" };
    },
  },
};
const metrics = new Metrics({ processMetrics: false });
const inbound = new InboundHttp1(
  { localApp: { host: "127.0.0.1", port: appPort }, requestTimeoutMs: 5000, localConnectTimeoutMs: 1000, idleTimeoutMs: 10_000, spiffeId: "spiffe://fuzz/ns/default/dc/dc1/svc/api", appHttp2: false },
  metrics,
  silentLogger,
  { tracing: null, accessLog: new AccessLog("off") },
  metrics.filters.httpConnManager(null, "127.0.0.1_0"),
  (_req, socket) => socket.destroy(),
);
const inboundNet = createNetServer({ allowHalfOpen: true }, (s) => inbound.accept(s, caller));
const inboundPort = await listen(inboundNet);
t.teardown(() => {
  inbound.destroyAll();
  inbound.close();
  inboundNet.close();
  app.closeAllConnections();
  app.close();
});

/** Fields the proxy owns or strips on the way: not the app's to compare with what was authorized. */
function comparable(name: string, connection: string | undefined): boolean {
  if (HOP_BY_HOP.has(name) || name === "content-length" || name === "x-forwarded-client-cert" || name === "host") return false;
  return !(connection ?? "").toLowerCase().split(",").some((t) => t.trim() === name);
}

t.test("smuggling: the app sees exactly the requests that were authorized, with the fields that were read", async (t) => {
  let forwarded = 0;
  let runs = 0;
  await fc.assert(
    fc.asyncProperty(stream, async (s) => {
      runs++;
      authorized.length = appSeen.length = 0;
      await play(inboundPort, bytesOf(s));
      // The app's answers are done when the client's connection closed; its own parse may lag a tick.
      await new Promise((r) => setImmediate(r));
      forwarded += appSeen.length;
      if (appSeen.some((a) => a.url.startsWith("/deny"))) throw new Error(`a denied path reached the app: ${JSON.stringify(appSeen)}`);
      if (appSeen.length > authorized.length) throw new Error(`the app saw ${appSeen.length} requests, ${authorized.length} were authorized: ${JSON.stringify(appSeen)}`);
      appSeen.forEach((a, i) => {
        const z = authorized[i]!;
        if (a.method !== z.method || a.url.split("?")[0] !== z.path) throw new Error(`request ${i}: authorized ${z.method} ${z.path}, the app got ${a.method} ${a.url}`);
        for (const [name, value] of z.fields) {
          if (!comparable(name, z.fields.get("connection"))) continue;
          const got = a.headers[name];
          const joined = Array.isArray(got) ? got.join(", ") : got;
          if (joined !== value) throw new Error(`request ${i} ${a.url}: ${name} was authorized as ${JSON.stringify(value)}, the app read ${JSON.stringify(joined)}`);
        }
      });
    }),
    fuzzParams(),
  );
  t.ok(forwarded > runs / 4, `${forwarded} requests reached the app in ${runs} streams, each checked against its authorization`);
});

// ---- the outbound smuggling property: app → upstream listener (the core) → mTLS → peer (node:http) ----

await loadUndici();
const { tls: webTls, leaf } = await meshTls();
const apiLeaf = await leaf("api");
const peerSeen: Parsed[] = [];
const peerHttp = createHttpServer({ requireHostHeader: false }, (req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("error", () => {});
  req.on("end", () => {
    peerSeen.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers, body: Buffer.concat(chunks).toString("latin1") });
    res.end("ok");
  });
});
const peer = createTlsServer({ cert: apiLeaf.certPem, key: apiLeaf.keyPem }, (s) => peerHttp.emit("connection", s));
const peerPort = await listen(peer);
const api = apiCluster(webTls, peerPort);

interface Routed {
  method: string;
  path: string;
  fields: Map<string, string | undefined>;
}
const routed: Routed[] = [];

/** The route table's decision, recorded as the router read the request: /deny… has no route (404 NR). */
class RecordingState extends OutboundHttpState {
  override match(req: RequestView): CompiledRoute | null {
    if (req.path.startsWith("/deny")) return null;
    const fields = new Map<string, string | undefined>();
    for (const n of probe) fields.set(n, req.header(n));
    routed.push({ method: req.method, path: req.path, fields });
    return super.match(req);
  }
}
const outbound = await listenOutboundHttp1(new RecordingState("api", apiRoutes(api.clusters), api.clusters));
t.teardown(async () => {
  outbound.close();
  await api.close();
  peerHttp.closeAllConnections();
  peer.close();
});

/** Fields this hop owns or strips on the way: not the peer's to compare with what was routed on. */
function routedComparable(name: string, connection: string | undefined, routedValue: string | undefined): boolean {
  if (HOP_BY_HOP.has(name) || name === "content-length" || name === "expect" || name === SIDECAR_ONLY_FIELD) return false;
  // HTTP/1.0 without Host: the hop names the endpoint (as undici did).
  if (name === "host" && routedValue === undefined) return false;
  return !(connection ?? "").toLowerCase().split(",").some((t) => t.trim() === name);
}

t.test("smuggling, outbound: the peer sidecar sees exactly the requests that were routed, with the fields they were routed on", async (t) => {
  let forwarded = 0;
  let runs = 0;
  await fc.assert(
    fc.asyncProperty(stream, async (s) => {
      runs++;
      routed.length = peerSeen.length = 0;
      await play(outbound.port, bytesOf(s));
      // The answers are done when the app's connection closed; the peer's own parse may lag a tick.
      await new Promise((r) => setImmediate(r));
      forwarded += peerSeen.length;
      if (peerSeen.some((a) => a.url.startsWith("/deny"))) throw new Error(`a path without a route reached the peer: ${JSON.stringify(peerSeen)}`);
      if (peerSeen.length > routed.length) throw new Error(`the peer saw ${peerSeen.length} requests, ${routed.length} were routed: ${JSON.stringify(peerSeen)}`);
      peerSeen.forEach((a, i) => {
        const z = routed[i]!;
        if (a.method !== z.method || a.url.split("?")[0] !== z.path) throw new Error(`request ${i}: routed ${z.method} ${z.path}, the peer got ${a.method} ${a.url}`);
        // Only a destination sidecar writes it: the app's never leaves.
        if (a.headers[SIDECAR_ONLY_FIELD] !== undefined) throw new Error(`request ${i} ${a.url}: the app's ${SIDECAR_ONLY_FIELD} reached the peer`);
        for (const [name, value] of z.fields) {
          if (!routedComparable(name, z.fields.get("connection"), value)) continue;
          const got = a.headers[name];
          const joined = Array.isArray(got) ? got.join(", ") : got;
          if (joined !== value) throw new Error(`request ${i} ${a.url}: ${name} was routed on as ${JSON.stringify(value)}, the peer read ${JSON.stringify(joined)}`);
        }
      });
    }),
    fuzzParams(),
  );
  t.ok(forwarded > runs / 4, `${forwarded} requests reached the peer in ${runs} streams, each checked against its routing`);
});

// ---- 4. response smuggling: an origin's answer never becomes another request's answer ----

const answerStatus = fc.constantFrom("HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.0 200 OK", "HTTP/1.1 204 No Content", "HTTP/1.1 304 Not Modified", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK", "HTTP/1.1 404 Not Found");
const answerField = fc.oneof(
  fc.constantFrom("Content-Length: 0", "Content-Length: 3", "Content-Length: 8", "Content-Length: 40", "Transfer-Encoding: chunked", "Connection: close", "Connection: keep-alive", "Keep-Alive: timeout=5", "X-A: b"),
  hostileField.map(([n, v, sep]) => `${n}${sep}${v}`),
);
const SMUGGLED = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled";
const trailing = fc.oneof(
  fc.constant(""),
  fc.constantFrom(SMUGGLED, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n", "HTTP/1.1 200 OK\r\n", "\r\n", "0\r\n\r\n", "3\r\nabc\r\n0\r\n\r\n" + SMUGGLED),
  fc.string({ maxLength: 24 }),
);
const hostileAnswer = fc.record({
  head: fc.boolean(),
  status: answerStatus,
  // Mostly well framed (the answer itself completes and the connection would be reused), so the
  // trailing bytes are what is under test; sometimes framed by whatever fields were drawn.
  framing: fc.constantFrom("length", "length", "chunked", "chunked", "fields"),
  fields: fc.array(answerField, { maxLength: 3 }),
  body: fc.oneof(fc.constantFrom("", "abc", "3\r\nabc\r\n0\r\n\r\n", "zz\r\nabc\r\n"), fc.string({ maxLength: 16 })),
  trailing,
});
type HostileAnswer = ValueOf<typeof hostileAnswer>;

function answerBytes(a: HostileAnswer): string {
  const framing = a.framing === "length" ? `Content-Length: ${Buffer.byteLength(a.body, "latin1")}\r\n` : a.framing === "chunked" ? "Transfer-Encoding: chunked\r\n" : "";
  const body = a.framing === "chunked" ? `${a.body.length > 0 ? `${a.body.length.toString(16)}\r\n${a.body}\r\n` : ""}0\r\n\r\n` : a.body;
  return `${a.status}\r\n${framing}${a.fields.map((f) => `${f}\r\n`).join("")}\r\n${body}${a.trailing}`;
}

t.test("response smuggling: whatever an origin sends with one answer, the next requests get their own answers or an error", async (t) => {
  // The origin answers /r1 with the generated bytes in one write, every other request honestly.
  let hostile = "";
  const conns = new Set<Socket>();
  const origin = createNetServer((c) => {
    conns.add(c);
    c.once("close", () => conns.delete(c));
    c.on("error", () => c.destroy());
    onRequestTargets(c, (target) => c.write(target === "/r1" ? hostile : `HTTP/1.1 200 OK\r\nContent-Length: ${5 + target.length}\r\n\r\nmine-${target}`, "latin1"));
  });
  origin.listen(0, "127.0.0.1");
  await once(origin, "listening");
  const port = (origin.address() as AddressInfo).port;
  t.teardown(() => {
    for (const c of conns) c.destroy();
    origin.close();
  });
  // An answer that never ends (a length longer than its body, no last chunk, a close-delimited
  // body) ends at the head or body timeout: short, so the property stays quick.
  const send = (pool: OriginPool, target: string, isHead: boolean, timeoutMs: number): Promise<{ status: number; body: string; error?: string }> =>
    new Promise((resolve) => {
      const got = { status: 0, body: "" };
      const events: ResponseEvents = {
        head: (status) => (got.status = status),
        body: (c) => (got.body += c.toString("latin1")),
        end: () => resolve(got),
        error: (e) => resolve({ ...got, error: e.message }),
      };
      pool.request(`${isHead ? "HEAD" : "GET"} ${target} HTTP/1.1\r\nhost: x\r\n\r\n`, isHead, false, false, timeoutMs, events, timeoutMs);
    });
  let honest = 0;
  let runs = 0;
  await fc.assert(
    fc.asyncProperty(hostileAnswer, async (a) => {
      runs++;
      hostile = answerBytes(a);
      const pool = new OriginPool({ host: "127.0.0.1", port, connectTimeoutMs: 1_000, keepAliveTimeoutMs: 30_000 });
      try {
        await send(pool, "/r1", a.head, 100);
        for (const target of ["/r2", "/r3"]) {
          const got = await send(pool, target, false, 1_000);
          if (got.error !== undefined) continue;
          if (got.status !== 200 || got.body !== `mine-${target}`) throw new Error(`${target} got ${got.status} ${JSON.stringify(got.body)} after /r1 was answered ${JSON.stringify(hostile)}`);
          honest++;
        }
      } finally {
        pool.close();
      }
    }),
    fuzzParams(0.1),
  );
  t.ok(honest > runs, `${honest} later requests in ${runs} runs got their own answers; none got another's`);
});

// Keep the unused-import check honest: lowerName and fieldValue are what the core reads fields with.
void lowerName;
void fieldValue;
