// What a sidecar records of its HTTP requests, recorded for a native service's own: the access
// log lines (telemetry/access-log.ts, same fields), OpenTelemetry spans (telemetry/tracing.ts,
// same names and attributes: `ingress <method>` for a request the app's server takes, `egress
// <upstream>` for one its dispatcher sends) with trace context carried both ways, and the public
// listener's HTTP connection-manager stats (envoy_http_downstream_rq_*). A native app is its own
// local app, so the inbound lines name no upstream cluster.
import type { Server as TlsServer } from "node:tls";
import { requestFields, type AccessLog } from "../telemetry/access-log.js";
import type { Observers } from "../telemetry/observers.js";
import type { RequestSpan } from "../telemetry/tracing.js";
import type { HttpConnManagerStats } from "../telemetry/filter-stats.js";
import { envoyListenerAddress, type Metrics } from "../telemetry/metrics.js";
import type { RequestRecord } from "../outbound/http-router.js";
import type { HeaderRecord } from "../http/headers.js";

/** What is recorded of a request: node:http's and node:http2's compat request both have it. */
export interface ObservedRequest {
  readonly method?: string | undefined;
  readonly url?: string | undefined;
  readonly httpVersion: string;
  readonly headers: Record<string, string | string[] | undefined>;
}

/** What is recorded of its response (ServerResponse, Http2ServerResponse). */
export interface ObservedResponse {
  readonly statusCode: number;
  readonly headersSent: boolean;
  readonly writableFinished: boolean;
  once(event: "close", listener: () => void): unknown;
}

/** The local replies of the gate, with the flags a sidecar's public listener gives them. */
const REFUSAL_FLAG: Readonly<Record<number, string>> = { 400: "DPE", 403: "UAEX" };

export class NativeObservers implements Observers {
  /** Per attached server: its listener's stats, labelled by its address as a public listener's. */
  private readonly hcm = new WeakMap<TlsServer, HttpConnManagerStats>();

  constructor(
    readonly tracing: Observers["tracing"],
    readonly accessLog: AccessLog,
    private readonly metrics: Metrics,
  ) {}

  private stats(server: TlsServer): HttpConnManagerStats | null {
    const known = this.hcm.get(server);
    if (known) return known;
    const a = server.address();
    if (a === null || typeof a === "string") return null;
    const s = this.metrics.filters.httpConnManager(null, envoyListenerAddress(`${a.address}:${a.port}`));
    this.hcm.set(server, s);
    return s;
  }

  /**
   * A request the gate let through, before the app's handler: a server span, its context put in
   * the request's headers so the app's own spans are its children (as a sidecar injects it into
   * the request it forwards), and the line and stats once the response is over.
   */
  inbound(server: TlsServer, req: ObservedRequest, res: ObservedResponse, source: string): void {
    const start = performance.now();
    const startTime = Date.now();
    const tracing = this.tracing;
    let span: RequestSpan | undefined;
    if (tracing) {
      span = tracing.start("server", `ingress ${req.method ?? "GET"}`, req.headers, {
        "http.request.method": req.method ?? "GET",
        "url.path": req.url ?? "/",
        "network.protocol.version": req.httpVersion,
        "meshproxy.source_identity": source,
      });
      tracing.inject(span, req.headers);
    }
    const hcm = this.stats(server);
    res.once("close", () => {
      const status = res.headersSent ? res.statusCode : 0;
      // Closed before the response was complete: the caller (or the handler) went away.
      const flag = res.writableFinished ? "-" : "DC";
      hcm?.response(status, performance.now() - start);
      if (tracing && span) tracing.end(span, status, { "meshproxy.response_flags": flag });
      if (!this.accessLog.enabled) return;
      this.accessLog.log({
        ...requestFields(req, startTime, start),
        direction: "inbound",
        status,
        response_flags: flag,
        source_identity: source,
        ...(span ? { trace_id: span.span.spanContext().traceId } : {}),
      });
    });
  }

  /** A request the gate answered itself (400 bad target, 403 by intention). */
  refused(server: TlsServer, req: ObservedRequest, status: number, source: string | null): void {
    this.stats(server)?.response(status, 0);
    if (!this.accessLog.enabled) return;
    const now = performance.now();
    this.accessLog.log({
      ...requestFields(req, Date.now(), now),
      direction: "inbound",
      status,
      response_flags: REFUSAL_FLAG[status] ?? "-",
      ...(source !== null ? { source_identity: source } : {}),
    });
  }

  /** A dispatcher request about to be forwarded: its client span, injected into the upstream's headers. */
  outboundStart(rec: RequestRecord, upstream: string, service: string, method: string, path: string, headers: HeaderRecord): void {
    const tracing = this.tracing;
    if (!tracing) return;
    rec.span = tracing.start("client", `egress ${upstream}`, headers, {
      "http.request.method": method,
      "url.path": path,
      "network.protocol.version": "1.1",
      "peer.service": service,
      "meshproxy.upstream": upstream,
    });
    tracing.inject(rec.span, headers);
  }

  /** The dispatcher request is over (answered, failed, or given up by the app). */
  outboundEnd(rec: RequestRecord, upstream: string, method: string, path: string, headers: HeaderRecord): void {
    if (rec.status === 0) rec.flag = "DC";
    if (this.tracing && rec.span) {
      this.tracing.end(rec.span, rec.status, { "meshproxy.response_flags": rec.flag, "meshproxy.attempts": rec.attempts, ...(rec.cluster ? { "meshproxy.upstream_cluster": rec.cluster } : {}) });
    }
    if (!this.accessLog.enabled) return;
    this.accessLog.log({
      ...requestFields({ method, url: path, httpVersion: "1.1", headers }, rec.startTime, rec.start),
      direction: "outbound",
      status: rec.status,
      response_flags: rec.flag,
      upstream_cluster: rec.cluster ?? upstream,
      ...(rec.host ? { upstream_host: rec.host } : {}),
      attempts: rec.attempts,
      ...(rec.span ? { trace_id: rec.span.span.spanContext().traceId } : {}),
    });
  }

  /** Flushes the access log and the spans still queued. */
  async close(): Promise<void> {
    this.accessLog.close();
    await this.tracing?.shutdown();
  }
}
