// Outbound HTTP, the logical stage: a request from the local app is matched to a route, a split
// leg is drawn, the cluster picks a host (concrete.ts), and the request goes over a pooled mTLS
// connection (endpoint.ts); the answer streams
// straight back into the app's response. Retries go to a host not tried yet, then to failover
// clusters, then to a tried host, within the retry budget; the route timeout covers every
// attempt up to the response headers, the route's idle timeout every silence after them.
import type { IncomingHttpHeaders } from "node:http";
import type { Counter } from "prom-client";
import type { Route } from "../config/http.js";
import { LazyRequestView, rewritePath, type CompiledRoutes, type RequestView } from "../http/route-match.js";
import type { CompiledRoute, CompiledRouteTable } from "../compile/routes.js";
import { parseRequestTarget, refusalDetail, type RequestTarget } from "../http/request-target.js";
import { applyHeaderMutation, endToEndCopy, type HeaderRecord } from "../http/headers.js";
import type { AttemptOutcome } from "../http/retry.js";
import { localReply, FLAGS_HEADER, type ResponseFlag } from "../http/local-reply.js";
import { Cancel, requestHasBody, requestHeaders, writeHead, type AnyRequest, type AnyResponse, type ResponseSink } from "../http/compat.js";
import type { ClusterHost, ClusterRuntime } from "../cluster/runtime.js";
import { requestHash } from "../cluster/balancer.js";
import { clusterWithHosts } from "./concrete.js";
import { dispatchAttempt, type AttemptBody, type AttemptSender } from "./endpoint.js";
import type { Logger } from "../telemetry/log.js";
import type { RequestRefusal } from "../telemetry/metrics.js";
import type { HttpConnManagerStats } from "../telemetry/filter-stats.js";
import type { HttpStats } from "../telemetry/http-stats.js";
import type { RequestSpan } from "../telemetry/tracing.js";
import type { Observers } from "../telemetry/observers.js";
import { requestFields } from "../telemetry/access-log.js";
import { ParsedFields } from "../http1/fields.js";

/** Bodies up to this size are buffered so that a retry can send them again. */
export const RETRY_BUFFER_LIMIT = 64 * 1024;

/** What one Snapshot says about an HTTP upstream: its compiled routes and the live clusters they name. */
export class OutboundHttpState {
  private readonly matcher: CompiledRoutes;
  private readonly routes: readonly CompiledRoute[];

  constructor(
    readonly upstream: string,
    table: CompiledRouteTable,
    readonly clusters: ReadonlyMap<string, ClusterRuntime>,
  ) {
    this.matcher = table.matcher;
    this.routes = table.routes;
  }

  /** The first route that matches, with everything compiled for it; null when none does. */
  match(req: RequestView): CompiledRoute | null {
    const i = this.matcher.matchIndex(req);
    return i < 0 ? null : (this.routes[i] ?? null);
  }
}

/** The request as routes see it: the canonical path (request-target.ts), the same one the destination authorizes. */
function view(req: AnyRequest, target: RequestTarget): LazyRequestView {
  return new LazyRequestView(req.method ?? "GET", target.path, target.query, (name) => {
    const v = req.headers[name];
    return Array.isArray(v) ? v.join(",") : v;
  });
}

function cookie(req: AnyRequest, name: string): string | undefined {
  const c = req.headers.cookie;
  if (!c) return undefined;
  for (const part of c.split(";")) {
    const i = part.indexOf("=");
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}

/** The split leg `rand` (in [0, 1)) draws: one draw per request, by the legs' weights. */
export function pickLeg(c: CompiledRoute, rand: number): number {
  const cum = c.cumulative;
  const total = cum[cum.length - 1] ?? 0;
  const x = rand * total;
  for (let i = 0; i < cum.length; i++) if (x < cum[i]!) return i;
  return cum.length - 1;
}

async function readBody(req: AnyRequest, limit: number): Promise<Buffer | null> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    const b = Buffer.isBuffer(c) ? c : Buffer.from(String(c));
    n += b.length;
    if (n > limit) return null;
    chunks.push(b);
  }
  return Buffer.concat(chunks);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

type Split = Route["action"]["splits"][number];

