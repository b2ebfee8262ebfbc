// The endpoint stage on the HTTP/1 core: one attempt of a routed request on one host's llhttp
// keep-alive pool over mTLS (cluster/pools.ts getHttp1), with the same books and outcomes as the
// undici attempt (endpoint.ts): the host's active count, outlier results, peak_ewma latency, the
// pending slot, and the per-try (response head) and idle (response body) timeouts. An HTTP/2
// cluster is still reached through undici's pool, with the body handed over as a stream.
import type { IncomingHttpHeaders } from "node:http";
import { Readable } from "node:stream";
import type { ClusterHost, ClusterRuntime } from "../cluster/runtime.js";
import { isConnectFailure } from "../cluster/pools.js";
import { ResponseParseError, ResponseTimeoutError, type OriginRequest, type ResponseEvents } from "../http1/client.js";
import { ParsedFields } from "../http1/fields.js";
import { recordRequestHead } from "../http1/forward.js";
import type { AttemptOutcome, ConnectFailureReason } from "../http/retry.js";
import type { Cancel, ResponseSink } from "../http/compat.js";
import { dispatchAttempt, headTimerMs, type AttemptResult, type AttemptSender } from "./endpoint.js";

/** Where a streamed request body's chunks go. */
export interface BodyChunks {
  data(chunk: Buffer): void;
  end(): void;
}

/** A request body that streams from the app's connection (too large or of unknown length to buffer); it can be sent once. */
export interface StreamedBody {
  /** Its Content-Length, or null when it came chunked. */
  readonly length: number | null;
  /** Chunks go to `sink` from now on. */
  pipeTo(sink: BodyChunks): void;
  pause(): void;
  resume(): void;
}

/** A buffered body (a retry sends it again), a streamed one, or none. */
export type Http1AttemptBody = Buffer | StreamedBody | null;

/** The same body as a Readable, for an undici pool. */
function readableOf(body: StreamedBody): Readable {
  const r = new Readable({ read: () => body.resume() });
  body.pipeTo({
    data: (c) => {
      if (!r.push(c)) body.pause();
    },
    end: () => r.push(null),
  });
  return r;
}

/** The sender of one request's attempts: each attempt on the host's HTTP/1 core pool, `body` sent with each. */
export function http1Sender(body: Http1AttemptBody): AttemptSender {
  return (cluster, host, waits, method, path, headers, timeouts, clientGone, res, deliver) => {
    if (cluster.http2) {
      const b = body === null || Buffer.isBuffer(body) ? body : readableOf(body);
      return dispatchAttempt(cluster, host, waits, method, path, headers, b, timeouts, clientGone, res, deliver);
    }
    return new Promise((resolve) => new Http1Attempt(cluster, host, waits, clientGone, res, deliver, resolve).start(method, path, headers, body, timeouts));
  };
}

/** One attempt in flight: the response events of the pool's connection, and the attempt's books. */
class Http1Attempt implements ResponseEvents {
  private up: OriginRequest | null = null;
  private cancelWait: (() => void) | null = null;
  private status = 0;
  private delivering = false;
  private done = false;
  private readonly sent: number;
  private readonly onGone = (): void => this.gone();

  constructor(
    private readonly cluster: ClusterRuntime,
    private readonly host: ClusterHost,
    /** The caller took a pending slot of the cluster: given back once a connection is assigned. */
    private pending: boolean,
    private readonly clientGone: Cancel,
    private readonly res: ResponseSink,
    private readonly deliver: (status: number, headers: IncomingHttpHeaders | ParsedFields) => boolean,
    private readonly resolve: (r: AttemptResult) => void,
  ) {
    cluster.begin(host);
    this.sent = cluster.learnsLatency ? performance.now() : 0;
    clientGone.once("abort", this.onGone);
  }

