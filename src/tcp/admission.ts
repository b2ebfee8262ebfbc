// How many connections a listener takes before it refuses more, decided at accept, before any
// TLS work: Envoy's listener connection limit and overload manager, as process options (Envoy
// puts them in bootstrap config, not in xDS). Refused connections are closed at once and counted.
import { readFileSync } from "node:fs";
import type { DropArgument, Server, Socket } from "node:net";

export interface ListenerLimits {
  /** Downstream connections one listener holds at once (handshaking and established). */
  readonly maxConnections: number;
  /** TLS handshakes in flight on the public listener. */
  readonly maxTlsHandshakes: number;
}

/** Envoy's edge best-practice value for global_downstream_max_connections. */
export const CONNECTIONS_CEILING = 50_000;
/** File descriptors kept back from the connection budget: config files, the admin API, logs, DNS. */
export const RESERVED_FDS = 256;
/** ~2.4 s of handshake CPU on one core at ~2.3 ms each; a peer waits no longer than its 5 s connect timeout. */
export const DEFAULT_MAX_TLS_HANDSHAKES = 1024;

/** The soft RLIMIT_NOFILE (node raises it to the hard limit at start), or null off Linux. */
export function fileDescriptorLimit(): number | null {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/**
 * The limits in force: those given, the rest by default. Every proxied connection holds two
 * descriptors (the caller's and the one to the app or the upstream), so by default a full
 * listener stays inside the limit with RESERVED_FDS to spare; an unknown limit is taken as the
 * traditional 1024. A handshake is a connection, so there are never more than maxConnections.
 */
export function listenerLimits(given: Partial<ListenerLimits> = {}, fdLimit: number | null = fileDescriptorLimit()): ListenerLimits {
  const maxConnections = given.maxConnections ?? Math.max(1, Math.min(CONNECTIONS_CEILING, Math.floor(((fdLimit ?? 1024) - RESERVED_FDS) / 2)));
  return { maxConnections, maxTlsHandshakes: Math.min(given.maxTlsHandshakes ?? DEFAULT_MAX_TLS_HANDSHAKES, maxConnections) };
}

/**
 * Caps a net.Server's connections. Node closes a connection over server.maxConnections before
 * it becomes a Socket (no JS object, no TLS state) and then emits "drop".
 */
export function capConnections(server: Server, max: number, onDrop: (peer: string) => void): void {
  server.maxConnections = max;
  server.on("drop", (d?: DropArgument) => onDrop(`${d?.remoteAddress ?? "?"}:${d?.remotePort ?? "?"}`));
}

/**
 * TLS handshakes in flight, keyed by the connection's addresses so that the TLSSocket node wraps
 * around an admitted socket can be matched to it (node offers no public link between the two).
 * The raw socket closing ends its handshake too, whichever comes first; `settled` runs once per
 * admitted connection.
 */
export class HandshakeGate {
  private readonly inFlight = new Map<string, Socket>();

  constructor(
    private readonly max: number,
    private readonly settled: () => void,
  ) {}

  get size(): number {
    return this.inFlight.size;
  }

  /** False when the cap is reached: the caller closes the socket before TLS sees it. */
  admit(raw: Socket): boolean {
    if (this.inFlight.size >= this.max) return false;
    const key = connectionKey(raw);
    this.inFlight.set(key, raw);
    raw.once("close", () => this.end(key, raw));
    return true;
  }

  /** The handshake on this (TLS) socket ended: secure, or failed. */
  done(s: Socket): void {
    const key = connectionKey(s);
    this.end(key, this.inFlight.get(key));
  }

  private end(key: string, raw: Socket | undefined): void {
    if (raw === undefined || this.inFlight.get(key) !== raw) return;
    this.inFlight.delete(key);
    this.settled();
  }
}

function connectionKey(s: Socket): string {
  return `${s.localAddress ?? ""}|${s.localPort ?? ""}|${s.remoteAddress ?? ""}|${s.remotePort ?? ""}`;
}
