// gRPC clients of a Connect-native service. A grpc-js channel to `meshproxy://<service id>/<name>`
// gets its addresses from a resolver of ours (the upstream's healthy, non-ejected instances as
// the current Snapshot has them, republished on every Snapshot) and balances calls across them
// round-robin; each connection it opens is wrapped in mTLS by our channel credentials: this
// service's current leaf, the cluster's SNI, the chain verified against the current roots and
// the server's SPIFFE ID checked against the service named (not a hostname).
import { connect as tlsConnect, type PeerCertificate } from "node:tls";
import type { Socket } from "node:net";
import type { ClusterRuntime } from "../cluster/runtime.js";
import type { TlsMaterial } from "../tls/contexts.js";
import { checkServerIdentity } from "../identity/peer.js";
import { connectDeadline } from "../tcp/connect-deadline.js";
import type { ResolvedUpstream } from "./dispatcher.js";
import type {
  GrpcChannelCredentials,
  GrpcEndpoint,
  GrpcMetadata,
  GrpcModule,
  GrpcResolverConstructor,
  GrpcResolverListener,
  GrpcSecureConnector,
  GrpcServerCall,
  GrpcServiceConfig,
  GrpcUri,
} from "./grpc-types.js";

export const GRPC_SCHEME = "meshproxy";

/** gRPC status UNAVAILABLE: what a channel reports while no instance can be reached. */
const UNAVAILABLE = 14;

/** What the gRPC client needs from its Service. */
export interface GrpcClientHost {
  known(service: string): ResolvedUpstream | null;
  resolve(service: string): Promise<ResolvedUpstream>;
  readonly clusters: ReadonlyMap<string, ClusterRuntime>;
  /** The TLS material in force: each new connection takes the newest leaf and roots. */
  tls(): TlsMaterial;
  /** Calls `fn` after each applied Snapshot; returns the unsubscribe. */
  onSnapshot(fn: () => void): () => void;
}

/** Marks the channel credentials made here. */
const MESH_CREDENTIALS = Symbol("meshproxy.grpcCredentials");

/** Services with gRPC clients, by the id their channels' targets carry. */
const hosts = new Map<string, GrpcClientHost>();

/** Per grpc-js module (an app may load more than one copy): our resolver, registered once. */
const registered = new WeakSet<object>();

export function registerGrpcHost(id: string, host: GrpcClientHost): () => void {
  hosts.set(id, host);
  return () => {
    if (hosts.get(id) === host) hosts.delete(id);
  };
}

const ROUND_ROBIN: GrpcServiceConfig = { loadBalancingConfig: [{ round_robin: {} }], methodConfig: [] };

/** The addresses calls may go to: healthy and not ejected, or every host when the cluster is in panic (Envoy). */
function endpointsOf(runtime: ClusterRuntime): GrpcEndpoint[] {
  const status = runtime.hostsSnapshot();
  const usable = status.panic ? status.hosts : status.hosts.filter((h) => h.healthy && !h.ejected);
  return usable.map((h) => ({ addresses: [{ host: h.host, port: h.port }] }));
}

function makeResolver<Meta extends GrpcMetadata>(grpc: { readonly Metadata: new () => Meta }): GrpcResolverConstructor<Meta> {
  return class MeshResolver {
    private readonly host: GrpcClientHost | undefined;
    private unsubscribe: (() => void) | null = null;
    /** The addresses last given to the channel; "" when none were (yet, or the last answer was an error). */
    private published = "";
    private lastFailure = 0;
    private pending: NodeJS.Timeout | null = null;
    private destroyed = false;

    static getDefaultAuthority(target: GrpcUri): string {
      return `${target.path}.service.consul`;
    }

    constructor(
      private readonly target: GrpcUri,
      private readonly listener: GrpcResolverListener<Meta>,
      _options: object,
    ) {
      this.host = hosts.get(target.authority ?? "");
    }

    /**
     * grpc-js asks again whenever its balancer is in TRANSIENT_FAILURE, and takes every answer
     * as news, so answering each ask spins it. The channel is told of every change when a
     * Snapshot is applied; an ask is answered only while it has no addresses from us, and after
     * an error at most once a second. Never synchronously (grpc-js's Resolver contract).
     */
    updateResolution(): void {
      this.destroyed = false;
      if (this.host && this.unsubscribe === null) this.unsubscribe = this.host.onSnapshot(() => this.publish(false));
      if (this.published !== "" || this.pending !== null) return;
      this.pending = setTimeout(() => {
        this.pending = null;
        this.publish(true);
      }, Math.max(0, this.lastFailure + 1_000 - Date.now()));
      this.pending.unref();
    }

    destroy(): void {
      this.destroyed = true;
      this.unsubscribe?.();
      this.unsubscribe = null;
      if (this.pending) clearTimeout(this.pending);
      this.pending = null;
      this.published = "";
    }

    private fail(details: string): void {
      this.published = "";
      this.lastFailure = Date.now();
      this.listener({ ok: false, error: { code: UNAVAILABLE, details, metadata: new grpc.Metadata() } }, {}, null, details);
    }

    private publish(asked: boolean): void {
      if (this.destroyed) return;
      const service = this.target.path;
      const host = this.host;
      if (host === undefined) return this.fail(`${GRPC_SCHEME}://${this.target.authority ?? ""}/${service}: no open Service has this id (closed, or the target was not made by svc.grpcClient)`);
      const upstream = host.known(service);
      if (upstream === null) {
        host.resolve(service).then(
          () => this.publish(true),
          (e: unknown) => {
            if (!this.destroyed) this.fail(e instanceof Error ? e.message : String(e));
          },
        );
        return;
      }
      const runtime = host.clusters.get(upstream.listener.cluster);
      if (runtime === undefined) return this.fail(`upstream "${service}": cluster "${upstream.listener.cluster}" is not configured`);
      const endpoints = endpointsOf(runtime);
      if (endpoints.length === 0) return this.fail(runtime.describeUnavailable());
      const key = endpoints.map((e) => `${e.addresses[0]?.host}:${e.addresses[0]?.port}`).join(",");
      // A Snapshot that changed nothing for this service is not news to the channel.
      if (!asked && key === this.published) return;
      this.published = key;
      this.listener({ ok: true, value: endpoints }, {}, { ok: true, value: ROUND_ROBIN }, "");
    }
  };
}

