// The answer of a native request, as the router writes it (a ResponseSink), handed to the undici
// handler of the app's fetch/request call. The router writes here exactly what it writes into a
// sidecar's node:http response: the upstream's head and body, or a local reply (503 UO, 504 UT
// with x-envoy-response-flags), so a native client sees what an app behind a sidecar sees.
import { EventEmitter } from "node:events";
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";
import type { Dispatcher } from "undici";
import type { Cancel, ResponseSink } from "../http/compat.js";

/** The app's handler: undici's newer interface (onRequestStart …) or the classic one (onConnect …). */
type Handler = Dispatcher.DispatchHandler;

export class HandlerSink extends EventEmitter implements ResponseSink {
  headersSent = false;
  private ended = false;
  private paused = false;
  /** What the app's handler sees of the request: it may pause the body, or abort. */
  private readonly controller: SinkController;

  constructor(
    private readonly handler: Handler,
    private readonly clientGone: Cancel,
  ) {
    super();
    this.controller = new SinkController(
      (reason) => {
        clientGone.cancel();
        this.fail(reason);
      },
      (paused) => {
        if (paused) return void (this.paused = true);
        if (!this.paused) return;
        this.paused = false;
        this.emit("drain");
      },
    );
    if (handler.onRequestStart) handler.onRequestStart(this.controller, {});
    else handler.onConnect?.((err?: Error) => this.controller.abort(err ?? new Error("the request was aborted")));
  }

  writeHead(status: number, headers: OutgoingHttpHeaders): this {
    this.headersSent = true;
    if (this.ended) return this;
    const h = this.handler;
    if (h.onResponseStart) {
      const incoming: IncomingHttpHeaders = {};
      for (const [k, v] of Object.entries(headers)) if (v !== undefined) incoming[k] = Array.isArray(v) ? v : String(v);
      this.guard(() => h.onResponseStart!(this.controller, status, incoming, ""));
    } else if (h.onHeaders) {
      this.guard(() => {
        if (h.onHeaders!(status, rawHeaders(headers), () => this.controller.resume(), "") === false) this.paused = true;
      });
    }
    return this;
  }

  write(chunk: Buffer): boolean {
    if (this.ended) return true;
    const h = this.handler;
    this.guard(() => {
      if (h.onResponseData) h.onResponseData(this.controller, chunk);
      else if (h.onData?.(chunk) === false) this.paused = true;
    });
    return !this.paused;
  }

  private trailers: OutgoingHttpHeaders | null = null;

  forwardTrailers(trailers: OutgoingHttpHeaders): void {
    this.trailers = trailers;
  }

  end(body?: string): this {
    if (body !== undefined) this.write(Buffer.from(body));
    if (this.ended) return this;
    this.ended = true;
    const h = this.handler;
    const t = this.trailers ?? {};
    try {
      if (h.onResponseEnd) {
        const incoming: IncomingHttpHeaders = {};
        for (const [k, v] of Object.entries(t)) if (v !== undefined) incoming[k] = Array.isArray(v) ? v : String(v);
        h.onResponseEnd(this.controller, incoming);
      } else h.onComplete?.(rawHeaders(t).map(String)); // a list, even empty: undici's request() parses it
    } catch (e) {
      // The request is over, so there is nobody to fail: the app's exception reaches the
      // process, as a throw from a node:http 'end' listener does (never lost in the router).
      queueMicrotask(() => {
        throw e;
      });
    }
    return this;
  }

  /** The upstream failed after part of the answer went out (or the router gave up on it). */
  destroy(): this {
    this.fail(new Error("the upstream connection failed while the response was being received"));
    return this;
  }

  /**
   * Runs one of the app handler's callbacks. A throw fails the request with the app's own error
   * (undici's own clients do the same) and stops the upstream exchange; it does not come back to
   * the router as if the upstream had failed.
   */
  private guard(callback: () => void): void {
    try {
      callback();
    } catch (e) {
      // The app's error first: the router, told the client is gone, fails the sink its own way.
      this.fail(e instanceof Error ? e : new Error(String(e)));
      this.clientGone.cancel();
    }
  }

  /** Fails the app's request, once; the first cause wins. */
  fail(err: Error): void {
    if (this.ended) return;
    this.ended = true;
    failHandler(this.handler, err, this.controller);
  }
}

/** What the app's handler holds of its request: abort it, or pause and resume the answer's body. */
class SinkController implements Dispatcher.DispatchController {
  aborted = false;
  paused = false;
  reason: Error | null = null;

  constructor(
    private readonly onAbort: (reason: Error) => void,
    private readonly onPause: (paused: boolean) => void,
  ) {}

  abort(reason: Error): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    this.onAbort(reason);
  }

  pause(): void {
    this.paused = true;
    this.onPause(true);
  }

  resume(): void {
    this.paused = false;
    this.onPause(false);
  }
}

/** A request that never reached the router (a bad name, no such service): failed at once. */
export function failHandler(handler: Handler, err: Error, controller?: Dispatcher.DispatchController): void {
  if (handler.onResponseError) {
    handler.onResponseError(controller ?? { abort: () => {}, pause: () => {}, resume: () => {}, aborted: false, paused: false, reason: err }, err);
    return;
  }
  if (handler.onError) return handler.onError(err);
  throw err;
}

/** undici's classic handlers take the head as a flat [name, value, …] list of Buffers. */
function rawHeaders(headers: OutgoingHttpHeaders): Buffer[] {
  const out: Buffer[] = [];
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined) continue;
    if (Array.isArray(v)) for (const x of v) out.push(Buffer.from(k), Buffer.from(x));
    else out.push(Buffer.from(k), Buffer.from(String(v)));
  }
  return out;
}
