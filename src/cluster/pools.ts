// Keep-alive mTLS connection pools between sidecars, per endpoint: an undici Pool (HTTP/2, and
// HTTP/1.1 for Connect-native clients and the node:http engine) or an llhttp OriginPool (the
// HTTP/1 core). Either way the connection comes from one connector (connectEndpoint), so every
// pooled connection carries our leaf, the cluster's SNI, and a verified SPIFFE identity.
import type { Pool } from "undici";
import { undici } from "../http/undici.js";
import type { TLSSocket } from "node:tls";
import { OriginPool } from "../http1/client.js";
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

/**
 * The connector of every pooled connection to a mesh endpoint: mTLS with our leaf, the target's
 * SNI and ALPN, the peer's SPIFFE ID checked; `done` once the connection is verified.
 */
export function connectEndpoint(t: PoolTarget, tls: TlsMaterial, sessions: SessionCache, alpn: readonly string[] | null, done: (err: ConnectFailure | null, s: TLSSocket) => void): TLSSocket {
  return originate(
    { host: t.host, port: t.port, sni: t.sni, expectedSpiffeId: t.expectedSpiffeId, timeoutMs: t.connectTimeoutMs, ...(alpn ? { alpn } : {}) },
    tls,
    sessions,
    (err: UpstreamTlsError | null, s: TLSSocket) => done(err ? new ConnectFailure(err, err.kind === "timeout") : null, s),
  );
}

const H2_ALPN = ["h2", "http/1.1"] as const;

// maxConnections is part of the key: undici fixes a Pool's connection count at construction, so a
// new MaxConnections takes a new pool (the old one finishes its requests and closes). Our identity
// and the trusted roots are too (identityKey); the leaf is not: a renewal reaches new connections
// through useMaterial.
function poolKey(t: PoolTarget, identity: string): string {
  return `${t.host}:${t.port}|${t.sni}|${t.expectedSpiffeId}|${t.http2 ? "h2" : "h1"}|${t.maxConnections}|${identity}`;
}

/**
 * All pools of one proxy. Pools are created on first use and closed (gracefully: in-flight
 * requests finish) when their endpoint leaves the Snapshot or our identity or the trusted roots
 * change (a renewed leaf is used for new connections, useMaterial).
 */
export class PoolSet {
  private readonly pools = new Map<string, Pool>();
  private readonly h1Pools = new Map<string, OriginPool>();

  /** The newest TLS material (useMaterial): new connections of a pool with the same identityKey present its leaf. */
  private latest: TlsMaterial | null = null;

  constructor(private readonly sessions: SessionCache) {}

  /** A Snapshot's TLS material: pools with the same identityKey dial with it from now on. */
  useMaterial(tls: TlsMaterial): void {
    this.latest = tls;
  }

  /** What a pool created with `tls` dials with now: the newest leaf when identity and roots are the same. */
  private material(tls: TlsMaterial): TlsMaterial {
    const l = this.latest;
    return l !== null && l.identityKey === tls.identityKey ? l : tls;
  }

  get(t: PoolTarget, tls: TlsMaterial): Pool {
    const key = poolKey(t, tls.identityKey);
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
          connectEndpoint(t, this.material(tls), this.sessions, t.http2 ? H2_ALPN : null, (err, s) => (err ? cb(err, null) : cb(null, s)));
        },
      });
      this.pools.set(key, p);
    }
    return p;
  }

  /**
   * The HTTP/1 core's pool for an HTTP/1.1 endpoint: the same connector and key (no ALPN, as the
   * undici pool offers none for HTTP/1.1), at most MaxConnections connections (more requests wait, as in undici's Pool).
   */
  getHttp1(t: PoolTarget, tls: TlsMaterial): OriginPool {
    const key = poolKey(t, tls.identityKey);
    let p = this.h1Pools.get(key);
    if (!p) {
      const sessions = this.sessions;
      p = new OriginPool({
        host: t.host,
        port: t.port,
        connectTimeoutMs: t.connectTimeoutMs,
        // undici's keepAliveTimeout as the undici pools have it; a peer's shorter hint wins.
        keepAliveTimeoutMs: 60_000,
        maxConnections: t.maxConnections,
        peer: `upstream ${t.host.includes(":") ? `[${t.host}]` : t.host}:${t.port}`,
        dial: (done) => connectEndpoint(t, this.material(tls), sessions, null, done),
      });
      this.h1Pools.set(key, p);
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
    for (const [key, p] of this.h1Pools) {
      if (keep.has(key)) continue;
      this.h1Pools.delete(key);
      p.closeWhenIdle();
    }
  }

  static key(t: PoolTarget, tls: TlsMaterial): string {
    return poolKey(t, tls.identityKey);
  }

  async closeAll(): Promise<void> {
    const all = [...this.pools.values()];
    this.pools.clear();
    for (const p of this.h1Pools.values()) p.close();
    this.h1Pools.clear();
    await Promise.all(all.map((p) => p.destroy().catch(alreadyClosing)));
  }
}

/** undici rejects close() and destroy() only for a pool that is already closing or destroyed: the end wanted. */
function alreadyClosing(_e: unknown): void {}