/** Wraps the TCP connection grpc-js opened to an instance of `service` in the mesh's mTLS. */
function connectMtls(host: GrpcClientHost, service: string, socket: Socket): Promise<{ socket: Socket; secure: boolean }> {
  const upstream = host.known(service);
  const runtime = upstream ? host.clusters.get(upstream.listener.cluster) : undefined;
  if (runtime === undefined) return Promise.reject(new Error(`upstream "${service}" is not resolved (yet); the channel retries`));
  const { sni, expectedSpiffeId, connectTimeoutMs } = runtime.config;
  const where = `${socket.remoteAddress}:${socket.remotePort}`;
  return new Promise((resolve, reject) => {
    let identityError: Error | undefined;
    const tls = tlsConnect({
      socket,
      servername: sni,
      secureContext: host.tls().clientContext,
      rejectUnauthorized: true,
      ALPNProtocols: ["h2"],
      checkServerIdentity: (_host: string, cert: PeerCertificate) => (identityError = checkServerIdentity(cert.subjectaltname, expectedSpiffeId)),
    });
    let secure = false;
    const cancelDeadline = connectDeadline(connectTimeoutMs, () => !secure, () => fail(new Error(`mTLS handshake with ${where} timed out after ${connectTimeoutMs} ms`)));
    const fail = (e: Error): void => {
      cancelDeadline();
      tls.destroy();
      reject(new Error(`${where} (${service}): ${identityError ? identityError.message : e.message}`));
    };
    tls.once("error", fail);
    tls.once("secureConnect", () => {
      secure = true;
      cancelDeadline();
      tls.off("error", fail);
      resolve({ socket: tls, secure: true });
    });
  });
}

/**
 * Mesh channel credentials for one grpc-js module: a subclass of that module's own
 * ChannelCredentials (grpc-js accepts no other), reading the target's Service at connect time.
 */
export function makeChannelCredentials<Call extends GrpcServerCall, Meta extends GrpcMetadata, Intercepting, CallCreds>(grpc: GrpcModule<Call, Meta, Intercepting, CallCreds>): GrpcChannelCredentials<CallCreds> {
  if (!registered.has(grpc)) {
    grpc.experimental.registerResolver(GRPC_SCHEME, makeResolver(grpc));
    registered.add(grpc);
  }
  class MeshChannelCredentials extends grpc.ChannelCredentials {
    readonly [MESH_CREDENTIALS] = true;

    override _isSecure(): boolean {
      return true;
    }

    /** Stateless (the target names the Service), so any two are the same: channels share subchannels. */
    override _equals(other: GrpcChannelCredentials<CallCreds>): boolean {
      return MESH_CREDENTIALS in other;
    }

    override _createSecureConnector(target: GrpcUri, _options: object, callCredentials?: CallCreds): GrpcSecureConnector<CallCreds> {
      const service = target.path;
      const call = callCredentials ?? grpc.CallCredentials.createEmpty();
      return {
        connect(socket: Socket) {
          const host = target.scheme === GRPC_SCHEME ? hosts.get(target.authority ?? "") : undefined;
          if (host === undefined) return Promise.reject(new Error(`${target.scheme ?? ""}://${target.authority ?? ""}/${service}: mesh credentials only connect channels made by svc.grpcClient / svc.grpcTarget of an open Service`));
          return connectMtls(host, service, socket);
        },
        waitForReady: () => Promise.resolve(),
        getCallCredentials: () => call,
        destroy() {},
      };
    }
  }
  return new MeshChannelCredentials();
}
