// An undici dispatch handler that streams an upstream answer straight into the client's
// response: no intermediate Readable, no pipe, backpressure by pausing the upstream read. At the
// response head the caller decides to deliver it or to drain it (a retry comes next).
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";
import type { Dispatcher } from "undici";
import { isHttp2, type ResponseSink } from "./compat.js";

export type ForwardResult =
  | { readonly status: number; readonly delivered: boolean }
  | { readonly error: Error; readonly delivered: boolean };

/**
 * undici 7 hands HTTP/2 trailers to new-style handlers through a parser meant for HTTP/1.1's
 * flat [name, value, ...] list, which turns node:http2's trailers object into {}. The object
 * itself is still on the controller.
 */
function http2Trailers(raw: Dispatcher.DispatchController["rawTrailers"]): IncomingHttpHeaders | null {
  if (!raw || Array.isArray(raw)) return null;
  const out: IncomingHttpHeaders = {};
  for (const [k, v] of Object.entries(raw)) if (typeof v === "string" || Array.isArray(v)) out[k] = v;
  return out;
}

export class ResponseForwarder implements Dispatcher.DispatchHandler {
  private controller: Dispatcher.DispatchController | null = null;
  private status = 0;
  private delivering = false;
  private done = false;
  private pendingAbort: Error | null = null;

  constructor(
    private readonly res: ResponseSink,
    /** Called once, at the final (non-1xx) head; true delivers the answer to `res`. */
    private readonly decide: (status: number, headers: IncomingHttpHeaders) => boolean,
    private readonly finished: (r: ForwardResult) => void,
    /** Called when undici starts the request on a connection (it was waiting for one until then). */
    private readonly started?: () => void,
  ) {}

  /** Cancels the upstream request (the client went away). */
  abort(reason: Error): void {
    if (this.done) return;
    if (this.controller) this.controller.abort(reason);
    else this.pendingAbort = reason;
  }

  private finish(r: ForwardResult): void {
    if (this.done) return;
    this.done = true;
    this.finished(r);
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    this.started?.();
    if (this.pendingAbort) controller.abort(this.pendingAbort);
  }

  onResponseStart(_controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    // 1xx heads (100 Continue) are the sidecar's business, not the client's.
    if (statusCode < 200 || this.status !== 0) return;
    this.status = statusCode;
    this.delivering = this.decide(statusCode, headers);
    if (!this.delivering) queueMicrotask(() => this.dropUndelivered());
  }

  /**
   * An answer dropped for a retry: what came with its head is drained, the rest is not waited
   * for (the request is cancelled), as Envoy resets the upstream request when it retries on
   * headers; a body that trickles on would otherwise hold the retry past the route timeout.
   */
  private dropUndelivered(): void {
    if (this.done) return;
    const c = this.controller;
    this.finish({ status: this.status, delivered: false });
    c?.abort(new Error(`the upstream's ${this.status} answer was dropped for a retry`));
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.delivering) return;
    if (!this.res.write(chunk)) {
      controller.pause();
      this.res.once("drain", () => controller.resume());
    }
  }

  onResponseEnd(controller: Dispatcher.DispatchController, trailers: IncomingHttpHeaders): void {
    if (this.delivering) {
      // gRPC's status travels in trailers; HTTP/1.1 clients get none.
      if (isHttp2(this.res) || this.res.forwardTrailers !== undefined) {
        const t: OutgoingHttpHeaders = {};
        let any = false;
        for (const [k, v] of Object.entries(http2Trailers(controller.rawTrailers) ?? trailers)) {
          if (v === undefined) continue;
          t[k] = v;
          any = true;
        }
        if (any) {
          if (isHttp2(this.res)) this.res.addTrailers(t);
          else this.res.forwardTrailers?.(t);
        }
      }
      this.res.end();
    }
    this.finish({ status: this.status, delivered: this.delivering });
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    // Part of an answer already went out: the client's response cannot be completed.
    if (this.delivering) this.res.destroy();
    this.finish({ error, delivered: this.delivering });
  }
}
