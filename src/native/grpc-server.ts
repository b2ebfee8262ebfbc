// gRPC servers of a Connect-native service. The app's grpc-js Server (with its services) is fed
// connections this library accepted: a TLS server of the service, attached like any other
// (service.ts attach), verifies each caller's certificate and SPIFFE ID and checks L4
// intentions before grpc-js sees a byte, then the connection is handed to grpc-js through its
// connection injector. Every call is then authorized again, before its handler runs, by an
// interceptor: grpc-js gives no per-stream hook, and the interceptor sees exactly the method
// grpc-js dispatches and the metadata the handler receives.
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket, type TlsOptions } from "node:tls";
import type { Logger } from "../telemetry/log.js";
import { verifiedPeer, type CallView, type InboundGate, type Peer } from "./inbound.js";
import type { GrpcConnectionInfo, GrpcMetadata, GrpcModule, GrpcServer, GrpcServerCall, GrpcServerListener } from "./grpc-types.js";

/** gRPC status codes (grpc/doc/statuscodes.md). */
const PERMISSION_DENIED = 7;
const UNAUTHENTICATED = 16;

/**
 * Request headers grpc-js reads and removes before an interceptor or the handler sees the
 * metadata. A permission that matches on one of them (or on a pseudo-header, or a binary
 * header, which grpc-js has decoded) cannot be decided on what the handler receives.
 */
const CONSUMED = new Set(["content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "accept-encoding"]);

/** The verified caller of each call, keyed by the metadata object its handler receives. */
const callers = new WeakMap<object, Peer>();

/** The verified caller of a call a mesh gRPC server's handler received, or null. */
export function peerOfCall(call: { readonly metadata?: unknown }): Peer | null {
  const m = call.metadata;
  return typeof m === "object" && m !== null ? (callers.get(m) ?? null) : null;
}

/** A call's metadata as L7 permissions read it; records a read the handler could not match. */
class MetadataView implements CallView {
  unreadable: string | null = null;

  constructor(
    readonly path: string,
    private readonly metadata: GrpcMetadata,
  ) {}

  header(name: string): string | undefined {
    if (name.startsWith(":") || name.endsWith("-bin") || CONSUMED.has(name)) {
      this.unreadable ??= `header "${name}"`;
      return undefined;
    }
    const values = this.metadata.get(name);
    if (values.length === 0) return undefined;
    return values.length === 1 ? String(values[0]) : values.map(String).join(", ");
  }
}

/** A TCP connection's four-tuple: unique among the live connections of a host. */
function connectionKey(remoteAddress: string | undefined, remotePort: number | undefined, localAddress: string | undefined, localPort: number | undefined): string {
  return `${remoteAddress}|${remotePort}|${localAddress}|${localPort}`;
}

function keyOfCall(info: GrpcConnectionInfo): string {
  return connectionKey(info.remoteAddress, info.remotePort, info.localAddress, info.localPort);
}

/**
 * A TLS server (not yet attached, not listening) whose verified connections go to `server`.
 * Closing it stops new connections and closes its gRPC connections gracefully (GOAWAY: calls
 * in flight finish).
 */
export function createGrpcListener<Call extends GrpcServerCall, Meta extends GrpcMetadata, Intercepting, CallCreds>(
  grpc: GrpcModule<Call, Meta, Intercepting, CallCreds>,
  server: GrpcServer,
  gate: () => InboundGate,
  options: TlsOptions,
  log: Logger,
): TlsServer {
  // The caller of each connection this listener handed to grpc-js, found again by the call's
  // connection four-tuple (what grpc-js tells an interceptor about its connection).
  const peers = new Map<string, Peer>();
  const interceptor = (method: { readonly path: string }, call: Call): Intercepting => {
    const listener: GrpcServerListener<Meta> = {
      onReceiveMetadata(metadata, next) {
        const peer = peers.get(keyOfCall(call.getConnectionInfo()));
        if (peer === undefined) {
          call.sendStatus({ code: UNAUTHENTICATED, details: "no verified caller on this connection" });
          return;
        }
        const refusal = gate().authorizeCall(peer, new MetadataView(method.path, metadata));
        if (refusal !== null) {
          call.sendStatus({ code: PERMISSION_DENIED, details: refusal });
          return;
        }
        callers.set(metadata, peer);
        next(metadata);
      },
    };
    return new grpc.ServerInterceptingCall(call, { start: (next) => next(listener) });
  };
  const credentials = grpc.experimental.createServerCredentialsWithInterceptors(grpc.ServerCredentials.createInsecure(), [interceptor]);
  const injector = server.createConnectionInjector(credentials);
  // h2 only: gRPC is HTTP/2, and a client that cannot negotiate it is refused in the handshake.
  const listener = createTlsServer({ ...options, ALPNProtocols: ["h2"] });
  listener.on("secureConnection", (socket: TLSSocket) => {
    // Only connections the gate admitted get here (attach guards the server's emit).
    const peer = verifiedPeer(socket);
    if (peer === null) {
      socket.destroy();
      return;
    }
    const key = connectionKey(socket.remoteAddress, socket.remotePort, socket.localAddress, socket.localPort);
    peers.set(key, peer);
    socket.once("close", () => {
      if (peers.get(key) === peer) peers.delete(key);
    });
    socket.on("error", (e: Error) => log.debug("grpc connection error", { peer: peer.spiffeId, error: e.message }));
    injector.injectConnection(socket);
  });
  listener.once("close", () => injector.destroy());
  return listener;
}
