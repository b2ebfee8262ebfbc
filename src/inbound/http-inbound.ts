// Inbound HTTP on the public listener: after the client's mTLS identity is verified, every
// request is authorized with intentions (L7 permissions included) and forwarded to the local
// app over a keep-alive pool. A denied request gets 403 and the connection stays usable.
import { createServer as createHttpServer, type IncomingMessage, type Server } from "node:http";
import { createServer as createH2Server, type Http2Server, type ServerHttp2Session } from "node:http2";
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import type { Dispatcher } from "undici";
import { loadUndici, undici, undiciLoaded } from "../http/undici.js";
import type { HostPort } from "../config/snapshot.js";
import { isRequestPseudoField, nominatedAway, requestPseudoField, type SourceAuthorizer } from "../authz/l7.js";
import { endToEndCopy } from "../http/headers.js";
import { ResponseForwarder, type ForwardResult } from "../http/forwarder.js";
import { errorCode, isResponseParseError, requestHasBody, requestHeaders, writeHead, type AnyRequest, type AnyResponse } from "../http/compat.js";
import { parseRequestTarget, refusalDetail, type RefusedTarget } from "../http/request-target.js";
import { classifyUpgrade, rawLocalReply, relayUpgrade, upgradeRequestHeaders } from "../http/upgrade-relay.js";
import { localReply, type ResponseFlag } from "../http/local-reply.js";
import { answerClientError } from "../http/client-error.js";
import { logRejection, type Logger } from "../telemetry/log.js";
import type { InboundRejection, Metrics } from "../telemetry/metrics.js";
import type { HttpConnManagerStats } from "../telemetry/filter-stats.js";
import { LOCAL_APP_CLUSTER } from "../telemetry/consul-tags.js";
import type { RequestSpan } from "../telemetry/tracing.js";
import type { Observers } from "../telemetry/observers.js";
import { requestFields } from "../telemetry/access-log.js";
import { InboundHttp1 } from "./http1-inbound.js";
import { http1Core } from "../http1/parser.js";
import { fieldLines } from "../http1/fields.js";

/**
 * Which HTTP/1.1 engine serves the public listener: "llhttp" (src/http1/, node's parser driven
 * directly; the default) or "node" (node:http and undici). MESHPROXY_HTTP1_CORE=node selects
 * the latter; the core also falls back to it, with a warning, when its self-test fails.
 */
export function inboundHttp1Engine(log: Logger): "llhttp" | "node" {
  const want = process.env["MESHPROXY_HTTP1_CORE"] ?? "llhttp";
  if (want === "node") return "node";
  if (want !== "llhttp") log.warn("MESHPROXY_HTTP1_CORE must be llhttp or node; using llhttp", { value: want });
  const core = http1Core();
  if (core.ok) {
    log.info("serving HTTP/1.1 on the public listener with the llhttp core", { node: process.version });
    return "llhttp";
  }
  log.warn("the llhttp HTTP/1 core is unavailable; serving HTTP/1.1 with node:http", { reason: core.reason });
  return "node";
}

export interface InboundHttpConfig {
  readonly localApp: HostPort;
  readonly requestTimeoutMs: number;
  readonly localConnectTimeoutMs: number;
  readonly idleTimeoutMs: number;
  /** This proxy's SPIFFE ID, for x-forwarded-client-cert's By=. */
  readonly spiffeId: string;
  /** http2/grpc services: the app speaks HTTP/2 in cleartext (h2c), as Envoy's local cluster does. */
  readonly appHttp2: boolean;
}

interface InboundRecord {
  readonly start: number;
  readonly startTime: number;
  status: number;
  flag: string;
  span?: RequestSpan;
}

interface Caller {
  readonly authorizer: SourceAuthorizer;
  readonly uri: string;
}

type Req = AnyRequest;
/** What the upgrade relay reads of a request (node:http's IncomingMessage, or the llhttp core's parse). */
type UpgradeRequest = Pick<IncomingMessage, "method" | "url" | "headers" | "rawHeaders">;
type Res = AnyResponse;

