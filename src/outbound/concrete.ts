// The concrete stage every outbound protocol goes through: the cluster the caller named, then its
// failover clusters in order, chooses a host by its load-balancing policy among the hosts that
// are healthy and not ejected. For a stream of its own (an L4 connection, an HTTP upgrade, a
// gateway's passthrough) it also opens the connection: the cluster's MaxConnections breaker, a
// connect failure fed to outlier detection (Envoy's tcp_proxy: LocalOriginConnectFailed) and
// tried again on a host not tried yet, the host's active count held for the connection's life.
// What differs is only how one attempt dials its host: an originated mTLS stream (sidecars) or
// a plain TCP pipe whose bytes are someone else's TLS (the mesh gateway).
import type { TLSSocket } from "node:tls";
import { connect as netConnect, type OnReadOpts, type Socket } from "node:net";
import { originate, UpstreamTlsError, type SessionCache } from "../tls/origin.js";
import type { TlsMaterial } from "../tls/contexts.js";
import type { ClusterHost, ClusterRuntime } from "../cluster/runtime.js";
import type { PickContext } from "../cluster/balancer.js";
import { connectDeadline } from "../tcp/connect-deadline.js";

/**
 * The primary cluster while it has hosts not in `tried`, then its failover clusters in order.
 * With `revisit`, once every host was tried, one of them again (the balancer then drops the
 * exclusion): Consul sets no retry host predicate, and Envoy's previous_hosts gives up after a
 * few picks too, so NumRetries on a one-instance service still retries.
 */
export function clusterWithHosts(primary: ClusterRuntime, clusters: ReadonlyMap<string, ClusterRuntime>, tried: ReadonlySet<string> | undefined, revisit: boolean): ClusterRuntime | null {
  if (primary.hasAvailable(tried)) return primary;
  const failover = primary.config.failover;
  if (failover !== undefined) {
    for (const n of failover) if (clusters.get(n)?.hasAvailable(tried)) return clusters.get(n)!;
  }
  if (!revisit || tried === undefined || tried.size === 0) return null;
  return clusterWithHosts(primary, clusters, undefined, false);
}

export interface Selected {
  readonly cluster: ClusterRuntime;
  readonly host: ClusterHost;
}

/** One host for one attempt, or null when no cluster of the chain has one left. */
export function selectHost(primary: ClusterRuntime, clusters: ReadonlyMap<string, ClusterRuntime>, ctx: PickContext, revisit: boolean): Selected | null {
  const cluster = clusterWithHosts(primary, clusters, ctx.exclude, revisit);
  const host = cluster?.pick(ctx) ?? null;
  return cluster !== null && host !== null ? { cluster, host } : null;
}

/** How many distinct hosts one stream may try to connect to before it gives up. */
export const MAX_CONNECT_ATTEMPTS = 3;

/** What every stream asks of the concrete stage, whatever dials its hosts. */
export interface PipeRequest {
  readonly primary: ClusterRuntime;
  readonly clusters: ReadonlyMap<string, ClusterRuntime>;
  /** The primary cluster's connect timeout as the listener has it; failover clusters use their own. */
  readonly connectTimeoutMs: number;
  /** Reads of the upstream socket go here (the L4 pipe), the same for every attempt. */
  readonly onread?: OnReadOpts;
  /** False once the caller gave up (the client went away while connecting). */
  wanted(): boolean;
  /**
   * One failed attempt, for the caller's metrics; the stream may still go on to another host.
   * A plain dial fails with kind "connect" or "timeout", never "identity".
   */
  attemptFailed(cluster: ClusterRuntime, host: ClusterHost, err: UpstreamTlsError): void;
}

/** A stream the stage originates mTLS for: our leaf, the cluster's SNI and expected identity. */
export interface StreamRequest extends PipeRequest {
  readonly tls: TlsMaterial;
  readonly sessions: SessionCache;
  readonly alpn?: readonly string[];
}

/** An open stream. Its host's count and the connection slot are released when the socket closes. */
export interface OpenConnection<S extends Socket> extends Selected {
  readonly socket: S;
  /** Time from dialling this host to the established (for mTLS: verified) connection, ms. */
  readonly connectMs: number;
  readonly attempts: number;
}

export type OpenStream = OpenConnection<TLSSocket>;
export type OpenPipe = OpenConnection<Socket>;

export type StreamFailure =
  /** No host available in the chain (Envoy's UH). */
  | { readonly flag: "UH"; readonly detail: string }
  /** The cluster's MaxConnections breaker is open (UO, upstream_cx_overflow). */
  | { readonly flag: "UO"; readonly cluster: ClusterRuntime; readonly detail: string }
  /** Every attempt failed to connect (UF). */
  | { readonly flag: "UF"; readonly detail: string };

