// Two sockets joined both ways: backpressure (a side that cannot take more pauses the other),
// half-close (a FIN from one side becomes end() on the other while the reverse direction keeps
// flowing), an idle timeout, and teardown of both when either fails.
//
// This is the L4 hot path, so it does per chunk only what it must: one write, and a pause when
// the write is queued. stream.pipe() keeps more state per chunk, and socket.setTimeout re-arms
// a timer on every read and write; idleness is instead checked by one sweep for all pipes.
import type { OnReadOpts, Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { readAcceptedInto, readsInto } from "./read-buffer.js";
import { COPY_BUFFER_BYTES, takeCopyBuffer, writeCopy, writeCopyBuffer } from "./copy-buffers.js";

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
  endWhenEnded(src, dst);
}

/**
 * Half-closes `dst` once `src` has ended, including when it ended before the pipe was joined: a
 * caller that completes its TLS handshake and shuts down its side while the local app is still
 * being dialled has already had its 'end' emitted, and waiting for another one left both
 * connections open (and the caller's sidecar waiting on them) until the idle timeout.
 */
function endWhenEnded(src: Socket, dst: Socket, reads?: DirectReads): void {
  const end = reads ? () => reads.end() : () => dst.end();
  if (src.readableEnded) end();
  else src.once("end", end);
}

/**
 * The most cleartext one TLS record carries. Node reads a TLS socket one record at a time, so a
 * read of exactly this much says the peer was sending more than a record at once, and more of
 * the same TCP read is likely to follow within this turn of the event loop.
 */
const FULL_RECORD = 16 * 1024;

/**
 * Reads of a socket we dial ourselves (into the shared read buffer, read-buffer.ts: Node's
 * per-read allocation and its malloc/free were 12-14 % of a sidecar's CPU under keep-alive
 * load), delivered straight into the socket it is joined to: pass
 * `onread` when creating the socket and the instance to `joinSockets`. The next read of any such
 * socket overwrites the shared buffer, so what a write keeps by reference must be a copy:
 * - into TLS: the write encrypts (copies) the cleartext before it returns, unless it waits in the
 *   socket's own queue (an earlier write in flight, or corked): only then is the chunk copied;
 * - into plain TCP: a write the kernel cannot take at once stays referenced until it completes,
 *   and that cannot be known in advance: always copied (copy-buffers.ts: small copies from
 *   Buffer's pool, larger ones into reused buffers).
 *
 * From TLS into plain TCP, full records are also gathered. Node hands a TLS socket's cleartext
 * to JavaScript one record (16 KiB) per callback, and runs the tick queue between callbacks, so
 * corking until a tick does not gather them; written one by one, a bulk stream cost a write
 * syscall per record. Full records are copied into one buffer, written when a shorter record
 * ends the burst, when the buffer is full, or at the end of this turn of the event loop
 * (setImmediate). A stream that sends less than a record at a time is written at once, as before.
 */
export class DirectReads {
  readonly onread: OnReadOpts;
  /** Set by joinSockets: the pipe's idle stamp. */
  stamp: { lastActive: number } | null = null;
  /** Set by joinSockets: the socket these reads come from, paused when a gathered write is refused. */
  source: Socket | null = null;
  private gather: Buffer | null = null;
  private gathered = 0;
  private flushQueued = false;

  static intoTls(dst: TLSSocket): DirectReads {
    return new DirectReads(dst, false, false);
  }

  static intoPlain(dst: Socket): DirectReads {
    return new DirectReads(dst, true, false);
  }

  /** Reads of a TLS socket into a plain one: full records are gathered into fewer writes. */
  static tlsIntoPlain(dst: Socket): DirectReads {
    return new DirectReads(dst, true, true);
  }

  private constructor(
    private readonly dst: Socket,
    private readonly alwaysCopy: boolean,
    private readonly gathers: boolean,
  ) {
    this.onread = readsInto((view) => this.deliver(view));
  }

  /**
   * Switches `src`, a socket a server accepted, to read straight into the destination as well
   * (read-buffer.ts); false where this Node does not allow it, and `src` is read as before.
   */
  readFrom(src: Socket): boolean {
    return readAcceptedInto(src, (data, borrowed) => this.deliver(data, borrowed));
  }

  /** Ends the destination after whatever is still gathered. */
  end(): void {
    this.flush();
    this.dst.end();
  }

  private deliver(data: Buffer, borrowed = true): boolean {
    if (this.stamp) this.stamp.lastActive = now;
    if (this.gathers && (this.gathered > 0 || data.length === FULL_RECORD)) return this.gatherInto(data, borrowed);
    return this.write(data, borrowed);
  }

  private write(data: Buffer, borrowed: boolean): boolean {
    const dst = this.dst;
    if (!borrowed || (!this.alwaysCopy && dst.writableLength === 0 && dst.writableCorked === 0)) return dst.write(data);
    return writeCopy(dst, data);
  }

  private gatherInto(data: Buffer, borrowed: boolean): boolean {
    let ok = true;
    if (this.gathered + data.length > COPY_BUFFER_BYTES) ok = this.flush();
    // Larger than any read: only a chunk that waited in the socket's own buffer before a switch.
    if (data.length > COPY_BUFFER_BYTES) return this.write(data, borrowed) && ok;
    const gather = (this.gather ??= takeCopyBuffer());
    gather.set(data, this.gathered);
    this.gathered += data.length;
    if (data.length < FULL_RECORD || this.gathered === COPY_BUFFER_BYTES) return this.flush() && ok;
    if (!this.flushQueued) {
      this.flushQueued = true;
      setImmediate(DirectReads.flushLater, this);
    }
    return ok;
  }

  /** The deferred flush; static, so a DirectReads that never gathers allocates no closure for it. */
  private static flushLater(this: void, reads: DirectReads): void {
    reads.flushQueued = false;
    if (!reads.flush()) reads.source?.pause();
  }

  /** Writes what is gathered; false when the destination wants no more for now. */
  private flush(): boolean {
    const gather = this.gather;
    const n = this.gathered;
    if (gather === null || n === 0) return true;
    this.gather = null;
    this.gathered = 0;
    if (this.dst.destroyed) return false;
    return writeCopyBuffer(this.dst, gather, n);
  }
}

/**
 * Joins `down` and `up`. With `upReads`, `up` was created with `upReads.onread`: its data already
 * goes to `down` (the socket given to DirectReads); only backpressure and half-close are wired
 * here. With `downReads` (a DirectReads into `up`), `down` is switched to read into `up` the same
 * way where Node allows it.
 */
export function joinSockets(down: Socket, up: Socket, idleTimeoutMs: number, onClose: (r: PipeResult) => void, upReads?: DirectReads, downReads?: DirectReads): Pipe {
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
  if (downReads) {
    downReads.stamp = stamp;
    downReads.source = down;
  }
  if (downReads?.readFrom(down)) {
    up.on("drain", () => down.resume());
    endWhenEnded(down, up, downReads);
  } else {
    forward(down, up, stamp);
  }
  if (upReads) {
    upReads.stamp = stamp;
    upReads.source = up;
    down.on("drain", () => up.resume());
    endWhenEnded(up, down, upReads);
  } else {
    forward(up, down, stamp);
  }
  return { destroy };
}