  start(method: string, path: string, headers: Record<string, string | string[] | undefined>, body: Http1AttemptBody, timeouts: { readonly headersMs: number; readonly idleMs: number }): void {
    const pool = this.cluster.http1PoolFor(this.host);
    const headMs = headTimerMs(timeouts.headersMs);
    const go = (): void => {
      this.cancelWait?.();
      this.cancelWait = null;
      if (this.done) return;
      this.assigned();
      const h = this.host.endpoint;
      const hostLine = `host: ${h.host.includes(":") ? `[${h.host}]` : h.host}:${h.port}\r\n`;
      let framing = "";
      let chunked = false;
      if (Buffer.isBuffer(body)) framing = `content-length: ${body.length}\r\n`;
      else if (body !== null) {
        chunked = body.length === null;
        framing = chunked ? "transfer-encoding: chunked\r\n" : `content-length: ${body.length}\r\n`;
      } else if (headers["content-length"] === "0") framing = "content-length: 0\r\n";
      const head = recordRequestHead(method, path, headers, hostLine, framing);
      const up = pool.request(head, method === "HEAD", body !== null, chunked, headMs, this, Math.max(0, Math.ceil(timeouts.idleMs)));
      this.up = up;
      if (this.done) return;
      if (Buffer.isBuffer(body)) {
        up.write(body);
        up.end();
      } else if (body !== null) {
        body.pipeTo({
          data: (c) => {
            if (!up.write(c)) {
              body.pause();
              up.onDrain(() => body.resume());
            }
          },
          end: () => up.end(),
        });
      }
    };
    // Every connection of the host busy and MaxConnections of them open: wait for one, as undici's
    // pool queues; the wait counts against the per-try timeout, so a stuck host does not hold it forever.
    if (pool.full) {
      const cancel = pool.wait(go);
      const timer =
        headMs > 0
          ? setTimeout(() => {
              this.cancelWait = null;
              cancel();
              this.finish({ outcome: PER_TRY_TIMEOUT, delivered: false });
            }, headMs)
          : null;
      this.cancelWait = () => {
        if (timer) clearTimeout(timer);
        cancel();
      };
    } else go();
  }

  private assigned(): void {
    if (!this.pending) return;
    this.pending = false;
    this.cluster.breaker.releasePending();
  }

  head(status: number, _text: string, raw: string[]): void {
    this.status = status;
    this.cluster.reportResult(this.host, { status });
    if (this.sent > 0) this.cluster.observeLatency(this.host, performance.now() - this.sent);
    this.delivering = this.deliver(status, new ParsedFields(raw));
    if (!this.delivering) queueMicrotask(() => this.dropUndelivered());
  }

  /**
   * A retry comes next: what of the dropped answer came in the read that carried its head is
   * drained (a small error page leaves the connection usable); the rest is not waited for, as
   * Envoy resets the upstream request when it retries on headers. Otherwise a body that trickles
   * on would hold the retry (and the client) for as long as the upstream likes: the route
   * timeout ends at the response headers.
   */
  private dropUndelivered(): void {
    if (this.done) return;
    this.up?.abort();
    this.finish({ outcome: { kind: "response", status: this.status }, delivered: false });
  }

  body(chunk: Buffer): void {
    // Not delivered: the answer is read to its end (the connection stays usable) and dropped; a retry comes next.
    if (!this.delivering || this.res.write(chunk)) return;
    const up = this.up;
    if (!up) return;
    up.pauseResponse();
    this.res.once("drain", () => up.resumeResponse());
  }

  end(): void {
    if (this.delivering) this.res.end();
    this.finish({ outcome: { kind: "response", status: this.status }, delivered: this.delivering });
  }

  error(e: Error, answered: boolean): void {
    if (this.done) return;
    if (this.delivering) {
      // Part of an answer already went out: the client's response cannot be completed.
      if (!this.res.retractHead?.()) {
        this.res.destroy();
        return this.finish({ outcome: { kind: "reset" }, delivered: true });
      }
      // The head was still held (the answer failed in the read that carried it): nothing left,
      // so this is a reset before the answer, retried or answered locally as one.
      this.delivering = false;
    } else if (answered) {
      // A head that was drained for a retry: the decision was made on its status already.
      return this.finish({ outcome: { kind: "response", status: this.status }, delivered: false });
    }
    this.cluster.reportResult(this.host, { localOriginFailure: true });
    if (isConnectFailure(e)) this.cluster.connectFailed(this.host);
    this.finish({
      outcome: e instanceof ResponseTimeoutError ? PER_TRY_TIMEOUT : isConnectFailure(e) ? CONNECT_FAILURE[e.cause.kind] : e instanceof ResponseParseError ? { kind: "reset", protocolError: e.message } : RESET,
      delivered: false,
    });
  }

  /** The client went away: the request in flight (or its wait for a connection) is abandoned. */
  private gone(): void {
    if (this.done) return;
    this.cancelWait?.();
    this.cancelWait = null;
    this.up?.abort();
    if (this.delivering) this.res.destroy();
    this.finish({ outcome: RESET, delivered: false });
  }

  private finish(r: AttemptResult): void {
    if (this.done) return;
    this.done = true;
    this.cancelWait?.();
    this.assigned();
    this.cluster.end(this.host);
    this.clientGone.off("abort", this.onGone);
    this.resolve(r);
  }
}

const RESET: AttemptOutcome = { kind: "reset" };
const PER_TRY_TIMEOUT: AttemptOutcome = { kind: "per-try-timeout" };
const CONNECT_FAILURE: Readonly<Record<ConnectFailureReason, AttemptOutcome>> = {
  connect: { kind: "connect-failure", reason: "connect" },
  timeout: { kind: "connect-failure", reason: "timeout" },
  identity: { kind: "connect-failure", reason: "identity" },
};