/** How one attempt reaches one host; module-level functions, so an attempt allocates no closure for it. */
type Dial<R extends PipeRequest, S extends Socket> = (r: R, cluster: ClusterRuntime, host: ClusterHost, timeoutMs: number, done: (err: UpstreamTlsError | null, socket: S) => void) => void;

const dialMtls: Dial<StreamRequest, TLSSocket> = (r, cluster, host, timeoutMs, done) => {
  const c = cluster.config;
  originate(
    {
      host: host.endpoint.host,
      port: host.endpoint.port,
      sni: c.sni,
      expectedSpiffeId: c.expectedSpiffeId,
      timeoutMs,
      ...(r.alpn ? { alpn: r.alpn } : {}),
      ...(r.onread ? { onread: r.onread } : {}),
    },
    r.tls,
    r.sessions,
    done,
  );
};

/**
 * A plain TCP connection whose bytes are the client's own TLS: the gateway neither originates nor
 * terminates anything, so the connection is usable once TCP is up (Envoy's tcp_proxy with no
 * transport socket).
 */
const dialPlain: Dial<PipeRequest, Socket> = (r, _cluster, host, timeoutMs, done) => {
  const { host: address, port } = host.endpoint;
  const socket = netConnect({ host: address, port, allowHalfOpen: true, noDelay: true, ...(r.onread ? { onread: r.onread } : {}) });
  const settle = (err: UpstreamTlsError | null): void => {
    cancelDeadline();
    socket.off("error", onError);
    socket.off("connect", onConnect);
    if (err) socket.destroy();
    done(err, socket);
  };
  const onError = (e: Error): void => settle(new UpstreamTlsError("connect", `${address}:${port}: ${e.message}`));
  const onConnect = (): void => settle(null);
  const cancelDeadline = connectDeadline(timeoutMs, () => socket.connecting, () => settle(new UpstreamTlsError("timeout", `connect to ${address}:${port} timed out after ${timeoutMs} ms`)));
  socket.once("error", onError);
  socket.once("connect", onConnect);
};

/**
 * Opens an mTLS stream through the concrete stage. `done` gets either the open stream or why
 * there is none (a StreamFailure, told apart by its `flag`); it is not called when the caller stopped wanting the stream (wanted() false).
 */
export function openStream(r: StreamRequest, done: (result: OpenStream | StreamFailure) => void): void {
  open(r, dialMtls, done);
}

/** Opens a passthrough pipe (plain TCP) through the concrete stage; otherwise as openStream. */
export function openPipe(r: PipeRequest, done: (result: OpenPipe | StreamFailure) => void): void {
  open(r, dialPlain, done);
}

function open<R extends PipeRequest, S extends Socket>(r: R, dial: Dial<R, S>, done: (result: OpenConnection<S> | StreamFailure) => void): void {
  let tried: Set<string> | null = null;
  const errors: string[] = [];
  const attempt = (n: number): void => {
    const sel = selectHost(r.primary, r.clusters, tried === null ? {} : { exclude: tried }, false);
    if (sel === null) {
      if (errors.length > 0) return done({ flag: "UF", detail: `upstream "${r.primary.name}": ${errors.length} instance(s) failed: ${errors.join("; ")}` });
      return done({ flag: "UH", detail: r.primary.describeUnavailable() });
    }
    const { cluster, host } = sel;
    if (!cluster.breaker.tryAcquireConnection()) {
      return done({ flag: "UO", cluster, detail: `cluster "${cluster.name}": max connections (${cluster.limits.maxConnections}) reached` });
    }
    cluster.begin(host);
    let closed = false;
    const close = (): void => {
      if (closed) return;
      closed = true;
      cluster.end(host);
      cluster.breaker.releaseConnection();
    };
    const dialled = performance.now();
    const timeoutMs = cluster === r.primary ? r.connectTimeoutMs : cluster.config.connectTimeoutMs;
    dial(r, cluster, host, timeoutMs, (err: UpstreamTlsError | null, socket: S) => {
      if (err) {
        close();
        cluster.reportConnect(host, false);
        r.attemptFailed(cluster, host, err);
        if (!r.wanted()) return;
        errors.push(err.message);
        (tried ??= new Set()).add(host.key);
        if (n < MAX_CONNECT_ATTEMPTS) return attempt(n + 1);
        return done({ flag: "UF", detail: `upstream "${r.primary.name}": ${errors.length} instance(s) failed: ${errors.join("; ")}` });
      }
      cluster.reportConnect(host, true);
      if (!r.wanted()) {
        close();
        socket.destroy();
        return;
      }
      socket.once("close", close);
      done({ cluster, host, socket, connectMs: performance.now() - dialled, attempts: n });
    });
  };
  attempt(1);
}
