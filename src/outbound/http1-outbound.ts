// The outbound HTTP/1.1 path on the llhttp core (src/http1/): the app's plaintext requests on an
// upstream listener are parsed by the core's server, routed by the router's logical stage
// (route, split, header mutations, tracing, hash), and each attempt goes out on the core's client
// over the host's pooled mTLS connections (endpoint-http1.ts), with the router's retries,
// breakers and timeouts (HttpRouter.forward). No IncomingMessage, ServerResponse or undici
// request per request. The fields routed on are the fields sent (http1/forward.ts), so the next
// sidecar authorizes what was routed. h2c callers stay on node:http2, and upgrades (WebSocket,
// CONNECT) are handed to the node:http path's relay (upgrade.ts).
import type { OutgoingHttpHeaders } from "node:http";
import type { Socket } from "node:net";
import type { Counter } from "prom-client";
import { Http1Server, type ClientFailure, type Exchange } from "../http1/server.js";
import { http1Core } from "../http1/parser.js";
import { fieldRecord, fieldValue } from "../http1/fields.js";
import { clientResponseFields, forwardRecord } from "../http1/forward.js";
import { parseRequestTarget, refusalDetail } from "../http/request-target.js";
import { localReply } from "../http/local-reply.js";
import { Cancel, type ResponseSink } from "../http/compat.js";
import type { HeaderRecord } from "../http/headers.js";
import { requestHash } from "../cluster/balancer.js";
import { LazyRequestView } from "../http/route-match.js";
import type { Logger } from "../telemetry/log.js";
import type { Observers } from "../telemetry/observers.js";
import type { HttpConnManagerStats } from "../telemetry/filter-stats.js";
import { RETRY_BUFFER_LIMIT, mutateRequestHeaders, pickLeg, upstreamPath, type HttpRouter, type OutboundHttpState, type RequestInfo, type RequestRecord } from "./http-router.js";
import { http1Sender, type BodyChunks, type Http1AttemptBody, type StreamedBody } from "./endpoint-http1.js";

/**
 * Which engine serves an upstream listener's HTTP/1.1: "llhttp" (the default) or "node"
 * (node:http and undici), by the same MESHPROXY_HTTP1_CORE switch as the public listener; the
 * core also falls back to node:http, with a warning, when its self-test fails.
 */
export function outboundHttp1Engine(log: Logger): "llhttp" | "node" {
  const want = process.env["MESHPROXY_HTTP1_CORE"] ?? "llhttp";
  if (want === "node") return "node";
  if (want !== "llhttp") log.warn("MESHPROXY_HTTP1_CORE must be llhttp or node; using llhttp", { value: want });
  const core = http1Core();
  if (core.ok) {
    log.info("serving HTTP/1.1 on the upstream listener with the llhttp core", { node: process.version });
    return "llhttp";
  }
  log.warn("the llhttp HTTP/1 core is unavailable; serving HTTP/1.1 on upstream listeners with node:http", { reason: core.reason });
  return "node";
}

/** The app's connection, as the router needs it (ring_hash/maglev's source_ip). */
export interface Downstream {
  readonly remoteAddress: string;
}

/** What one listener gives the path: its current state and stats, read per request. */
export interface OutboundHttp1Listener {
  /** The Snapshot's HTTP view of the upstream now; null when it is no longer HTTP. */
  state(): OutboundHttpState | null;
  /** Envoy's `http.upstream.*` connection-manager stats of the listener. */
  hcm(): HttpConnManagerStats;
  /** An upgrade request (WebSocket, CONNECT) and its socket, for the node:http path's relay. */
  upgrade(req: { method: string; url: string; headers: ReturnType<typeof fieldRecord>; rawHeaders: string[] }, socket: Socket, head: Buffer): void;
}

/** An exchange of the core's server as the router's response sink (local replies and forwarded answers). */
class ExchangeSink implements ResponseSink {
  constructor(private readonly ex: Exchange<Downstream>) {}

  get headersSent(): boolean {
    return this.ex.headersSent;
  }

  /** An answer to HEAD, a 204 or a 304 carries no body, whatever its fields say. */
  private noBody(status: number): boolean {
    return this.ex.method === "HEAD" || status === 204 || status === 304;
  }

