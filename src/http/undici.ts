// undici, loaded on first need. A sidecar that only pipes TCP never speaks HTTP to anyone and
// does not pay undici's ~10 MB and ~40 ms at start; the proxy loads it before applying the first
// Snapshot with an HTTP listener, and the CLI before a Consul agent or app-metrics client.
type Undici = typeof import("undici");

let mod: Undici | null = null;
let loading: Promise<Undici> | null = null;

export function loadUndici(): Promise<Undici> {
  loading ??= import("undici").then((m) => (mod = m));
  return loading;
}

/** The loaded module; calling this before loadUndici() has resolved is a bug, said loudly. */
export function undici(): Undici {
  if (!mod) throw new Error("internal error: undici used before loadUndici() finished");
  return mod;
}
