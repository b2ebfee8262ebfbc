// undici, loaded on first need: it is ~10 MB of a sidecar's memory (with the copy of undici inside
// Node that it wakes) and ~40 ms at start. A sidecar whose HTTP is HTTP/1.1 end to end never
// needs it (the llhttp core serves both hops); the proxy loads it before applying a Snapshot with
// an HTTP/2 cluster or an h2c app, the node:http paths a Snapshot cannot predict (an app sending
// h2c to an HTTP/1.1 upstream, the inbound node:http engine after a failed core self-test) load
// it on their first request, and the CLI before a Consul agent or app-metrics client.
type Undici = typeof import("undici");

let mod: Undici | null = null;
let loading: Promise<Undici> | null = null;

export function loadUndici(): Promise<Undici> {
  loading ??= import("undici").then((m) => (mod = m));
  return loading;
}

/** Whether undici() may be called now. */
export function undiciLoaded(): boolean {
  return mod !== null;
}

/** The loaded module; calling this before loadUndici() has resolved is a bug, said loudly. */
export function undici(): Undici {
  if (!mod) throw new Error("internal error: undici used before loadUndici() finished");
  return mod;
}
