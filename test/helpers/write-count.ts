// Counts a socket's writes at net.Socket's `_writeGeneric`, the step below write() and writev
// (one call per write, or per corked batch) on Node 20 to 24. Returns false where a Node has no
// such step, and the caller then skips its count.
import type { Socket } from "node:net";

export function countWrites(s: Socket, onWrite: () => void): boolean {
  const generic: unknown = Reflect.get(s, "_writeGeneric");
  if (typeof generic !== "function") return false;
  Reflect.set(s, "_writeGeneric", function (this: Socket, ...args: unknown[]): unknown {
    onWrite();
    const r: unknown = Reflect.apply(generic, this, args);
    return r;
  });
  return true;
}
