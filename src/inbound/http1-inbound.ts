// The inbound HTTP/1.1 path on the llhttp core (src/http1/): public listener → per-request
// intention check → local app, with no IncomingMessage, ServerResponse or undici request per
// request. The request head the app receives is rebuilt from the parsed fields with the same
// rules the authorization read them by (http1/fields.ts), so what was authorized is what the app
// acts on. HTTP/2 callers, h2c apps and upgrades stay on the node:http path (http-inbound.ts).
import type { Socket } from "node:net";
import { Http1Server, type ClientFailure, type Exchange } from "../http1/server.js";
import { OriginPool, ResponseParseError, ResponseTimeoutError, type OriginRequest } from "../http1/client.js";
import { fieldLines, fieldRecord, fieldValue } from "../http1/fields.js";
import { appRequestHead, clientResponseFields } from "../http1/forward.js";
import { FLAGS_HEADER, localReplyText, type ResponseFlag } from "../http/local-reply.js";
import { parseRequestTarget, refusalDetail } from "../http/request-target.js";
import { isRequestPseudoField, nominatedAway, requestPseudoField, type L7Request, type SourceAuthorizer } from "../authz/l7.js";
import type { Logger } from "../telemetry/log.js";
import type { InboundRejection, Metrics } from "../telemetry/metrics.js";
import type { HttpConnManagerStats } from "../telemetry/filter-stats.js";
import { LOCAL_APP_CLUSTER } from "../telemetry/consul-tags.js";
import type { RequestSpan } from "../telemetry/tracing.js";
import type { Observers } from "../telemetry/observers.js";
import { requestFields } from "../telemetry/access-log.js";
import type { InboundHttpConfig } from "./http-inbound.js";

export interface Http1Caller {
  readonly authorizer: SourceAuthorizer;
  readonly uri: string;
}

/** Hands an upgrade request and its socket to the node:http path's relay. */
export type UpgradeHandOver = (req: { method: string; url: string; headers: ReturnType<typeof fieldRecord>; rawHeaders: string[] }, socket: Socket, head: Buffer, caller: Http1Caller) => void;

/** One request's record, for metrics, the access log and the span. */
class InboundRequest {
  readonly start = performance.now();
  readonly startTime = Date.now();
  status = 0;
  flag = "-";
  span: RequestSpan | undefined;
  upstream: OriginRequest | null = null;
  /** Metrics, span and access log were written (once, whichever of answer or abort comes first). */
  recorded = false;
  constructor(readonly ex: Exchange<Http1Caller>) {}
}

/**
 * A request's fields as the app is sent them (forward.ts), for the permissions: one object per
 * request, its methods on the prototype, and nothing read until a permission asks. The first
 * Host line is the one the app gets; a field the caller's Connection nominates is not sent at all;
 * every line of another repeated field is, and the app may read any one of them.
 */
class AppFieldView implements L7Request {
  /** The caller's Connection value ("" when absent), read at the first permission on a header. */
  private connection: string | undefined;

  constructor(
    readonly method: string,
    readonly path: string,
    private readonly query: string,
    private readonly raw: readonly string[],
    /** The app's own `host:port`: the Host the app is sent when the caller's is absent or nominated away (appRequestHead's fallback). */
    private readonly fallbackHost: string,
  ) {}

  header(n: string): string | undefined {
    if (isRequestPseudoField(n)) return requestPseudoField(n, this.method, this.path + this.query, (this.sentAway("host") ? undefined : fieldValue(this.raw, "host")) ?? this.fallbackHost);
    return this.sentAway(n) ? undefined : fieldValue(this.raw, n);
  }

  lines(n: string): readonly string[] | undefined {
    return isRequestPseudoField(n) || this.sentAway(n) ? undefined : fieldLines(this.raw, n);
  }

  /** The caller's Connection nominates `n`: the app is not sent it. */
  private sentAway(n: string): boolean {
    return nominatedAway((this.connection ??= fieldValue(this.raw, "connection") ?? ""), n);
  }
}

function poolKey(c: InboundHttpConfig): string {
  return `${c.localApp.host}:${c.localApp.port}/${c.localConnectTimeoutMs}`;
}

export class InboundHttp1 {
  private readonly server: Http1Server<Http1Caller>;
  private config: InboundHttpConfig;
  private pool: OriginPool;
  private poolFor: string;
  private app = "";
  private hostFallback = "";