/** The route's and the leg's request header mutations, in Envoy's order (route, then weighted cluster). */
export function mutateRequestHeaders(c: CompiledRoute, leg: Split, headers: HeaderRecord): void {
  if (!c.hasReqMutations) return;
  applyHeaderMutation(headers, c.route.action.requestHeaders);
  applyHeaderMutation(headers, leg.requestHeaders);
}

/** The path the upstream gets: the canonical one, with the route's prefix rewrite, and the query as sent. */
export function upstreamPath(c: CompiledRoute, canonicalPath: string, query: string): string {
  return (c.route.action.prefixRewrite !== undefined ? rewritePath(c.route, canonicalPath) : canonicalPath) + query;
}

/**
 * One routed request, ready for the attempts: what a sidecar's node:http request or a native
 * client's undici dispatch becomes once its route and split leg are chosen and its headers are
 * mutated. Everything from here on (breakers, retries, timeouts, response header mutations) is
 * the same code for both.
 */
export interface Exchange {
  readonly state: OutboundHttpState;
  readonly route: CompiledRoute;
  readonly leg: Split;
  readonly primary: ClusterRuntime;
  readonly method: string;
  readonly path: string;
  readonly headers: HeaderRecord;
  readonly body: AttemptBody;
  /** False for a body that streams (too large or of unknown length to buffer): it cannot be sent twice. */
  readonly canRetry: boolean;
  readonly hash: number | undefined;
  readonly res: ResponseSink;
  /** Cancelled when the caller went away; the attempt in flight is aborted. */
  readonly clientGone: Cancel;
  /** How each attempt is sent (the HTTP/1 core's client, which holds its own body); undici's pools with `body` when absent. */
  readonly send?: AttemptSender;
}

/** What the access log reads of a request. */
export type RequestInfo = Parameters<typeof requestFields>[0];

/** What one request did, for the access log and its span; filled in as the request goes. */
export interface RequestRecord {
  readonly start: number;
  readonly startTime: number;
  status: number;
  flag: string;
  cluster?: string;
  host?: string;
  attempts: number;
  span?: RequestSpan;
}

export class HttpRouter {
  constructor(
    private readonly log: Logger,
    private readonly stats: HttpStats,
    private readonly obs: Observers,
    /** Counts requests refused before routing (meshproxy_outbound_rejected_total). */
    private readonly refusals: Counter<"reason">,
  ) {}

  /** A request refused before routing: counted and logged at info (the app sent it). */
  refused(reason: RequestRefusal, upstream: string, method: string | undefined, target: string | undefined, detail: string): void {
    this.refusals.labels(reason).inc();
    this.log.info("request refused", { reason, upstream, method, target: (target ?? "").slice(0, 256), detail });
  }

  /** `listener`: the upstream listener's connection-manager stats (Envoy's `http.upstream.*`). */
  handle(req: AnyRequest, res: AnyResponse, state: OutboundHttpState, listener?: HttpConnManagerStats): void {
    const rec: RequestRecord = { start: performance.now(), startTime: Date.now(), status: 0, flag: "-", attempts: 0 };
    this.route(req, res, state, rec)
      .catch((e: unknown) => {
        const message = e instanceof Error ? e.message : String(e);
        this.log.error("request failed unexpectedly", { upstream: state.upstream, error: message });
        rec.status = 500;
        rec.flag = "UF";
        localReply(res, 500, "UF", message);
      })
      .finally(() => {
        listener?.response(rec.status, performance.now() - rec.start);
        this.finish(req, state, rec);
      });
  }

  /** The request is over (answered, or the caller went away): span, access log and the failure count. */
  finish(req: RequestInfo, state: OutboundHttpState, rec: RequestRecord): void {
    if (rec.status === 0) rec.flag = "DC"; // the app went away before an answer
    // A connection failure or an answer that did not parse, answered locally, has no response
    // series; the traffic page counts it as an error of the cluster.
    if (rec.cluster !== undefined && (rec.flag === "UF" || rec.flag === "UPE")) this.stats.failed(rec.cluster, rec.flag === "UPE" ? 502 : 503);
    const tracing = this.obs.tracing;
    if (tracing && rec.span) {
      tracing.end(rec.span, rec.status, { "meshproxy.response_flags": rec.flag, "meshproxy.attempts": rec.attempts, ...(rec.cluster ? { "meshproxy.upstream_cluster": rec.cluster } : {}) });
    }
    if (!this.obs.accessLog.enabled) return;
    this.obs.accessLog.log({
      ...requestFields(req, rec.startTime, rec.start),
      direction: "outbound",
      status: rec.status,
      response_flags: rec.flag,
      upstream_cluster: rec.cluster ?? state.upstream,
      ...(rec.host ? { upstream_host: rec.host } : {}),
      attempts: rec.attempts,
      ...(rec.span ? { trace_id: rec.span.span.spanContext().traceId } : {}),
    });
  }

