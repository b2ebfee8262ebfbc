// Two sockets joined both ways: backpressure (stream.pipe pauses the faster side), half-close
// (a FIN from one side becomes end() on the other while the reverse direction keeps flowing),
// an idle timeout, and teardown of both when either fails.
import type { Socket } from "node:net";

export interface PipeResult {
  /** Bytes read from the downstream socket (sent towards upstream). */
  readonly downstreamBytesIn: number;
  /** Bytes read from the upstream socket (sent towards downstream). */
  readonly upstreamBytesIn: number;
  /** Set when the pair was torn down by an error or a timeout rather than closed cleanly. */
  readonly error: Error | null;
}

export interface Pipe {
  /** Ends both sides at once (drain deadline, shutdown). */
  destroy(reason?: Error): void;
}

export class IdleTimeoutError extends Error {
  constructor(ms: number) {
    super(`idle for ${ms} ms`);
    this.name = "IdleTimeoutError";
  }
}

export function joinSockets(down: Socket, up: Socket, idleTimeoutMs: number, onClose: (r: PipeResult) => void): Pipe {
  let error: Error | null = null;
  let open = 2;
  const destroy = (reason?: Error): void => {
    if (reason && !error) error = reason;
    down.destroy();
    up.destroy();
  };
  const closed = (other: Socket) => (hadError: boolean) => {
    // A clean close means this side's read ended and its write finished, which (through the
    // pipes) means the other side's read ended too: it closes by itself once its writes flush.
    // Anything else (an error, a reset, a destroy) tears the other side down now.
    if (hadError || !other.readableEnded) other.destroy();
    if (--open === 0) onClose({ downstreamBytesIn: down.bytesRead, upstreamBytesIn: up.bytesRead, error });
  };
  const failed = (e: Error) => destroy(e);
  down.on("error", failed);
  up.on("error", failed);
  down.once("close", closed(up));
  up.once("close", closed(down));
  if (idleTimeoutMs > 0) {
    const idle = () => destroy(new IdleTimeoutError(idleTimeoutMs));
    down.setTimeout(idleTimeoutMs, idle);
    up.setTimeout(idleTimeoutMs, idle);
  }
  down.pipe(up);
  up.pipe(down);
  return { destroy };
}
