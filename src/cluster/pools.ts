// Keep-alive mTLS connection pools between sidecars, one undici Pool per endpoint. undici does
// the pooling and HTTP; the connection itself comes from our own connector, so every pooled
// connection carries our leaf, the cluster's SNI, and a verified SPIFFE identity.
import type { Pool } from "undici";
import { undici } from "../http/undici.js";
import type { TLSSocket } from "node:tls";
import { originate, type SessionCache, type UpstreamTlsError } from "../tls/origin.js";
import type { TlsMaterial } from "../tls/contexts.js";

export interface PoolTarget {
  readonly host: string;
  readonly port: number;
  readonly sni: string;
  readonly expectedSpiffeId: string;
  readonly connectTimeoutMs: number;
  /** Offer h2 in ALPN and let undici speak it when the peer agrees. */
  readonly http2: boolean;
  readonly maxConnections: number;
}

/** A connect failure the retry logic can tell from an HTTP-level failure. */
export class ConnectFailure extends Error {
  constructor(
    override readonly cause: UpstreamTlsError,
    readonly timeout: boolean,
  ) {
    super(cause.message);
    this.name = "ConnectFailure";
  }
}

export function isConnectFailure(e: unknown): e is ConnectFailure {
  return e instanceof ConnectFailure;
}

// maxConnections is part of the key: undici fixes a Pool's connection count at construction, so a
// new MaxConnections takes a new pool (the old one finishes its requests and closes).
function poolKey(t: PoolTarget, tlsKey: string): string {
  return `${t.host}:${t.port}|${t.sni}|${t.expectedSpiffeId}|${t.http2 ? "h2" : "h1"}|${t.maxConnections}|${tlsKey}`;
}

/**
 * All pools of one proxy. Pools are created on first use and closed (gracefully: in-flight
 * requests finish) when their endpoint leaves the Snapshot or the TLS material changes.
 */
export class PoolSet {
  private readonly pools = new Map<string, Pool>();

  constructor(private readonly sessions: SessionCache) {}

  get(t: PoolTarget, tls: TlsMaterial): Pool {
    const key = poolKey(t, tls.key);
    let p = this.pools.get(key);
    if (!p) {
      p = new (undici().Pool)(`https://${t.host.includes(":") ? `[${t.host}]` : t.host}:${t.port}`, {
        connections: t.maxConnections,
        pipelining: 1,
        allowH2: t.http2,
        keepAliveTimeout: 60_000,
        keepAliveMaxTimeout: 300_000,
        // Route and per-try timeouts are enforced by the router, not by undici's defaults.
        headersTimeout: 0,
        bodyTimeout: 0,
        connect: (_opts, cb) => {
          originate(
            { host: t.host, port: t.port, sni: t.sni, expectedSpiffeId: t.expectedSpiffeId, timeoutMs: t.connectTimeoutMs, ...(t.http2 ? { alpn: ["h2", "http/1.1"] } : {}) },
            tls,
            this.sessions,
            (err: UpstreamTlsError | null, s: TLSSocket) => (err ? cb(new ConnectFailure(err, err.kind === "timeout"), null) : cb(null, s)),
          );
        },
      });
      this.pools.set(key, p);
    }
    return p;
  }

  /** Closes pools whose key is not in `keep` (built from the new Snapshot's endpoints). */
  retain(keep: ReadonlySet<string>): void {
    for (const [key, p] of this.pools) {
      if (keep.has(key)) continue;
      this.pools.delete(key);
      p.close().catch(alreadyClosing);
    }
  }

  static key(t: PoolTarget, tls: TlsMaterial): string {
    return poolKey(t, tls.key);
  }

  async closeAll(): Promise<void> {
    const all = [...this.pools.values()];
    this.pools.clear();
    await Promise.all(all.map((p) => p.destroy().catch(alreadyClosing)));
  }
}

/** undici rejects close() and destroy() only for a pool that is already closing or destroyed: the end wanted. */
function alreadyClosing(_e: unknown): void {}
