// Originating mTLS to a mesh endpoint: our leaf, the cluster's SNI, chain verified against our
// roots, and the server's SPIFFE ID checked against the one we meant to reach. TLS sessions
// are cached per endpoint and resumed, so reconnects skip the full handshake.
import { connect as tlsConnect, type ConnectionOptions, type PeerCertificate, type TLSSocket } from "node:tls";
import { connect as netConnect, type OnReadOpts, type Socket } from "node:net";
import { checkServerIdentity } from "../identity/peer.js";
import type { TlsMaterial } from "./contexts.js";
import { connectDeadline } from "../tcp/connect-deadline.js";

declare module "node:tls" {
  interface TLSSocket {
    /** Node's own (tls.connect calls it); missing from @types/node. */
    setSession(session: Buffer): void;
  }
}

export class UpstreamTlsError extends Error {
  constructor(
    readonly kind: "timeout" | "identity" | "connect",
    message: string,
  ) {
    super(message);
    this.name = "UpstreamTlsError";
  }
}

export interface OriginTarget {
  readonly host: string;
  readonly port: number;
  readonly sni: string;
  readonly expectedSpiffeId: string;
  readonly timeoutMs: number;
  readonly alpn?: readonly string[];
  /** Deliver reads here instead of through the socket's Readable side (the L4 pipe). */
  readonly onread?: OnReadOpts;
}

/**
 * A cached session is reused for new connections until it is this old; only then does a
 * connection ask for a fresh one. TLS 1.3 servers send new tickets after every handshake, and
 * taking each one costs the client a serialisation per ticket; the tickets stay valid for the
 * server's session lifetime (300 s by default in Node and Envoy), well past this.
 */
const SESSION_REFRESH_MS = 60_000;

/**
 * Resumable sessions, keyed by endpoint and the TLS material they were made with. Each is offered
 * only until the server leaf it was verified with expires: a resumed session restores that leaf
 * without checking it again, so an expired one would still be accepted (for as long as the server
 * keeps the session), where a full handshake refuses it.
 */
export class SessionCache {
  private readonly sessions = new Map<string, { readonly session: Buffer; readonly at: number; readonly notAfter: number }>();
  private materialKey = "";

  reset(materialKey: string): void {
    if (materialKey === this.materialKey) return;
    this.materialKey = materialKey;
    this.sessions.clear();
  }

  get(key: string, now = Date.now()): Buffer | undefined {
    const s = this.sessions.get(key);
    if (s === undefined || now <= s.notAfter) return s?.session;
    this.sessions.delete(key);
    return undefined;
  }

  /** The notAfter of the server leaf the session for `key` was verified with (NaN: none). */
  peerNotAfter(key: string): number {
    return this.sessions.get(key)?.notAfter ?? NaN;
  }

  /** True when there is no session for `key`, or it is old enough to be replaced. */
  wants(key: string, now = Date.now()): boolean {
    const s = this.sessions.get(key);
    return s === undefined || now - s.at >= SESSION_REFRESH_MS;
  }

  /**
   * Keeps `session`, made with the material `materialKey`, unless the material changed since: a
   * TLS 1.3 ticket arrives after the handshake, so a connection begun before a renewal can deliver
   * its ticket after reset(), and resuming it would present the old leaf (expired, with short
   * leaves: the peer refuses the connection).
   */
  set(key: string, session: Buffer, materialKey: string, peerNotAfter: number): void {
    // A cache never reset (no material yet: tests, the gateway) keeps what it is given.
    if (this.materialKey !== "" && materialKey !== this.materialKey) return;
    // No known expiry (NaN) is never offered: get() compares `now <= NaN`, which is false.
    if (this.sessions.size > 4096) this.sessions.clear();
    this.sessions.set(key, { session, at: Date.now(), notAfter: peerNotAfter });
  }

  delete(key: string): void {
    this.sessions.delete(key);
  }
}

