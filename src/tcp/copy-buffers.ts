// Copies of the shared read buffer (read-buffer.ts) for writes to sockets. A write keeps its
// buffer until the kernel has taken all of it, which is known only once write() has returned, so
// a chunk read into the shared buffer is copied before it is written. Buffer.copyBytesFrom serves
// small copies from Buffer's pool but gives each copy over half the pool a fresh ArrayBuffer
// (malloc, and external memory that only a later GC frees): on a 1 GiB download through the L4
// pipe, one 16 KiB copy per TLS record cost the client sidecar a third of its CPU and 36-60 MB of
// RSS (PERF-LOG, session 18). Larger copies go into buffers of the read buffer's size instead,
// taken back for the next copy when their write completed at once.
import type { Socket } from "node:net";
import { sharedReadBuffer } from "./read-buffer.js";

/** Any one read into the shared buffer fits. */
export const COPY_BUFFER_BYTES = sharedReadBuffer.length;

/** Copies up to this size come from Buffer's pool (Node's own rule for copyBytesFrom and from). */
const POOLED_BYTES = Buffer.poolSize >>> 1;

/** Buffers whose write completed at once: a few, shared by every socket of the process. */
const spare: Buffer[] = [];
const MAX_SPARE = 4;

/** A buffer of COPY_BUFFER_BYTES to copy into, to be written with writeCopyBuffer. */
export function takeCopyBuffer(): Buffer {
  return spare.pop() ?? Buffer.allocUnsafeSlow(COPY_BUFFER_BYTES);
}

/**
 * Writes the first `n` bytes of `buf` (from takeCopyBuffer) to `dst`; `buf` is reused once the
 * write has completed. Returns write()'s answer (false: `dst` wants no more for now).
 */
export function writeCopyBuffer(dst: Socket, buf: Buffer, n: number): boolean {
  const ok = dst.write(buf.subarray(0, n));
  // Nothing queued: the write completed before write() returned (the kernel took it whole, or it
  // failed), and Node holds no reference to the buffer. A write still queued owns it.
  if (dst.writableLength === 0 && spare.length < MAX_SPARE) spare.push(buf);
  return ok;
}

/** Writes a copy of `data` (a view of the shared read buffer) to `dst`. */
export function writeCopy(dst: Socket, data: Buffer): boolean {
  if (data.length <= POOLED_BYTES || data.length > COPY_BUFFER_BYTES) return dst.write(Buffer.copyBytesFrom(data));
  const buf = takeCopyBuffer();
  buf.set(data);
  return writeCopyBuffer(dst, buf, data.length);
}