  constructor(
    config: InboundHttpConfig,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly obs: Observers,
    private readonly hcm: HttpConnManagerStats,
    private readonly handOver: UpgradeHandOver,
  ) {
    this.config = config;
    this.poolFor = poolKey(config);
    this.pool = this.makePool(config);
    this.server = new Http1Server({
      request: (ex) => this.handle(ex),
      upgrade: (ex, socket, head) => this.handOver({ method: ex.method, url: ex.url, headers: fieldRecord(ex.rawHeaders), rawHeaders: ex.rawHeaders }, socket, head, ex.context),
      clientError: (f, caller) => this.clientError(f, caller),
    });
  }

  private makePool(c: InboundHttpConfig): OriginPool {
    const a = c.localApp;
    this.app = a.host.includes(":") ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
    this.hostFallback = `host: ${this.app}\r\n`;
    return new OriginPool({ host: a.host, port: a.port, connectTimeoutMs: c.localConnectTimeoutMs, keepAliveTimeoutMs: 30_000 });
  }

  update(config: InboundHttpConfig): void {
    this.config = config;
    const key = poolKey(config);
    if (key !== this.poolFor) {
      const old = this.pool;
      this.poolFor = key;
      this.pool = this.makePool(config);
      old.close();
    }
  }

  accept(s: Socket, caller: Http1Caller): void {
    this.server.accept(s, caller);
  }

  private clientError(f: ClientFailure, caller: Http1Caller): void {
    // The same counter node:http's clientError fed (http/client-error.ts).
    this.metrics.configErrors.labels("http_parse").inc();
    if (this.log.enabled("debug")) this.log.debug("request refused by the HTTP/1 parser", { source: caller.uri, status: f.status, code: f.code, reason: f.reason });
  }

  private handle(ex: Exchange<Http1Caller>): void {
    const r = new InboundRequest(ex);
    const caller = ex.context;
    const tracing = this.obs.tracing;
    if (tracing) {
      r.span = tracing.start("server", `ingress ${ex.method}`, fieldRecord(ex.rawHeaders), {
        "http.request.method": ex.method,
        "url.path": ex.url,
        "network.protocol.version": ex.httpVersion,
        "meshproxy.source_identity": caller.uri,
      });
    }
    ex.onAbort = () => {
      r.upstream?.abort();
      this.finish(r);
    };
    try {
      this.authorizeAndForward(r, caller);
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      this.log.error("inbound request failed unexpectedly", { error: message });
      this.reply(r, 500, "UF", message);
    }
  }

  private authorizeAndForward(r: InboundRequest, caller: Http1Caller): void {
    const ex = r.ex;
    // The canonical path is both what is authorized and what the app is sent (request-target.ts).
    const target = parseRequestTarget(ex.url);
    if (!target.ok) {
      this.refused("invalid_request_target", caller, ex, target.reason);
      return this.reply(r, 400, "DPE", refusalDetail(target));
    }
    const raw = ex.rawHeaders;
    const decision = caller.authorizer.authorize(new AppFieldView(ex.method, target.path, target.query, raw, this.app));
    if (!decision.allowed) {
      this.metrics.reject("denied_by_intention");
      this.log.info("request denied by intention", { source: caller.uri, method: ex.method, path: target.path, reason: decision.reason });
      return this.reply(r, 403, "UAEX", decision.reason);
    }
    const expect = fieldValue(raw, "expect");
    if (expect !== undefined) {
      // node:http's rule: 100-continue is answered by the sidecar (after authorization here), anything else is 417.
      if (expect.toLowerCase() !== "100-continue") return this.reply(r, 417, "DPE", `Expect: ${expect} is not supported`);
      if (ex.versionMinor === 1 && !ex.bodyDone) ex.writeContinue();
    }
    this.forward(r, caller, target.path + target.query);
  }

