// One read buffer for every socket this process reads with `onread` (the L4 pipe's sockets, the
// HTTP/1 core's connections to the app). Node otherwise hands each read a fresh allocation
// (64 KiB on a plain socket, 16 KiB from TLS, shrunk afterwards) as a new ArrayBuffer and runs it
// through the Readable machinery: a push, a 'data' event and a nextTick per read. A read's
// callback runs to completion before the next read into the buffer, so whatever outlives the
// callback must be a copy.
import { type OnReadOpts, Socket, type SocketConstructorOpts } from "node:net";

export const sharedReadBuffer = Buffer.allocUnsafe(64 * 1024);

/** `onread` options that hand each read (a view of the shared buffer) to `deliver`; false from it stops reading. */
export function readsInto(deliver: (data: Buffer) => boolean): OnReadOpts {
  return { buffer: sharedReadBuffer, callback: viewsOf(deliver) };
}

/** The `onread` callback: each read as a view of the buffer it landed in. */
function viewsOf(deliver: (data: Buffer) => boolean): (n: number, buf: Uint8Array) => boolean {
  return (n, buf) => deliver(Buffer.from(buf.buffer, buf.byteOffset, n));
}

/** Whether `chunk` is (part of) the shared buffer, which the next read overwrites. */
export function borrowsReadBuffer(chunk: Uint8Array): boolean {
  return chunk.buffer === sharedReadBuffer.buffer;
}

// Accepted sockets. Node takes `onread` only where it creates a socket from options
// (net.connect, tls.connect); a socket a server accepts, and the TLS socket a TLS server builds
// on it, always read through the Readable path. What `onread` sets up is small: net.Socket's
// constructor stores the buffer and the callback in three fields keyed by private symbols
// (kBuffer, kBufferCb, kBufferGen), calls `useUserBuffer` on the handle, and from then on
// onStreamRead, pause() and resume() take the `onread` branch whenever kBuffer is set. So an
// accepted socket is switched by setting those fields and calling `useUserBuffer` itself.
//
// The risk is an undocumented API: the symbols are found by their descriptions on a socket of our
// own, and only trusted when a socket built with `onread` holds exactly our buffer and callback
// under them. If a Node release changes any of it, `readAcceptedInto` returns false and the
// caller reads through 'data' events as before (slower, never wrong). Tested on Node 20, 22
// and 24 (test/tcp/read-buffer.test.ts), including backpressure and what was read before the switch.
interface OnReadFields {
  readonly buffer: symbol;
  readonly callback: symbol;
}

interface UserBufferHandle {
  useUserBuffer(buffer: Uint8Array): void;
}

function isUserBufferHandle(h: unknown): h is UserBufferHandle {
  return typeof h === "object" && h !== null && typeof Reflect.get(h, "useUserBuffer") === "function";
}

const onReadFields: OnReadFields | null = findOnReadFields();

function findOnReadFields(): OnReadFields | null {
  const callback = (): boolean => true;
  // net.Socket's constructor takes `onread` (net.connect passes its options through) though @types/node lists it only for connect.
  const options: SocketConstructorOpts & { readonly onread: OnReadOpts } = { onread: { buffer: sharedReadBuffer, callback } };
  const probe = new Socket(options);
  try {
    const own = Object.getOwnPropertySymbols(probe);
    const named = (d: string): symbol | undefined => own.find((s) => s.description === d);
    const buffer = named("kBuffer");
    const cb = named("kBufferCb");
    const generator = named("kBufferGen");
    if (!buffer || !cb || !generator) return null;
    if (Reflect.get(probe, buffer) !== sharedReadBuffer || Reflect.get(probe, cb) !== callback || Reflect.get(probe, generator) !== null) return null;
    // kBufferGen stays null on a socket switched with a fixed buffer, as it is here.
    return { buffer, callback: cb };
  } finally {
    probe.destroy();
  }
}

/** Whether this Node lets `readAcceptedInto` switch accepted sockets (false: they keep 'data' events). */
export const acceptedSocketsReadDirect = onReadFields !== null;

/**
 * Switches `socket` (accepted, or built by a TLS server, with no 'data' listener) to read into the
 * shared buffer like a socket dialled with `onread`. What it had already read waits in its
 * Readable buffer: that goes to `deliver` first, in order, as chunks of its own (`borrowed`
 * false). Returns false, having changed nothing, where the switch cannot be made; the caller then
 * reads 'data' events. As with `onread`, false from `deliver` pauses the socket and `resume()`
 * reads on.
 */
export function readAcceptedInto(socket: Socket, deliver: (data: Buffer, borrowed: boolean) => boolean): boolean {
  const fields = onReadFields;
  const handle: unknown = Reflect.get(socket, "_handle");
  if (fields === null || !isUserBufferHandle(handle) || socket.destroyed || socket.listenerCount("data") > 0 || socket.readableEncoding !== null || Reflect.get(socket, fields.buffer) !== null) return false;
  const callback = viewsOf((data) => deliver(data, true));
  Reflect.set(socket, fields.buffer, sharedReadBuffer);
  Reflect.set(socket, fields.callback, callback);
  handle.useUserBuffer(sharedReadBuffer);
  // Switched before the buffered bytes go out: `deliver` may act on them at once (an upgrade
  // head hands the socket to a new owner through readsBackToStream), and must find the socket
  // as it will stay. No read can land in between: reads arrive on a later turn.
  let flowing = true;
  for (let chunk: unknown = socket.read(); Buffer.isBuffer(chunk); chunk = socket.read()) flowing = deliver(chunk, false) && flowing;
  // Handed on while draining: the new owner decides when to read.
  if (Reflect.get(socket, fields.callback) !== callback || socket.destroyed) return true;
  // As a 'data' listener would: read on unless the owner paused the socket (pauseOnConnect, a
  // peek that stopped it); pause() and resume() now start and stop the handle's reads.
  if (flowing && socket.readableFlowing !== false) socket.resume();
  else socket.pause();
  return true;
}

/**
 * Gives a switched socket back to the Readable path for a new owner that reads 'data' events (an
 * upgraded connection handed over): Node cannot undo `useUserBuffer`, so each read into the
 * shared buffer is copied and pushed, and the Readable's own flow control applies again.
 */
export function readsBackToStream(socket: Socket): void {
  const fields = onReadFields;
  if (fields === null || Reflect.get(socket, fields.buffer) !== sharedReadBuffer) return;
  Reflect.set(socket, fields.callback, (n: number, buf: Uint8Array): boolean => socket.push(Buffer.copyBytesFrom(buf, 0, n)));
}