  writeHead(status: number, headers: OutgoingHttpHeaders): void {
    const noBody = this.noBody(status);
    let fields = "";
    let length: number | null = null;
    for (const name in headers) {
      const v = headers[name];
      if (v === undefined) continue;
      if (name === "content-length" && !noBody) {
        const n = Number(v);
        // The body is framed by this length only when it is one (else it is chunked, as it streams).
        if (Number.isSafeInteger(n) && n >= 0) length = n;
        continue;
      }
      // The core frames and keeps the connection itself.
      if (name === "transfer-encoding" || name === "connection" || name === "keep-alive") continue;
      if (Array.isArray(v)) for (const one of v) fields += `${name}: ${one}\r\n`;
      else fields += `${name}: ${v}\r\n`;
    }
    this.ex.writeHead(status, "", fields, length, noBody);
  }

  writeParsedHead(status: number, raw: readonly string[]): void {
    const noBody = this.noBody(status);
    const { fields, length } = clientResponseFields(raw, noBody);
    this.ex.writeHead(status, "", fields, length, noBody);
  }

  write(chunk: Buffer): boolean {
    return this.ex.write(chunk);
  }

  end(body?: string): void {
    this.ex.end(body);
  }

  retractHead(): boolean {
    return this.ex.retractHead();
  }

  destroy(): void {
    this.ex.destroy();
  }

  once(_event: "drain", listener: () => void): this {
    this.ex.onDrain(listener);
    return this;
  }
}

/** The app's request body as the endpoint stage streams it (a body too large or of unknown length to buffer). */
class ExchangeBody implements StreamedBody {
  constructor(
    private readonly ex: Exchange<Downstream>,
    readonly length: number | null,
  ) {}

  pipeTo(sink: BodyChunks): void {
    this.ex.setBodySink(sink);
  }

  pause(): void {
    this.ex.pauseBody();
  }

  resume(): void {
    this.ex.resumeBody();
  }
}

const NO_INFO: RequestInfo = { method: "", url: "", httpVersion: "1.1", headers: {} };

function cookieOf(raw: readonly string[], name: string): string | undefined {
  const c = fieldValue(raw, "cookie");
  if (!c) return undefined;
  for (const part of c.split(";")) {
    const i = part.indexOf("=");
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}

/** The request body, buffered whole (it is at most RETRY_BUFFER_LIMIT, by its Content-Length); null when the client went away first. */
function bufferBody(ex: Exchange<Downstream>, clientGone: Cancel): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const gone = (): void => resolve(null);
    clientGone.once("abort", gone);
    ex.setBodySink({
      data: (c) => void chunks.push(c),
      end: () => {
        clientGone.off("abort", gone);
        resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks));
      },
    });
  });
}

export class OutboundHttp1 {
  private readonly server: Http1Server<Downstream>;

  constructor(
    private readonly listener: OutboundHttp1Listener,
    private readonly router: HttpRouter,
    private readonly obs: Observers,
    private readonly log: Logger,
    /** meshproxy_config_errors_total: a request the parser refused is counted as node:http's clientError is. */
    private readonly parseErrors: Counter<"kind">,
  ) {
    this.server = new Http1Server({
      request: (ex) => this.handle(ex),
      upgrade: (ex, socket, head) => this.listener.upgrade({ method: ex.method, url: ex.url, headers: fieldRecord(ex.rawHeaders), rawHeaders: ex.rawHeaders }, socket, head),
      clientError: (f, d) => this.clientError(f, d),
    });
  }

  accept(s: Socket): void {
    this.server.accept(s, { remoteAddress: s.remoteAddress ?? "" });
  }

  private clientError(f: ClientFailure, d: Downstream): void {
    this.parseErrors.labels("http_parse").inc();
    if (this.log.enabled("debug")) this.log.debug("request refused by the HTTP/1 parser", { peer: d.remoteAddress, status: f.status, code: f.code, reason: f.reason });
  }