/** A header record's value as permissions read it: repeated lines joined with ", ". */
function joined(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(", ") : v;
}

/** `host:port` of the local app, for logs. */
function appAddress(c: InboundHttpConfig): string {
  const app = c.localApp;
  return app.host.includes(":") ? `[${app.host}]:${app.port}` : `${app.host}:${app.port}`;
}

/** What the local-app pool is built from: a Snapshot that changes none of it keeps the pool and its idle connections. */
function poolKey(c: InboundHttpConfig): string {
  return `${c.localApp.host}:${c.localApp.port}/${c.appHttp2 ? "h2c" : "h1"}/${c.localConnectTimeoutMs}`;
}

export class InboundHttp {
  private readonly h1: Server;
  private readonly h2: Http2Server;
  private readonly callers = new WeakMap<object, Caller>();
  private readonly sessions = new Set<ServerHttp2Session>();
  /** Set around emit("connection"): node creates the HTTP/2 session synchronously inside it. */
  private connecting: Caller | null = null;
  private config: InboundHttpConfig;
  /** The local app's undici pool (node:http and HTTP/2 callers, an h2c app), made on first use. */
  private pool: Dispatcher | null = null;
  private poolFor = "";
  /** `host:port` of the local app, for logs. */
  private app = "";
  private readonly sockets = new Set<Socket>();
  /** The llhttp core for HTTP/1.1 callers of an HTTP/1.1 app, when selected. */
  private readonly core: InboundHttp1 | null;

