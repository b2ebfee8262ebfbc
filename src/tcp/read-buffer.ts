// One read buffer for every socket this process reads with `onread` (the L4 pipe's dialled
// sockets, the HTTP/1 core's connections to the app). Node otherwise hands
// each read a fresh allocation (64 KiB on a plain socket, 16 KiB from TLS, shrunk afterwards) as
// a new ArrayBuffer and runs it through the Readable machinery: a push, a 'data' event and a
// nextTick per read. A read's callback runs to completion before the next read into the buffer,
// so whatever outlives the callback must be a copy.
import type { OnReadOpts } from "node:net";

export const sharedReadBuffer = Buffer.allocUnsafe(64 * 1024);

/** `onread` options that hand each read (a view of the shared buffer) to `deliver`; false from it stops reading. */
export function readsInto(deliver: (data: Buffer) => boolean): OnReadOpts {
  return { buffer: sharedReadBuffer, callback: (n, buf) => deliver(Buffer.from(buf.buffer, buf.byteOffset, n)) };
}

/** Whether `chunk` is (part of) the shared buffer, which the next read overwrites. */
export function borrowsReadBuffer(chunk: Uint8Array): boolean {
  return chunk.buffer === sharedReadBuffer.buffer;
}