  private forward(r: InboundRequest, caller: Http1Caller, path: string): void {
    const ex = r.ex;
    // The trace context this hop injects replaces the caller's (its span is the app's parent).
    let injected: Record<string, string> | null = null;
    if (this.obs.tracing && r.span) {
      injected = {};
      this.obs.tracing.inject(r.span, injected);
    }
    // Envoy's forward_client_cert_details as Consul sets it: the app can see who called.
    const xfcc = `By=${this.config.spiffeId};URI=${caller.uri}`;
    const { head, chunked } = appRequestHead(ex.method, path, ex.rawHeaders, xfcc, this.hostFallback, injected);
    const timeoutMs = this.config.requestTimeoutMs;
    const isHead = ex.method === "HEAD";
    let noBody = false;
    const up = this.pool.request(head, isHead, ex.hasBody, chunked, timeoutMs, {
      head: (status, text, rawHeaders) => {
        r.status = status;
        noBody = isHead || status === 204 || status === 304;
        const { fields, length } = clientResponseFields(rawHeaders, noBody);
        ex.writeHead(status, text, fields, length, noBody);
      },
      body: (chunk) => {
        if (!ex.write(chunk)) {
          // The client is slower than the app: stop reading the app until the client drains.
          up.pauseResponse();
          ex.onDrain(() => up.resumeResponse());
        }
      },
      end: () => {
        ex.end();
        this.finish(r);
      },
      error: (e, answered) => {
        // A head still held (the app's answer failed in the read that carried it) is taken back:
        // the client gets the local reply below, not a cut-off answer.
        if ((answered || ex.headersSent) && !ex.retractHead()) {
          ex.destroy();
          this.finish(r);
          return;
        }
        const timedOut = e instanceof ResponseTimeoutError;
        this.log.warn("local app request failed", { app: this.app, error: e.message, timed_out: timedOut });
        if (timedOut) this.reply(r, 504, "UT", `local app did not answer within ${timeoutMs} ms`);
        else if (e instanceof ResponseParseError) this.reply(r, 502, "UPE", `local app ${this.app}: ${e.message}`);
        else this.reply(r, 503, "UF", `local app ${this.app}: ${e.message}`);
      },
    });
    r.upstream = up;
    if (ex.hasBody) {
      ex.setBodySink({
        data: (chunk) => {
          if (!up.write(chunk)) {
            ex.pauseBody();
            up.onDrain(() => ex.resumeBody());
          }
        },
        end: () => up.end(),
      });
    }
  }

  private reply(r: InboundRequest, status: number, flag: ResponseFlag, detail: string): void {
    r.status = status;
    r.flag = flag;
    const ex = r.ex;
    if (ex.headersSent) {
      ex.destroy();
    } else {
      const body = `${localReplyText(flag, detail)}\n`;
      ex.writeHead(status, "", `content-type: text/plain; charset=utf-8\r\n${FLAGS_HEADER}: ${flag}\r\n`, Buffer.byteLength(body), false);
      ex.end(body);
    }
    this.finish(r);
  }

  private refused(reason: InboundRejection, caller: Http1Caller, ex: Exchange<Http1Caller>, detail: string): void {
    this.metrics.reject(reason);
    this.log.info("request refused", { reason, source: caller.uri, method: ex.method, target: ex.url.slice(0, 256), detail });
  }

  private finish(r: InboundRequest): void {
    if (r.recorded) return;
    r.recorded = true;
    const ms = performance.now() - r.start;
    this.hcm.response(r.status, ms);
    if (r.status !== 0 && r.flag === "-") this.metrics.http.response(LOCAL_APP_CLUSTER, r.status, ms);
    if (r.status === 0 || (r.ex.aborted && r.flag === "-" && !r.ex.finished)) r.flag = "DC";
    if (this.obs.tracing && r.span) this.obs.tracing.end(r.span, r.status, { "meshproxy.response_flags": r.flag });
    if (!this.obs.accessLog.enabled) return;
    const ex = r.ex;
    const ua = fieldValue(ex.rawHeaders, "user-agent");
    const rid = fieldValue(ex.rawHeaders, "x-request-id");
    this.obs.accessLog.log({
      ...requestFields({ method: ex.method, url: ex.url, httpVersion: ex.httpVersion, headers: { "user-agent": ua, "x-request-id": rid } }, r.startTime, r.start),
      direction: "inbound",
      status: r.status,
      response_flags: r.flag,
      upstream_cluster: "local_app",
      upstream_host: this.app,
      source_identity: ex.context.uri,
      ...(r.span ? { trace_id: r.span.span.spanContext().traceId } : {}),
    });
  }

  closeIdle(): void {
    this.server.closeIdle();
  }

  destroyAll(): void {
    this.server.destroyAll();
  }

  close(): void {
    this.pool.close();
  }
}