  constructor(
    config: InboundHttpConfig,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly obs: Observers,
    /** Envoy's `http.public_listener.*` stats of the listener this serves. */
    private readonly hcm: HttpConnManagerStats,
  ) {
    this.config = config;
    this.app = appAddress(config);
    this.h1 = createHttpServer({ keepAliveTimeout: 60_000, headersTimeout: 10_000, requestTimeout: 0, connectionsCheckingInterval: 1_000 }, (req, res) =>
      this.handle(req, res, this.callers.get(req.socket)),
    );
    // node starts tracking connections (headersTimeout, closeIdleConnections) on "listening",
    // which a server fed with emit("connection") never sees: without this, slow headers are
    // never timed out and draining leaves idle keep-alive connections open.
    this.h1.emit("listening");
    this.h2 = createH2Server({}, (req, res) => this.handle(req, res, this.callers.get(req.stream.session ?? {})));
    this.h2.on("session", (session: ServerHttp2Session) => {
      if (this.connecting) this.callers.set(session, this.connecting);
      this.sessions.add(session);
      session.once("close", () => this.sessions.delete(session));
    });
    this.h1.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => this.upgrade(req, socket, head));
    // node types the upgrade/clientError socket as Duplex; on our server it is always the Socket we emitted.
    this.h1.on("clientError", (err: NodeJS.ErrnoException, socket: Socket) => answerClientError(err, socket, this.metrics.configErrors));
    this.core =
      inboundHttp1Engine(log) === "llhttp"
        ? new InboundHttp1(config, metrics, log, obs, hcm, (req, socket, head, caller) => this.upgrade(req, socket, head, caller))
        : null;
  }

  private makePool(config: InboundHttpConfig): Dispatcher {
    const app = config.localApp;
    this.poolFor = poolKey(config);
    const origin = `http://${app.host.includes(":") ? `[${app.host}]` : app.host}:${app.port}`;
    const { H2CClient, Pool } = undici();
    if (config.appHttp2) return new H2CClient(origin, { headersTimeout: 0, bodyTimeout: 0, connectTimeout: config.localConnectTimeoutMs });
    return new Pool(origin, {
      connections: null,
      keepAliveTimeout: 30_000,
      headersTimeout: 0,
      bodyTimeout: 0,
      connectTimeout: config.localConnectTimeoutMs,
    });
  }

  update(config: InboundHttpConfig): void {
    this.config = config;
    this.app = appAddress(config);
    this.core?.update(config);
    if (this.pool !== null && poolKey(config) !== this.poolFor) {
      const old = this.pool;
      this.pool = null;
      old.close().catch(logRejection(this.log, "closing the previous local-app pool", "debug"));
    }
  }

  get activeConnections(): number {
    return this.sockets.size;
  }

  /** Takes a verified, identity-checked TLS connection. */
  accept(s: TLSSocket, authorizer: SourceAuthorizer, uri: string): void {
    this.sockets.add(s);
    s.once("close", () => this.sockets.delete(s));
    const caller = { authorizer, uri };
    this.callers.set(s, caller);
    if (s.alpnProtocol !== "h2" && this.core && !this.config.appHttp2) {
      // The core resumes the socket itself, unless its first bytes already handed it on (an upgrade).
      this.core.accept(s, caller);
      return;
    }
    if (s.alpnProtocol === "h2") {
      this.connecting = caller;
      try {
        this.h2.emit("connection", s);
      } finally {
        this.connecting = null;
      }
    } else {
      this.h1.emit("connection", s);
    }
    s.resume();
  }

  private reply(res: Res, status: number, flag: ResponseFlag, detail?: string, rec?: InboundRecord): void {
    if (rec) {
      rec.status = status;
      rec.flag = flag;
    }
    localReply(res, status, flag, detail);
  }

  private handle(req: Req, res: Res, caller: Caller | undefined): void {
    const rec: InboundRecord = { start: performance.now(), startTime: Date.now(), status: 0, flag: "-" };
    const tracing = this.obs.tracing;
    if (tracing) {
      rec.span = tracing.start("server", `ingress ${req.method ?? "GET"}`, req.headers, {
        "http.request.method": req.method ?? "GET",
        "url.path": req.url ?? "/",
        "network.protocol.version": req.httpVersion,
        ...(caller ? { "meshproxy.source_identity": caller.uri } : {}),
      });
    }
    this.authorizeAndForward(req, res, caller, rec)
      .catch((e: unknown) => {
        const message = e instanceof Error ? e.message : String(e);
        this.log.error("inbound request failed unexpectedly", { error: message });
        this.reply(res, 500, "UF", message, rec);
      })
      .finally(() => this.finish(req, caller, rec));
  }

  private finish(req: Req, caller: Caller | undefined, rec: InboundRecord): void {
    const ms = performance.now() - rec.start;
    this.hcm.response(rec.status, ms);
    // Answered by the app (not a local reply): the local_app cluster's request stats.
    if (rec.status !== 0 && rec.flag === "-") this.metrics.http.response(LOCAL_APP_CLUSTER, rec.status, ms);
    if (rec.status === 0) rec.flag = "DC";
    if (this.obs.tracing && rec.span) this.obs.tracing.end(rec.span, rec.status, { "meshproxy.response_flags": rec.flag });
    if (!this.obs.accessLog.enabled) return;
    this.obs.accessLog.log({
      ...requestFields(req, rec.startTime, rec.start),
      direction: "inbound",
      status: rec.status,
      response_flags: rec.flag,
      upstream_cluster: "local_app",
      upstream_host: this.app,
      ...(caller ? { source_identity: caller.uri } : {}),
      ...(rec.span ? { trace_id: rec.span.span.spanContext().traceId } : {}),
    });
  }

  private async authorizeAndForward(req: Req, res: Res, caller: Caller | undefined, rec: InboundRecord): Promise<void> {
    if (!caller) return this.reply(res, 403, "UAEX", "no verified caller on this connection", rec);
    // The canonical path is both what is authorized and what the app is sent (request-target.ts).
    const target = parseRequestTarget(req.url ?? "/");
    if (!target.ok) {
      this.refused("invalid_request_target", caller, req, refusalDetail(target), target);
      return this.reply(res, 400, "DPE", refusalDetail(target), rec);
    }
    const method = req.method ?? "GET";
    const decision = caller.authorizer.authorize({
      method,
      path: target.path,
      header: (n: string) => {
        // A field the caller's Connection nominates is not sent to the app (endToEndCopy); HTTP/2 has no Connection.
        const connection = joined(req.headers["connection"]);
        // An HTTP/2 request's host for the app is its host field, else :authority (compat.ts requestHeaders);
        // without either (HTTP/1.0, or a Host the Connection nominates) undici sends the app's own address.
        if (isRequestPseudoField(n)) return requestPseudoField(n, method, target.path + target.query, (nominatedAway(connection, "host") ? undefined : joined(req.headers["host"] ?? req.headers[":authority"])) ?? this.app);
        return nominatedAway(connection, n) ? undefined : joined(req.headers[n]);
      },
    });
    if (!decision.allowed) {
      this.metrics.reject("denied_by_intention");
      this.log.info("request denied by intention", { source: caller.uri, method: req.method, path: target.path, reason: decision.reason });
      return this.reply(res, 403, "UAEX", decision.reason, rec);
    }
    await this.forward(req, res, caller, target.path + target.query, rec);
  }

  /** A request refused before authorization: counted, and logged with what was sent. */
  private refused(reason: InboundRejection, caller: Caller | undefined, req: UpgradeRequest | Req, detail: string, target?: RefusedTarget): void {
    this.metrics.reject(reason);
    this.log.info("request refused", { reason, source: caller?.uri, method: req.method, target: (req.url ?? "").slice(0, 256), detail: target?.reason ?? detail });
  }

  private async forward(req: Req, res: Res, caller: Caller, path: string, rec: InboundRecord): Promise<void> {
    const headers = requestHeaders(req);
    // Envoy's forward_client_cert_details as Consul sets it: the app can see who called.
    const xfcc = `By=${this.config.spiffeId};URI=${caller.uri}`;
    const prev = headers["x-forwarded-client-cert"];
    headers["x-forwarded-client-cert"] = prev ? `${Array.isArray(prev) ? prev.join(",") : prev},${xfcc}` : xfcc;
    // The app's spans become children of this hop's server span.
    if (this.obs.tracing && rec.span) this.obs.tracing.inject(rec.span, headers);
    const hasBody = requestHasBody(req);
    if (this.pool === null && !undiciLoaded()) {
      await loadUndici();
      if (res.destroyed) return;
    }
    const pool = (this.pool ??= this.makePool(this.config));
    const timeoutMs = this.config.requestTimeoutMs;
    // The answer streams straight from the app into the caller's response; the app's time to
    // answer is undici's header timer, so a normal request allocates no timer and no signal.
    const result = await new Promise<ForwardResult>((resolve) => {
      const handler = new ResponseForwarder(
        res,
        (status, h) => {
          writeHead(res, status, endToEndCopy(h));
          rec.status = status;
          return true;
        },
        resolve,
      );
      res.once("close", () => {
        if (!res.writableFinished) handler.abort(new Error("the caller closed the connection"));
      });
      pool.dispatch({ method: req.method ?? "GET", path, headers, body: hasBody ? req : null, headersTimeout: timeoutMs > 0 ? timeoutMs : 0 }, handler);
    });
    if (!("error" in result) || result.delivered || res.destroyed) return;
    const timedOut = errorCode(result.error) === "UND_ERR_HEADERS_TIMEOUT";
    this.log.warn("local app request failed", { app: this.app, error: result.error.message, timed_out: timedOut });
    if (timedOut) this.reply(res, 504, "UT", `local app did not answer within ${timeoutMs} ms`, rec);
    else if (isResponseParseError(result.error)) this.reply(res, 502, "UPE", `local app ${this.app}: the response did not parse: ${result.error.message}`, rec);
    else this.reply(res, 503, "UF", `local app ${this.app}: ${result.error.message}`, rec);
  }

  /**
   * Upgrade requests (node:http hands the connection over raw): refused, or authorized like any
   * request and relayed; the connection becomes a pipe only after the app answers 101.
   */
  private upgrade(req: UpgradeRequest, socket: Socket, head: Buffer, from?: Caller): void {
    const caller = from ?? this.callers.get(socket);
    if (!caller) return rawLocalReply(socket, 403, "UAEX", "no verified caller on this connection");
    const target = parseRequestTarget(req.url ?? "/");
    if (!target.ok) {
      this.refused("invalid_request_target", caller, req, refusalDetail(target), target);
      return rawLocalReply(socket, 400, "DPE", refusalDetail(target));
    }
    const kind = classifyUpgrade(req.headers);
    if (kind.kind === "refused") {
      this.refused(kind.reason, caller, req, kind.detail);
      return rawLocalReply(socket, kind.status, "DPE", kind.detail);
    }
    const method = req.method ?? "GET";
    const decision = caller.authorizer.authorize({
      method,
      path: target.path,
      header: (n: string) => {
        // As for any request: a field the Connection nominates is not relayed (upgradeRequestHeaders).
        const connection = joined(req.headers["connection"]);
        if (isRequestPseudoField(n)) return requestPseudoField(n, method, target.path + target.query, nominatedAway(connection, "host") ? undefined : joined(req.headers["host"]));
        return nominatedAway(connection, n) ? undefined : joined(req.headers[n]);
      },
      // The relay sends each line of a repeated field (upgradeRequestHeaders), and the app may
      // read any one of them. Other requests reach the app with Node's joined value, one line.
      lines: (n: string) => (isRequestPseudoField(n) || nominatedAway(joined(req.headers["connection"]), n) ? undefined : fieldLines(req.rawHeaders, n)),
    });
    if (!decision.allowed) {
      this.metrics.reject("denied_by_intention");
      this.log.info("request denied by intention", { source: caller.uri, method: req.method, path: target.path, reason: decision.reason });
      return rawLocalReply(socket, 403, "UAEX", decision.reason);
    }
    const headers = upgradeRequestHeaders(req.rawHeaders, req.headers);
    // Envoy's forward_client_cert_details as Consul sets it, as for every other request.
    const prev = req.headers["x-forwarded-client-cert"];
    const xfcc = `By=${this.config.spiffeId};URI=${caller.uri}`;
    for (let i = headers.length - 2; i >= 0; i -= 2) if (headers[i]!.toLowerCase() === "x-forwarded-client-cert") headers.splice(i, 2);
    headers.push("x-forwarded-client-cert", prev ? `${Array.isArray(prev) ? prev.join(",") : prev},${xfcc}` : xfcc);
    const app = this.config.localApp;
    relayUpgrade({
      client: socket,
      head,
      method: req.method ?? "GET",
      path: target.path + target.query,
      headers,
      decision: kind.kind === "upgrade" ? { kind: "upgrade", protocol: kind.protocol, upgradeValue: req.headers["upgrade"] ?? kind.protocol } : { kind: "plain" },
      connect: { host: app.host, port: app.port },
      responseTimeoutMs: this.config.requestTimeoutMs > 0 ? this.config.requestTimeoutMs : 15_000,
      idleTimeoutMs: this.config.idleTimeoutMs,
      done: (r) => {
        if (r.error !== undefined) this.log.warn("local app upgrade failed", { app: this.app, error: r.error, status: r.status });
      },
    });
  }

  closeIdle(): void {
    this.core?.closeIdle();
    this.h1.closeIdleConnections();
    this.goAway();
  }

  destroyAll(): void {
    for (const s of this.sockets) s.destroy();
  }

  /** Draining: HTTP/2 clients get a GOAWAY and finish their open streams. */
  goAway(): void {
    for (const s of this.sessions) s.close();
  }

  async close(): Promise<void> {
    this.core?.close();
    await this.pool?.close().catch(logRejection(this.log, "closing the local-app pool", "debug"));
  }
}