  private handle(ex: Exchange<Downstream>): void {
    const sink = new ExchangeSink(ex);
    const state = this.listener.state();
    if (!state) return localReply(sink, 503, "NR", "this upstream is no longer HTTP; reconnect");
    const rec: RequestRecord = { start: performance.now(), startTime: Date.now(), status: 0, flag: "-", attempts: 0 };
    const clientGone = new Cancel();
    ex.onAbort = () => clientGone.cancel();
    this.route(ex, sink, state, rec, clientGone)
      .catch((e: unknown) => {
        const message = e instanceof Error ? e.message : String(e);
        this.log.error("request failed unexpectedly", { upstream: state.upstream, error: message });
        rec.status = 500;
        rec.flag = "UF";
        localReply(sink, 500, "UF", message);
      })
      .finally(() => {
        this.listener.hcm().response(rec.status, performance.now() - rec.start);
        const info: RequestInfo = this.obs.accessLog.enabled
          ? { method: ex.method, url: ex.url, httpVersion: ex.httpVersion, headers: { "user-agent": fieldValue(ex.rawHeaders, "user-agent"), "x-request-id": fieldValue(ex.rawHeaders, "x-request-id") } }
          : NO_INFO;
        this.router.finish(info, state, rec);
      });
  }

  /** The router's logical stage for a parsed request (HttpRouter.route's, read from the raw fields). */
  private async route(ex: Exchange<Downstream>, sink: ExchangeSink, state: OutboundHttpState, rec: RequestRecord, clientGone: Cancel): Promise<void> {
    const target = parseRequestTarget(ex.url);
    if (!target.ok) {
      this.router.refused("invalid_request_target", state.upstream, ex.method, ex.url, target.reason);
      rec.status = 400;
      rec.flag = "DPE";
      return localReply(sink, 400, "DPE", refusalDetail(target));
    }
    const raw = ex.rawHeaders;
    const expect = fieldValue(raw, "expect");
    if (expect !== undefined) {
      // node:http's rule: 100-continue is answered by the sidecar, anything else is 417.
      if (expect.toLowerCase() !== "100-continue") {
        rec.status = 417;
        rec.flag = "DPE";
        return localReply(sink, 417, "DPE", `Expect: ${expect} is not supported`);
      }
      if (ex.versionMinor === 1 && !ex.bodyDone) ex.writeContinue();
    }
    // The fields routed on, mutated and sent: one record, read as node:http reads repeated fields.
    const headers: HeaderRecord = forwardRecord(raw);
    const v = new LazyRequestView(ex.method, target.path, target.query, (name) => fieldValue(raw, name));
    const c = state.match(v);
    if (!c) return this.router.reply(sink, 404, "NR", state.upstream, undefined, rec);
    const leg = c.route.action.splits[pickLeg(c, Math.random())]!;
    const primary = state.clusters.get(leg.cluster);
    if (!primary) return this.router.reply(sink, 503, "UH", state.upstream, `cluster "${leg.cluster}" is not configured`, rec);

    mutateRequestHeaders(c, leg, headers);
    const tracing = this.obs.tracing;
    if (tracing) {
      rec.span = tracing.start("client", `egress ${state.upstream}`, headers, {
        "http.request.method": ex.method,
        "url.path": target.path,
        "network.protocol.version": ex.httpVersion,
        "peer.service": primary.config.service,
        "meshproxy.upstream": state.upstream,
      });
      tracing.inject(rec.span, headers);
    }
    // The canonical target goes on: the destination's sidecar then authorizes exactly what was routed.
    const path = upstreamPath(c, target.path, target.query);

    // A body is buffered when small enough to send again; a larger one streams and is not retried.
    let body: Http1AttemptBody = null;
    let canRetry = true;
    if (ex.hasBody) {
      const cl = fieldValue(raw, "content-length");
      const len = cl === undefined ? null : Number(cl);
      if (len !== null && len <= RETRY_BUFFER_LIMIT) {
        body = await bufferBody(ex, clientGone);
        if (body === null) return;
      } else {
        body = new ExchangeBody(ex, len);
        canRetry = false;
      }
    }

    const hashPolicies = primary.config.lb.hashPolicies;
    const hash =
      hashPolicies.length > 0
        ? requestHash(hashPolicies, { header: v.header, cookie: (n) => cookieOf(raw, n), query: (n) => v.query?.get(n) ?? undefined, sourceIp: ex.context.remoteAddress })
        : undefined;
    return this.router.forward({ state, route: c, leg, primary, method: ex.method, path, headers, body: null, canRetry, hash, res: sink, clientGone, send: http1Sender(body) }, rec);
  }

  /** Draining: idle keep-alive connections close now, busy ones after their answer. */
  closeIdle(): void {
    this.server.closeIdle();
  }

  destroyAll(): void {
    this.server.destroyAll();
  }
}
