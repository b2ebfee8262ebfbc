// The server side of a Connect-native service: the app's own TLS server (node:https, node:tls,
// a framework's) terminates mTLS with the service's leaf, and this gate decides, before the app
// sees anything, who the caller is and whether intentions let it in. The same pieces as the
// sidecar's public listener: chain verified against the mesh roots, the SPIFFE ID read and its
// trust domain pinned (identity/peer.ts), intentions compiled per Snapshot (authz/), L7
// permissions per request against the canonical request target (http/request-target.ts).
import { IncomingMessage, ServerResponse, STATUS_CODES, type IncomingHttpHeaders } from "node:http";
import { Duplex } from "node:stream";
import type { ServerHttp2Stream } from "node:http2";
import { TLSSocket, type Server as TlsServer, type TlsOptions } from "node:tls";
import type { Protocol, Snapshot } from "../config/snapshot.js";
import type { TlsMaterial } from "../tls/contexts.js";
import { CompiledIntentions, hasPermissions, scopeOf } from "../authz/intentions.js";
import { CompiledL7Intentions, isRequestPseudoField, requestPseudoField } from "../authz/l7.js";
import { verifyClient } from "../identity/peer.js";
import type { ServiceId } from "../identity/spiffe.js";
import { parseRequestTarget, refusalDetail } from "../http/request-target.js";
import type { InboundRejection, Metrics } from "../telemetry/metrics.js";
import { randomBytes } from "node:crypto";
import type { Logger } from "../telemetry/log.js";
import { Counter } from "../telemetry/prom.js";
import type { NativeObservers, ObservedRequest } from "./observe.js";
import { everyFieldLine } from "../http1/fields.js";

/** The verified caller of a connection or request. */
export interface Peer extends ServiceId {
  /** `spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>`, as the caller's certificate has it. */
  readonly spiffeId: string;
}

/** What one Snapshot says about inbound traffic, compiled once when it is applied. */
export interface InboundPolicy {
  readonly service: string;
  readonly trustDomain: string;
  /** The service's protocol: http, http2 and grpc services get L7 intentions per request. */
  readonly protocol: Protocol;
  readonly intentions: CompiledIntentions;
  readonly l7: CompiledL7Intentions | null;
}

/** Throws PermissionCompileError / MatchCompileError for intentions that do not compile. */
export function compileInbound(s: Snapshot): InboundPolicy {
  const local = scopeOf(s.identity);
  const protocol = s.publicListener?.protocol ?? "tcp";
  return {
    service: s.identity.service,
    trustDomain: s.trust.trustDomain,
    protocol,
    intentions: new CompiledIntentions(s.intentions, s.identity.service, local),
    l7: protocol === "tcp" ? null : new CompiledL7Intentions(s.intentions, s.identity.service, local),
  };
}

/** TLS server options: the leaf, the mesh roots, a client certificate required (verified by the gate). */
export function serverOptions(tls: TlsMaterial): TlsOptions {
  return {
    ...tls.options,
    // The chain is checked by the gate after the handshake, so each refusal has a precise,
    // counted reason, as on the sidecar's public listener; nothing reaches the app before it.
    requestCert: true,
    rejectUnauthorized: false,
  };
}

/**
 * What a server is given at attach() and at each new leaf or root set: serverOptions with ticket
 * keys of its own. A resumed handshake carries no chain to verify again, so a session must not
 * outlive the material it was verified under. node keeps a server's ticketKeys across
 * setSecureContext when the app built the server with its own (node:cluster workers sharing
 * them), and those resumed a caller's session after its roots were dropped.
 */
function rotatedOptions(tls: TlsMaterial): TlsOptions {
  return { ...serverOptions(tls), ticketKeys: randomBytes(48) };
}

/**
 * Where a connection's verified caller is kept: a symbol property of its TLS socket, because
 * node:http2 hands requests and streams a proxy of the socket (a WeakMap keyed by the socket
 * would not find it there), and the proxy passes property reads through.
 */
