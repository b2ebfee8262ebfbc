// The endpoint stage of outbound HTTP: one attempt of a request on one host's pooled mTLS
// connection (cluster/pools.ts). It keeps the host's books (active count, outlier results,
// latency for peak_ewma, the pending slot) and says how the attempt ended; whether to retry is
// the logical stage's business (http-router.ts), which host to use the concrete stage's
// (concrete.ts).
import type { IncomingHttpHeaders } from "node:http";
import type { ClusterHost, ClusterRuntime } from "../cluster/runtime.js";
import { isConnectFailure } from "../cluster/pools.js";
import type { ParsedFields } from "../http1/fields.js";
import { isRefusedStream, type AttemptOutcome } from "../http/retry.js";
import { ResponseForwarder } from "../http/forwarder.js";
import type { Dispatcher } from "undici";
import { errorCode, isResponseParseError, type Cancel, type ResponseSink } from "../http/compat.js";
import { loadUndici, undiciLoaded } from "../http/undici.js";

/** A body undici can send: buffered (a retry sends it again) or streamed (the app's request, a native client's stream). */
export type AttemptBody = Buffer | NonNullable<Dispatcher.DispatchOptions["body"]> | null;

/**
 * An attempt's response-head timeout as a timer takes it: whole milliseconds, at least 1; 0 (no
 * timer) when it is infinite (a route without a timeout and without a per-try timeout), which
 * setTimeout would otherwise fire after 1 ms.
 */
export function headTimerMs(ms: number): number {
  return Number.isFinite(ms) ? Math.max(1, Math.ceil(ms)) : 0;
}

/** How one attempt ended, and whether the client got (part of) its answer. */
export interface AttemptResult {
  readonly outcome: AttemptOutcome;
  readonly delivered: boolean;
}

/** A parameter list without its body (the element of type AttemptBody, exactly), the rest in order. */
type WithoutBody<P extends readonly unknown[]> = P extends readonly [infer Head, ...infer Tail]
  ? [Head] extends [AttemptBody]
    ? [AttemptBody] extends [Head]
      ? Tail
      : [Head, ...WithoutBody<Tail>]
    : [Head, ...WithoutBody<Tail>]
  : [];

/**
 * One attempt of a routed request on one host, whatever client sends it: dispatchAttempt's
 * contract without the body (a sender holds its own), derived from it so the two cannot drift.
 */
export type AttemptSender = (...attempt: WithoutBody<Parameters<typeof dispatchAttempt>>) => ReturnType<typeof dispatchAttempt>;

/**
 * One try against one host; resolves once the answer is delivered, drained for a retry, or
 * failed. With `waits`, the caller took a pending slot of the cluster: it is given back as soon
 * as the pool assigns the request a connection, or when the attempt ends without one.
 */
export function dispatchAttempt(
  cluster: ClusterRuntime,
  host: ClusterHost,
  waits: boolean,
  method: string,
  path: string,
  headers: Record<string, string | string[] | undefined>,
  body: AttemptBody,
  timeouts: { readonly headersMs: number; readonly idleMs: number },
  clientGone: Cancel,
  res: ResponseSink,
  deliver: (status: number, headers: IncomingHttpHeaders | ParsedFields) => boolean,
): Promise<AttemptResult> {
  // The first attempt through undici (an HTTP/2 cluster, or a request the node:http path took)
  // waits for it to load; a Snapshot with HTTP/2 clusters loaded it before it was applied.
  if (!undiciLoaded()) {
    return loadUndici().then((): AttemptResult | Promise<AttemptResult> => {
      if (!clientGone.cancelled) return dispatchAttempt(cluster, host, waits, method, path, headers, body, timeouts, clientGone, res, deliver);
      if (waits) cluster.breaker.releasePending();
      return { outcome: { kind: "reset" }, delivered: false };
    });
  }
  cluster.begin(host);
  const sent = cluster.learnsLatency ? performance.now() : 0;
  let pending = waits;
  const assigned = (): void => {
    if (!pending) return;
    pending = false;
    cluster.breaker.releasePending();
  };
  return new Promise((resolve) => {
    // The status of a head that arrived and was drained for a retry, not delivered.
    let answered = 0;
    const handler = new ResponseForwarder(
      res,
      (status, h) => {
        answered = status;
        cluster.reportResult(host, { status });
        if (sent > 0) cluster.observeLatency(host, performance.now() - sent);
        return deliver(status, h);
      },
      (r) => {
        assigned();
        cluster.end(host);
        clientGone.off("abort", onGone);
        if ("status" in r) return resolve({ outcome: { kind: "response", status: r.status }, delivered: r.delivered });
        if (clientGone.cancelled) return resolve({ outcome: { kind: "reset" }, delivered: false });
        // A failure after the head was sent cannot be retried: the client has part of an answer.
        if (r.delivered) return resolve({ outcome: { kind: "reset" }, delivered: true });
        // The drain of an answer already judged (a retry was decided on its status) broke: the
        // decision stands, as on the HTTP/1 core, rather than turning into a reset.
        if (answered !== 0) return resolve({ outcome: { kind: "response", status: answered }, delivered: false });
        cluster.reportResult(host, { localOriginFailure: true });
        if (errorCode(r.error) === "UND_ERR_HEADERS_TIMEOUT") return resolve({ outcome: { kind: "per-try-timeout" }, delivered: false });
        if (isConnectFailure(r.error)) {
          cluster.connectFailed(host);
          return resolve({ outcome: { kind: "connect-failure", reason: r.error.cause.kind }, delivered: false });
        }
        if (isRefusedStream(r.error)) return resolve({ outcome: { kind: "refused-stream" }, delivered: false });
        resolve({ outcome: isResponseParseError(r.error) ? { kind: "reset", protocolError: `the response did not parse: ${r.error.message}` } : { kind: "reset" }, delivered: false });
      },
      assigned,
    );
    const onGone = () => handler.abort(new Error("the client closed the connection"));
    clientGone.once("abort", onGone);
    // undici's own timers: the header timer is the per-try timeout, the body timer the route's
    // idle timeout (the longest silence between two chunks of the answer). No timer objects here.
    cluster.poolFor(host).dispatch({ method, path, headers, body, headersTimeout: headTimerMs(timeouts.headersMs), bodyTimeout: Math.max(0, Math.ceil(timeouts.idleMs)) }, handler);
  });
}