  private async route(req: AnyRequest, res: AnyResponse, state: OutboundHttpState, rec: RequestRecord): Promise<void> {
    const target = parseRequestTarget(req.url ?? "/");
    if (!target.ok) {
      this.refused("invalid_request_target", state.upstream, req.method, req.url, target.reason);
      rec.status = 400;
      rec.flag = "DPE";
      return localReply(res, 400, "DPE", refusalDetail(target));
    }
    const v = view(req, target);
    const c = state.match(v);
    if (!c) return this.reply(res, 404, "NR", state.upstream, undefined, rec);
    const legIndex = pickLeg(c, Math.random());
    const leg = c.route.action.splits[legIndex]!;
    const primary = state.clusters.get(leg.cluster);
    if (!primary) return this.reply(res, 503, "UH", state.upstream, `cluster "${leg.cluster}" is not configured`, rec);

    // Request headers for the upstream: hop-by-hop and the app's x-forwarded-client-cert stripped, mutations applied.
    const headers = requestHeaders(req, true);
    mutateRequestHeaders(c, leg, headers);
    const tracing = this.obs.tracing;
    if (tracing) {
      rec.span = tracing.start("client", `egress ${state.upstream}`, headers, {
        "http.request.method": req.method ?? "GET",
        "url.path": v.path,
        "network.protocol.version": req.httpVersion,
        "peer.service": primary.config.service,
        "meshproxy.upstream": state.upstream,
      });
      tracing.inject(rec.span, headers);
    }
    // The canonical target goes on: the destination's sidecar then authorizes exactly what was routed.
    const path = upstreamPath(c, v.path, target.query);

    // A body is buffered when small enough to send again; a larger one streams and is not retried.
    const hasBody = requestHasBody(req);
    let body: Buffer | AnyRequest | null = null;
    let canRetry = true;
    if (hasBody) {
      const len = Number(req.headers["content-length"] ?? Infinity);
      if (len <= RETRY_BUFFER_LIMIT) {
        body = await readBody(req, RETRY_BUFFER_LIMIT);
        if (body === null) return this.reply(res, 413, "UF", state.upstream, "body larger than its content-length", rec);
      } else {
        body = req;
        canRetry = false;
      }
    }

    const hashPolicies = primary.config.lb.hashPolicies;
    const hash =
      hashPolicies.length > 0
        ? requestHash(hashPolicies, { header: (n) => v.header(n), cookie: (n) => cookie(req, n), query: (n) => v.query?.get(n) ?? undefined, sourceIp: req.socket.remoteAddress ?? "" })
        : undefined;
    const clientGone = new Cancel();
    res.once("close", () => {
      if (!res.writableFinished) clientGone.cancel();
    });
    return this.forward({ state, route: c, leg, primary, method: req.method ?? "GET", path, headers, body, canRetry, hash, res, clientGone }, rec);
  }