const PEER = Symbol("meshproxy.peer");

class VerifiedPeer implements Peer {
  constructor(
    readonly spiffeId: string,
    readonly trustDomain: string,
    readonly partition: string,
    readonly namespace: string,
    readonly datacenter: string,
    readonly service: string,
  ) {}
}

/** The caller verified on this socket (or a node:http2 proxy of it), or null. */
export function verifiedPeer(socket: object | null | undefined): Peer | null {
  if (socket === null || socket === undefined) return null;
  try {
    const p: unknown = Reflect.get(socket, PEER);
    return p instanceof VerifiedPeer ? p : null;
  } catch {
    // node:http2's socket proxy throws once its session has let go of the socket: no caller left.
    return null;
  }
}

export class InboundGate {
  private readonly servers = new Set<TlsServer>();
  private readonly handlerErrors: Counter;

  constructor(
    private policy: InboundPolicy,
    private tls: TlsMaterial,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly obs: NativeObservers,
  ) {
    this.handlerErrors = new Counter({ name: "meshproxy_native_handler_errors_total", help: "Requests whose handler (the app's request listener) threw or rejected; answered 500", registers: [metrics.registry] });
  }

  /** A new Snapshot: new connections and requests see its intentions; a new leaf or root set rotates every server. */
  update(policy: InboundPolicy, tls: TlsMaterial): void {
    this.policy = policy;
    if (tls.key === this.tls.key) return;
    this.tls = tls;
    for (const server of this.servers) server.setSecureContext(rotatedOptions(tls));
    if (this.servers.size > 0) this.log.info("native servers' certificates rotated", { servers: this.servers.size });
  }

  /**
   * Options to construct a server with: everything but the leaf. A server made with them and
   * never attached has no certificate, so no handshake completes and nobody reaches the app
   * unverified; attach() installs the leaf together with the checks.
   */
  get options(): TlsOptions {
    const { cert: _cert, key: _key, ...rest } = serverOptions(this.tls);
    return rest;
  }

  /**
   * Guards a TLS server: every secure connection is verified and authorized before any listener
   * of the server sees it, every HTTP request authorized before the app's handler runs, and the
   * server's certificates follow rotation. The guard sits in the server's emit, so listeners
   * added later (by a framework, after this call) are guarded too.
   */
  attach(server: TlsServer): void {
    if (this.servers.has(server)) return;
    this.servers.add(server);
    server.setSecureContext(rotatedOptions(this.tls));
    server.once("close", () => this.servers.delete(server));
    const emit = server.emit.bind(server);
    server.emit = (event: string | symbol, ...args: unknown[]): boolean => {
      if (event === "secureConnection") {
        const s = args[0];
        if (!(s instanceof TLSSocket) || !this.admit(s)) return false;
      } else if (event === "request" || event === "checkContinue" || event === "checkExpectation") {
        // HTTP/1.1 (a request with `Expect` comes as one of the check events when the app listens
        // for them). HTTP/2 requests were authorized as streams (below) before node made them requests.
        const [req, res] = args;
        if (req instanceof IncomingMessage && res instanceof ServerResponse && !this.authorizeRequest(server, req, res)) return true;
        if (event === "request" && isRequest(req) && isResponse(res)) {
          this.obs.inbound(server, req, res, verifiedPeer(req.socket)?.spiffeId ?? "");
          return this.runHandlers(server, req, res);
        }
      } else if (event === "upgrade" || event === "connect") {
        // The connection is handed to the app raw: authorized like a request, refused on the wire.
        const [req, socket] = args;
        if (req instanceof IncomingMessage && socket instanceof Duplex && !this.authorizeRaw(req, socket)) return true;
      } else if (event === "stream") {
        const [stream, headers, , rawHeaders] = args;
        if (isServerStream(stream) && isHeaders(headers) && !this.authorizeStream(stream, headers, isStringList(rawHeaders) ? rawHeaders : undefined)) return true;
      }
      return emit(event, ...args);
    };
  }

