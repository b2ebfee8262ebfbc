// Two sockets joined both ways: backpressure (a side that cannot take more pauses the other),
// half-close (a FIN from one side becomes end() on the other while the reverse direction keeps
// flowing), an idle timeout, and teardown of both when either fails.
//
// This is the L4 hot path, so it does per chunk only what it must: one write, and a pause when
// the write is queued. stream.pipe() keeps more state per chunk, and socket.setTimeout re-arms
// a timer on every read and write; idleness is instead checked by one sweep for all pipes.
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

interface Live {
  lastActive: number;
  readonly idleMs: number;
  readonly destroy: (reason?: Error) => void;
}

/**
 * Idle detection for every pipe by one timer. A pipe only stamps a number when data moves; the
 * sweep, every second, closes the pipes whose stamp is older than their idle timeout.
 */
const live = new Set<Live>();
let sweeper: NodeJS.Timeout | null = null;
let now = Date.now();

function sweep(): void {
  now = Date.now();
  for (const p of live) if (now - p.lastActive >= p.idleMs) p.destroy(new IdleTimeoutError(p.idleMs));
  if (live.size === 0 && sweeper) {
    clearInterval(sweeper);
    sweeper = null;
  }
}

function track(p: Live): void {
  live.add(p);
  if (!sweeper) {
    now = Date.now();
    sweeper = setInterval(sweep, Math.min(1000, Math.max(10, p.idleMs / 4)));
    sweeper.unref();
  }
}

/** Moves data from `src` to `dst`, pausing `src` while `dst` has queued writes. */
function forward(src: Socket, dst: Socket, stamp: Live | null): void {
  src.on("data", (chunk: Buffer) => {
    if (stamp) stamp.lastActive = now;
    if (!dst.write(chunk)) src.pause();
  });
  dst.on("drain", () => src.resume());
  src.once("end", () => dst.end());
}

export function joinSockets(down: Socket, up: Socket, idleTimeoutMs: number, onClose: (r: PipeResult) => void): Pipe {
  let error: Error | null = null;
  let open = 2;
  const destroy = (reason?: Error): void => {
    if (reason && !error) error = reason;
    down.destroy();
    up.destroy();
  };
  const stamp: Live | null = idleTimeoutMs > 0 ? { lastActive: Date.now(), idleMs: idleTimeoutMs, destroy } : null;
  if (stamp) track(stamp);
  const closed = (other: Socket) => (hadError: boolean) => {
    // A clean close means this side's read ended and its write finished, which (through the
    // forwarding) means the other side's read ended too: it closes by itself once its writes
    // flush. Anything else (an error, a reset, a destroy) tears the other side down now.
    if (hadError || !other.readableEnded) other.destroy();
    if (--open === 0) {
      if (stamp) live.delete(stamp);
      onClose({ downstreamBytesIn: down.bytesRead, upstreamBytesIn: up.bytesRead, error });
    }
  };
  const failed = (e: Error) => destroy(e);
  down.on("error", failed);
  up.on("error", failed);
  down.once("close", closed(up));
  up.once("close", closed(down));
  forward(down, up, stamp);
  forward(up, down, stamp);
  return { destroy };
}