  /**
   * The attempts of one routed request: the request breaker, hosts from the concrete stage, each
   * attempt on the endpoint stage, retries by the route's policy within the retry budget, the
   * route's timeout over all of them; the answer (or a local reply) goes to `x.res`.
   */
  async forward(x: Exchange, rec: RequestRecord): Promise<void> {
    const { state, route: c, leg, primary, headers, body, canRetry, hash, res, clientGone, path } = x;
    const a = c.route.action;
    if (!primary.breaker.tryAcquireRequest()) {
      this.stats.overflow(primary.name);
      return this.reply(res, 503, "UO", state.upstream, `cluster "${primary.name}": max concurrent requests reached`, rec);
    }
    const deadline = a.timeoutMs > 0 ? Date.now() + a.timeoutMs : Infinity;
    const tried = new Set<string>();
    let last: { outcome: AttemptOutcome; cluster: ClusterRuntime; host: ClusterHost } | null = null;
    let retriesTaken = 0;
    // A retry holds a slot of its cluster's retry budget until the retried attempt is over.
    let retrySlot: ClusterRuntime | null = null;
    const releaseRetrySlot = () => {
      retrySlot?.breaker.releaseRetry();
      retrySlot = null;
    };
    try {
      for (let attempt = 1; ; attempt++) {
        const cluster = clusterWithHosts(primary, state.clusters, tried, true);
        const host = cluster?.pick(hash !== undefined ? { hash, exclude: tried } : { exclude: tried }) ?? null;
        if (!cluster || !host) {
          if (last) return this.replyFailure(res, last.outcome, 503, state.upstream, last.host, rec);
          this.stats.noHealthy(primary.name);
          return this.reply(res, 503, "UH", state.upstream, primary.describeUnavailable(), rec);
        }
        tried.add(host.key);
        rec.attempts = attempt;
        rec.cluster = cluster.name;
        rec.host = host.key;
        headers["x-envoy-attempt-count"] = String(attempt);
        // The first attempt has the whole route timeout (what passed since `deadline` was set is
        // below a timer's millisecond): the same value for every request, so a pooled connection
        // re-arms its timer rather than making one per request.
        const remaining = attempt === 1 && a.timeoutMs > 0 ? a.timeoutMs : deadline - Date.now();
        if (remaining <= 0) return this.timeout(res, cluster, state.upstream, rec);
        const perTry = a.retry.perTryTimeoutMs > 0 ? Math.min(a.retry.perTryTimeoutMs, remaining) : remaining;
        // Every connection of the host's pool busy (one request each): this attempt waits for one.
        // It is pending until the pool assigns it a connection, and the cluster's requests
        // waiting, whichever host they wait on, are held to MaxPendingRequests (Envoy's
        // max_pending_requests).
        const waits = host.activeRequests >= cluster.limits.maxConnections;
        if (waits && !cluster.breaker.tryAcquirePending()) {
          this.stats.overflow(cluster.name);
          return this.reply(res, 503, "UO", state.upstream, `cluster "${cluster.name}": max pending requests (${cluster.limits.maxPendingRequests}) reached`, rec);
        }
        let retryTaken: ClusterRuntime | null = null;
        // Decided when the upstream's headers arrive: retry (the body is drained, not delivered)
        // or deliver (head and body go straight into the client's response).
        const deliver = (status: number, upstreamHeaders: IncomingHttpHeaders | ParsedFields): boolean => {
          const retriable = canRetry && c.retry.retriable({ kind: "response", status });
          if (retriable && retriesTaken < c.retry.numRetries && clusterWithHosts(primary, state.clusters, tried, true)) {
            if (cluster.breaker.tryAcquireRetry()) {
              retryTaken = cluster;
              return false;
            }
            // Counted, not logged at warn: under overload this happens on every request.
            this.stats.retryOverflow(cluster.name);
            this.log.debug("retry budget exhausted; passing the failure on", { cluster: cluster.name, active_retries: cluster.breaker.state.activeRetries, budget: cluster.breaker.maxRetriesNow() });
          }
          // Envoy's URX: still failing after every retry the policy allowed; the last answer goes back.
          this.writeResponseHead(res, status, upstreamHeaders, cluster, c, leg, rec, retriable && retriesTaken > 0 ? "URX" : null);
          return true;
        };
        const timeouts = { headersMs: perTry, idleMs: a.idleTimeoutMs };
        const outcome = x.send
          ? await x.send(cluster, host, waits, x.method, path, headers, timeouts, clientGone, res, deliver)
          : await dispatchAttempt(cluster, host, waits, x.method, path, headers, body, timeouts, clientGone, res, deliver);
        releaseRetrySlot();
        // A slot deliver() took for the next attempt is held from here, so that every way out of
        // this loop (the client gone while the answer drained, a reset in the drain) gives it back.
        retrySlot = retryTaken;
        if (this.log.enabled("debug")) {
          this.log.debug("attempt", { cluster: cluster.name, host: host.key, attempt, outcome: outcome.outcome.kind, status: outcome.outcome.kind === "response" ? outcome.outcome.status : undefined, delivered: outcome.delivered });
        }
        if (clientGone.cancelled || outcome.delivered) return;
        last = { outcome: outcome.outcome, cluster, host };
        if (outcome.outcome.kind === "connect-failure") this.stats.connectFailed(cluster.name, outcome.outcome.reason);
        // A response not delivered: deliver() chose to retry and holds the slot already.
        if (outcome.outcome.kind !== "response") {
          const more = canRetry && c.retry.retriable(outcome.outcome) && retriesTaken < c.retry.numRetries;
          if (!more) {
            if (outcome.outcome.kind === "per-try-timeout" && Date.now() >= deadline) return this.timeout(res, cluster, state.upstream, rec);
            return this.replyFailure(res, outcome.outcome, 504, state.upstream, host, rec);
          }
          if (retrySlot === null) {
            if (!cluster.breaker.tryAcquireRetry()) {
              this.stats.retryOverflow(cluster.name);
              return this.reply(res, 503, "UF", state.upstream, this.describeFailure(outcome.outcome, host), rec);
            }
            retrySlot = cluster;
          }
        }
        retriesTaken++;
        this.stats.retry(cluster.name);
        const wait = c.retry.backoffMs(retriesTaken);
        if (Date.now() + wait >= deadline) return this.timeout(res, cluster, state.upstream, rec);
        await sleep(wait);
      }
    } finally {
      releaseRetrySlot();
      primary.breaker.releaseRequest();
    }
  }