  /**
   * The app's request listeners, each run as node's EventEmitter would, but a throw or a rejected
   * promise is not lost: logged with the request, counted, and the caller answered 500 (or its
   * response reset when the head already went out), as node:http does for a rejection with
   * captureRejections. The process and the server's other requests carry on.
   */
  private runHandlers(server: TlsServer, req: AppRequest, res: AppResponse): boolean {
    const listeners = server.rawListeners("request");
    for (const l of listeners) {
      try {
        const r: unknown = Reflect.apply(l, server, [req, res]);
        if (isThenable(r)) r.then(undefined, (e: unknown) => this.handlerFailed(req, res, e));
      } catch (e) {
        this.handlerFailed(req, res, e);
      }
    }
    return listeners.length > 0;
  }

  private handlerFailed(req: AppRequest, res: AppResponse, e: unknown): void {
    this.handlerErrors.inc();
    const err = e instanceof Error ? e : new Error(String(e));
    this.log.error("request handler failed; answered 500", {
      method: req.method ?? "",
      path: req.url ?? "",
      source: verifiedPeer(req.socket)?.spiffeId ?? "",
      error: err.message,
      stack: err.stack ?? "",
    });
    if (res.headersSent || res.writableEnded) {
      res.destroy(err);
      return;
    }
    // Nothing the handler set may leak into the error answer.
    for (const name of res.getHeaderNames()) res.removeHeader(name);
    res.statusCode = 500;
    res.setHeader("content-type", "text/plain; charset=utf-8");
    res.end("Internal Server Error\n");
  }

  private refuse(s: TLSSocket, reason: InboundRejection, detail: string, fields: Record<string, string> = {}): false {
    this.metrics.reject(reason);
    this.log.warn("inbound connection refused", { peer: `${s.remoteAddress}:${s.remotePort}`, reason, detail, ...fields });
    s.destroy();
    return false;
  }

  /** Connection time: the chain, the SPIFFE ID, then L4 intentions. */
  private admit(s: TLSSocket): boolean {
    const policy = this.policy;
    const id = verifyClient(s, policy.trustDomain);
    if (!id.ok) return this.refuse(s, id.reason, id.detail);
    const decision = policy.intentions.authorize(id.id);
    // An L7 intention on an http service decides per request; anything else decides here.
    const perRequest = policy.l7 !== null && decision.intention !== null && hasPermissions(decision.intention);
    if (!decision.allowed && !perRequest) return this.refuse(s, "denied_by_intention", decision.reason, { source: id.uri, destination: policy.service });
    const { trustDomain, partition, namespace, datacenter, service } = id.id;
    Object.defineProperty(s, PEER, { value: new VerifiedPeer(id.uri, trustDomain, partition, namespace, datacenter, service) });
    return true;
  }

  /**
   * Request time (http services): the canonical target is what is authorized and what the app
   * is handed (req.url rewritten), as the sidecar does; the intentions are those in force now,
   * so a revoked permission stops applying to keep-alive connections too.
   */
  private authorizeRequest(server: TlsServer, req: IncomingMessage, res: Reply): boolean {
    const peer = verifiedPeer(req.socket);
    const verdict = this.check(peer, req.method ?? "GET", req.url ?? "/", req.headers, req.rawHeaders);
    if (typeof verdict !== "string") {
      this.obs.refused(server, req, verdict.status, peer?.spiffeId ?? null);
      return reply(res, verdict.status, verdict.body);
    }
    req.url = verdict;
    return true;
  }

