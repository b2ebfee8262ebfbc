// Message heads held until the read that produced them has been parsed. A forwarded answer is
// usually parsed from one read (head, body, end, all inside one `execute`), and the head waiting
// for its body lets both leave in one write: one TLS record, one syscall, and none of a cork's
// cost (an entry in the Writable's buffer per chunk, a writev, a nextTick per response). A
// request head with a small body (buffered for retries) waits for it the same way. What is still
// held when the outermost parse ends is written then; a head written outside any parse (a local
// reply after an async step, a timer, a request sent once routed) is written at the next tick,
// as a cork would.
import type { Http1Parser, ParseFailure } from "./parser.js";

export interface HeldWrite {
  /** Writes what is held now (idempotent: nothing held, nothing written). */
  flushHeld(): void;
}

/** A held head and a body chunk this small leave as one buffer (one TLS record's worth). */
export const JOIN_MAX = 16 * 1024;

/** `head` (latin1) and `chunk` in one buffer, for one write. */
export function joinHead(head: string, chunk: Buffer): Buffer {
  const joined = Buffer.allocUnsafe(head.length + chunk.length);
  joined.write(head, 0, "latin1");
  joined.set(chunk, head.length);
  return joined;
}

let parses = 0;
const held: HeldWrite[] = [];
let tickQueued = false;

/** `w` holds a write until the current parse ends (or the next tick, outside a parse). */
export function holdWrite(w: HeldWrite): void {
  held.push(w);
  if (parses === 0 && !tickQueued) {
    tickQueued = true;
    process.nextTick(flushOnTick);
  }
}

/** A parse whose callbacks may hold writes starts; pair with parseEnded in a `finally`. */
export function parseStarted(): void {
  parses++;
}

export function parseEnded(): void {
  if (--parses === 0 && held.length > 0) flushAll();
}

/** `parser.execute(data)` as a parse whose callbacks may hold writes: they go out when it returns. */
export function executeHolding(parser: Http1Parser, data: Buffer): number | ParseFailure {
  parseStarted();
  try {
    return parser.execute(data);
  } finally {
    parseEnded();
  }
}

function flushOnTick(): void {
  tickQueued = false;
  // A tick never runs inside a parse; the guard keeps a stray count from flushing mid-parse.
  if (parses === 0) flushAll();
}

function flushAll(): void {
  // A flush may hold another write (a pipelined answer starting): it is flushed in this loop too.
  for (let i = 0; i < held.length; i++) held[i]!.flushHeld();
  held.length = 0;
}