  /**
   * The local reply for the last attempt's failure: 502 UPE for an answer that did not parse, UT
   * (`timeoutStatus`) for a per-try timeout, 503 UF for the rest.
   */
  private replyFailure(res: ResponseSink, o: AttemptOutcome, timeoutStatus: 503 | 504, upstream: string, host: ClusterHost, rec: RequestRecord): void {
    const detail = this.describeFailure(o, host);
    if (o.kind === "reset" && o.protocolError) return this.reply(res, 502, "UPE", upstream, detail, rec);
    if (o.kind === "per-try-timeout") return this.reply(res, timeoutStatus, "UT", upstream, detail, rec);
    this.reply(res, 503, "UF", upstream, detail, rec);
  }

  private describeFailure(o: AttemptOutcome, host: ClusterHost): string {
    if (o.kind === "response") return `${host.key} answered ${o.status}`;
    if (o.kind === "reset" && o.protocolError) return `${host.key}: ${o.protocolError}`;
    return `${host.key}: ${o.kind}`;
  }

  private writeResponseHead(
    res: ResponseSink,
    status: number,
    upstreamHeaders: IncomingHttpHeaders | ParsedFields,
    cluster: ClusterRuntime,
    c: CompiledRoute,
    leg: Split,
    rec: RequestRecord,
    flag: ResponseFlag | null,
  ): void {
    rec.status = status;
    rec.flag = flag ?? "-";
    if (upstreamHeaders instanceof ParsedFields && flag === null && !c.hasResMutations && res.writeParsedHead) {
      res.writeParsedHead(status, upstreamHeaders.raw);
      this.stats.response(cluster.name, status, performance.now() - rec.start);
      return;
    }
    const headers = endToEndCopy(upstreamHeaders instanceof ParsedFields ? upstreamHeaders.record() : upstreamHeaders);
    if (c.hasResMutations) {
      applyHeaderMutation(headers, c.route.action.responseHeaders);
      applyHeaderMutation(headers, leg.responseHeaders);
    }
    if (flag) headers[FLAGS_HEADER] = flag;
    writeHead(res, status, headers);
    this.stats.response(cluster.name, status, performance.now() - rec.start);
  }

  private timeout(res: ResponseSink, cluster: ClusterRuntime, upstream: string, rec: RequestRecord): void {
    this.stats.timeout(cluster.name);
    this.reply(res, 504, "UT", upstream, undefined, rec);
  }

  /** A local reply (Envoy's, with its response flag), logged at warn for a 5xx other than overflow. */
  reply(res: ResponseSink, status: number, flag: ResponseFlag, upstream: string, detail: string | undefined, rec: RequestRecord): void {
    rec.status = status;
    rec.flag = flag;
    // Overflow is counted and happens on every request under overload: not a warning line each.
    if (status >= 500) {
      const fields = { upstream, status, flag, detail, ms: Math.round(performance.now() - rec.start) };
      if (flag === "UO") this.log.debug("local reply", fields);
      else this.log.warn("local reply", fields);
    }
    localReply(res, status, flag, detail);
  }
}