  private authorizeRaw(req: IncomingMessage, socket: Duplex): boolean {
    const verdict = this.check(verifiedPeer(req.socket), req.method ?? "GET", req.url ?? "/", req.headers, req.rawHeaders);
    if (typeof verdict === "string") {
      req.url = verdict;
      return true;
    }
    const body = `${verdict.body}\n`;
    socket.end(`HTTP/1.1 ${verdict.status} ${STATUS_CODES[verdict.status] ?? ""}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
    return false;
  }

  /** An HTTP/2 stream (node's compat requests are made from these, so both APIs are covered). */
  private authorizeStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, rawHeaders: readonly string[] | undefined): boolean {
    const method = headers[":method"];
    const path = headers[":path"];
    const verdict = this.check(verifiedPeer(stream.session?.socket), typeof method === "string" ? method : "GET", typeof path === "string" ? path : "/", headers, rawHeaders, true);
    if (typeof verdict === "string") {
      headers[":path"] = verdict;
      return true;
    }
    stream.respond({ ":status": verdict.status, "content-type": "text/plain; charset=utf-8" });
    stream.end(`${verdict.body}\n`);
    return false;
  }

  /**
   * A gRPC call, decided with the intentions in force now. A caller no L7 intention governs gets
   * the L4 decision again, so a revoked intention stops the next call on a long-lived channel,
   * not only new connections. Otherwise the L7 permissions are checked on the method path, as
   * POST: grpc-js runs the same handler whatever `:method` says, so the call is authorized as the
   * one the handler will run. Null when allowed, else the reason (counted and logged).
   */
  authorizeCall(peer: Peer, call: CallView): string | null {
    const policy = this.policy;
    const decision = policy.intentions.authorize(peer);
    let reason: string | null;
    if (policy.l7 === null || decision.intention === null || !hasPermissions(decision.intention)) {
      reason = decision.allowed ? null : decision.reason;
    } else {
      const target = parseRequestTarget(call.path);
      // grpc-js dispatches on the exact path: one the sidecar would rewrite is not what it checked.
      if (!target.ok || target.path !== call.path || target.query !== "") {
        this.metrics.reject("invalid_request_target");
        this.log.info("grpc call refused", { source: peer.spiffeId, path: call.path, reason: "method path not in canonical form" });
        return `method path ${JSON.stringify(call.path.slice(0, 256))} is not in canonical form`;
      }
      const d = policy.l7.forSource(peer).authorize({ method: "POST", path: call.path, header: (n: string) => call.header(n) });
      reason = call.unreadable !== null ? `an intention's permission matches on ${call.unreadable}, which grpc-js consumes before the call reaches the service: not decidable per call` : d.allowed ? null : d.reason;
    }
    if (reason === null) return null;
    this.metrics.reject("denied_by_intention");
    this.log.info("grpc call denied by intention", { source: peer.spiffeId, path: call.path, reason });
    return reason;
  }

  /**
   * The canonical target to hand the app, or the refusal to answer. `rawHeaders`: the app can
   * read a repeated field's lines one by one (rawHeaders, headersDistinct) as well as joined
   * (headers), so permissions judge each reading (l7.ts), and every line of it: nothing here drops
   * the later lines of the fields node:http keeps the first line of (Authorization, User-Agent,
   * Host, …), as the sidecar does before its app, so the app can read those lines too (see
   * readings). Over HTTP/2 (`h2`) a cookie may come as crumbs, which RFC 9113 §8.2.3 has joined
   * into one before anyone acts on them: judged joined.
   */
  private check(peer: Peer | null, method: string, url: string, headers: IncomingHttpHeaders, rawHeaders?: readonly string[], h2 = false): string | { status: number; body: string } {
    if (!peer) return { status: 403, body: "no verified caller on this connection" };
    const l7 = this.policy.l7;
    if (l7 === null) return url;
    const target = parseRequestTarget(url);
    if (!target.ok) {
      this.metrics.reject("invalid_request_target");
      return { status: 400, body: refusalDetail(target) };
    }
    const joined = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v.join(", ") : v);
    const decision = l7.forSource(peer).authorize({
      method,
      path: target.path,
      // As the sidecar reads them: an HTTP/2 caller's host is its host field, else :authority
      // (node's compat request reports either as its authority), so sending only :authority does
      // not pass a rule on host, nor a target that normalizes into a denied :path.
      header: (n: string) => (isRequestPseudoField(n) ? requestPseudoField(n, method, target.path + target.query, joined(headers["host"] ?? headers[":authority"])) : joined(headers[n])),
      ...(rawHeaders ? { lines: (n: string) => readings(rawHeaders, n, h2), joinedReading: true } : {}),
    });
    if (!decision.allowed) {
      this.metrics.reject("denied_by_intention");
      this.log.info("request denied by intention", { source: peer.spiffeId, method, path: target.path, reason: decision.reason });
      return { status: 403, body: decision.reason };
    }
    return target.path + target.query;
  }
}