export function originate(target: OriginTarget, tls: TlsMaterial, sessions: SessionCache, done: (err: UpstreamTlsError | null, s: TLSSocket) => void): TLSSocket {
  // Node skips checkServerIdentity on a resumed session, so a session is only ever offered
  // again for the same endpoint AND the same expected identity it was verified against. A resumed
  // session also skips the peer's verification against our roots and carries the client
  // certificate it was made with, so it is offered only under the same TLS material: a session
  // can never present an old identity or leaf, nor skip a root that has since been dropped.
  const key = `${target.host}:${target.port}/${target.sni}/${target.expectedSpiffeId}/${tls.key}`;
  let identityError: Error | undefined;
  // The server leaf's notAfter: read in a full handshake; a resumed one restores the leaf of the
  // session it resumed, whose notAfter the cache kept.
  let peerNotAfter = sessions.peerNotAfter(key);
  const session = sessions.get(key);
  const common = {
    servername: target.sni,
    secureContext: tls.clientContext,
    rejectUnauthorized: true,
    ...(target.alpn ? { ALPNProtocols: [...target.alpn] } : {}),
    checkServerIdentity: (_host: string, cert: PeerCertificate) => {
      peerNotAfter = Date.parse(cert.valid_to);
      return (identityError = checkServerIdentity(cert.subjectaltname, target.expectedSpiffeId));
    },
  };
  // Node ignores `onread` on a TLS socket layered over a socket of our own, so the L4 pipe lets
  // tls.connect dial; otherwise (pools) our own TCP socket, so half-close and Nagle are set where
  // they take effect.
  let tcp: Socket | null = null;
  let socket: TLSSocket;
  if (target.onread) {
    // tls.connect honours allowHalfOpen and onread (documented) though @types/node lists neither.
    const direct: ConnectionOptions & { readonly allowHalfOpen: boolean; readonly onread: OnReadOpts } = { host: target.host, port: target.port, allowHalfOpen: true, onread: target.onread, ...common };
    socket = tlsConnect(direct).setNoDelay(true);
  } else {
    tcp = netConnect({ host: target.host, port: target.port, allowHalfOpen: true, noDelay: true });
    socket = tlsConnect({ socket: tcp, ...common });
  }
  // The session goes in after tls.connect, not as its `session` option: given that option, Node
  // parses the session (and the server certificate chain in it) twice, once in the socket's
  // constructor and once more in tls.connect; one parse was ~20 % of the client sidecar's CPU per
  // new connection. The handshake starts once the TCP connection is up, so this is in time.
  if (session) socket.setSession(session);
  let settled = false;
  const settle = (err: UpstreamTlsError | null) => {
    if (settled) return;
    settled = true;
    cancelDeadline();
    socket.off("error", onError);
    if (err) {
      sessions.delete(key);
      socket.destroy();
      tcp?.destroy();
    }
    done(err, socket);
  };
  const cancelDeadline = connectDeadline(target.timeoutMs, () => !settled, () => settle(new UpstreamTlsError("timeout", `connect to ${target.host}:${target.port} timed out after ${target.timeoutMs} ms`)));
  const onError = (e: Error) => {
    if (identityError) settle(new UpstreamTlsError("identity", `${target.host}:${target.port}: ${identityError.message}`));
    else settle(new UpstreamTlsError("connect", `${target.host}:${target.port}: ${e.message}`));
  };
  socket.on("error", onError);
  // After the handshake the pipe owns error handling; the raw socket's errors surface on the TLS one.
  tcp?.on("error", (e) => (settled ? socket.destroy(e) : onError(e)));
  // Node serialises new sessions only while a "session" listener is attached.
  const store = (s: Buffer): void => sessions.set(key, s, tls.key, peerNotAfter);
  const wanted = sessions.wants(key);
  if (wanted) socket.on("session", store);
  socket.once("secureConnect", () => {
    // The cached session was refused (the server's ticket keys changed): take the new tickets,
    // which TLS 1.3 sends after the handshake.
    if (!wanted && !socket.isSessionReused()) socket.on("session", store);
    settle(null);
  });
  return socket;
}