/** What the handler-failure path needs of a request (node:http's, or node:http2's compat one). */
interface AppRequest extends ObservedRequest {
  readonly socket: object | null;
}

/** What it needs of the response: ServerResponse and Http2ServerResponse both have it. */
interface AppResponse {
  readonly headersSent: boolean;
  readonly writableFinished: boolean;
  once(event: "close", listener: () => void): unknown;
  readonly writableEnded: boolean;
  statusCode: number;
  getHeaderNames(): string[];
  removeHeader(name: string): void;
  setHeader(name: string, value: string): unknown;
  end(body: string): unknown;
  destroy(err?: Error): unknown;
}

function isRequest(x: unknown): x is AppRequest {
  return typeof x === "object" && x !== null && "socket" in x && "method" in x && "headers" in x && "httpVersion" in x;
}

function isResponse(x: unknown): x is AppResponse {
  return typeof x === "object" && x !== null && "headersSent" in x && "getHeaderNames" in x && "destroy" in x;
}

function isThenable(x: unknown): x is PromiseLike<unknown> {
  return typeof x === "object" && x !== null && "then" in x && typeof x.then === "function";
}

/**
 * One gRPC call as the native gRPC server sees it (grpc-server.ts): the method path grpc-js
 * dispatches on and the metadata the handler receives.
 */
export interface CallView {
  readonly path: string;
  header(name: string): string | undefined;
  /** Set when a permission read a header the handler never sees: the decision cannot be trusted. */
  readonly unreadable: string | null;
}

/** node:http2 does not export its stream classes: a server stream is what can respond. */
function isServerStream(x: unknown): x is ServerHttp2Stream {
  return typeof x === "object" && x !== null && "respond" in x && typeof x.respond === "function" && "session" in x;
}

function isHeaders(h: unknown): h is IncomingHttpHeaders {
  return typeof h === "object" && h !== null;
}

/** What a refusal needs of a response (node's ServerResponse, whatever its request type). */
interface Reply {
  writeHead(status: number, headers: Record<string, string | number>): unknown;
  end(body: string): unknown;
}

function reply(res: Reply, status: number, body: string): false {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(body) + 1 });
  res.end(`${body}\n`);
  return false;
}

/**
 * The readings of field `name` (lower case) an app handed the parsed request can make beyond
 * what the gate's `header` gives, when there are two or more; undefined otherwise (no allocation
 * then). Every line, FIRST_LINE_ONLY's fields included: `req.headers` has their first line only,
 * but `rawHeaders` and `headersDistinct` every one. `host` and `:authority` are one authority:
 * each Host line, and over HTTP/2 the `:authority` too (node's compat `req.authority` prefers it,
 * `req.headers.host` is the host field). Other pseudo-headers have one value (the method, the
 * canonical target), and an HTTP/2 cookie's crumbs are one cookie.
 */
function readings(raw: readonly string[], name: string, h2: boolean): string[] | undefined {
  if (name === "host" || name === ":authority") return h2 ? everyFieldLine(raw, "host", ":authority") : everyFieldLine(raw, "host");
  if (isRequestPseudoField(name) || (h2 && name === "cookie")) return undefined;
  return everyFieldLine(raw, name);
}

/** node's `stream` event's rawHeaders (flat name, value, …), when it gives them. */
function isStringList(v: unknown): v is readonly string[] {
  return Array.isArray(v) && v.every((x) => typeof x === "string");
}
