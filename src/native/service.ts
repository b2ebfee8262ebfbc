// A Connect-native service: the mesh inside a Node app, without a sidecar (Consul's Go
// `connect.Service`). It takes Snapshots from the same control planes the proxy does, chosen the
// same way, and serves them through the same modules: TLS material (tls/), peer verification
// (identity/), intentions (authz/), cluster runtimes with their balancers, outlier detection and
// pools (cluster/), host choice and mTLS streams (outbound/concrete.ts).
import type { Server as TlsServer, TLSSocket, TlsOptions } from "node:tls";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import { IncomingMessage, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import type { Dispatcher } from "undici";
import type { Snapshot } from "../config/snapshot.js";
import { DEFAULTS } from "../config/snapshot.js";
import { compileSnapshot, SnapshotError, type CompiledSnapshot } from "../compile/snapshot.js";
import { ControlPlaneError, announcementOf, type ControlPlane, type ProxyRequest } from "../controlplane/controlplane.js";
import { consulAgentFromEnv, createControlPlane, devChoice, type ControlPlaneChoice } from "../controlplane/select.js";
import type { AgentClientOptions } from "../controlplane/consul/client.js";
import type { TlsMaterial } from "../tls/contexts.js";
import { SessionCache } from "../tls/origin.js";
import { PoolSet } from "../cluster/pools.js";
import type { ClusterRuntime } from "../cluster/runtime.js";
import { syncClusterRuntimes } from "../cluster/sync.js";
import { openStream, type StreamFailure, type OpenStream } from "../outbound/concrete.js";
import { HttpRouter, OutboundHttpState } from "../outbound/http-router.js";
import { AccessLog, type AccessLogTarget } from "../telemetry/access-log.js";
import { NativeObservers } from "./observe.js";
import { compileRouteTable } from "../compile/routes.js";
import { NO_HEADER_MUTATION, type RouteTable } from "../config/http.js";
import { PermissionCompileError } from "../authz/l7.js";
import { MatchCompileError } from "../http/match.js";
import { RouteCompileError } from "../http/route-match.js";
import { loadUndici } from "../http/undici.js";
import { Metrics } from "../telemetry/metrics.js";
import type { Tracing } from "../telemetry/tracing.js";
import { createLogger, logRejection, type Logger } from "../telemetry/log.js";
import { InboundGate, compileInbound, verifiedPeer, type InboundPolicy, type Peer } from "./inbound.js";
import { Http2ServerRequest } from "node:http2";
import type { MeshDispatcher, ResolvedUpstream, UpstreamResolver } from "./dispatcher.js";
import { targetOfName, upstreamKey, type MeshTarget } from "./names.js";
import { DialError, MeshNameError, NoHealthyUpstreamError } from "./errors.js";
import { clusterWithHosts } from "../outbound/concrete.js";
import type { MeshGatewayMode } from "../controlplane/chain/entries.js";
import { isValidServiceName } from "../config/validate.js";
import { createGrpcListener, peerOfCall } from "./grpc-server.js";
import { GRPC_SCHEME, makeChannelCredentials, registerGrpcHost } from "./grpc-client.js";
import type { GrpcChannelCredentials, GrpcMetadata, GrpcModule, GrpcServer, GrpcServerCall } from "./grpc-types.js";

export type { Peer } from "./inbound.js";
export type { GrpcModule, GrpcServer } from "./grpc-types.js";

/** A channel target and the credentials that go with it (`new grpc.Client(target, credentials)`). */
export interface GrpcChannel<Creds> {
  /** `meshproxy://<this Service>/<service>`: resolved by this Service, balanced round-robin. */
  readonly target: string;
  readonly credentials: Creds;
}

export interface ServiceOptions {
  /** The service this app is: its leaf certificate, intentions and catalog entry are for this name. */
  readonly name: string;
  /** Dev control plane: the state directory (default `$MESHPROXY_DATA_DIR`, else `./.meshproxy`). */
  readonly dataDir?: string;
  /** Dev control plane: this instance's datacenter (default the CA config's, dc1). */
  readonly datacenter?: string;
  /** A Consul agent (as `-http-addr` and friends); selects the Consul control plane. */
  readonly consul?: AgentClientOptions;
  /** A static config file; selects the static control plane (its identity must be `name`). */
  readonly configFile?: string;
  /**
   * Your own control plane (README "Writing your own control plane"); wins over every other
   * choice. Implement `addUpstream` to let the app call services by name.
   */
  readonly controlPlane?: ControlPlane;
  /** Service metadata registered with the instance (subset filters select on it). */
  readonly meta?: Readonly<Record<string, string>>;
  /**
   * How services in other datacenters are reached (Consul's MeshGateway.Mode, as the sidecar's
   * `-mesh-gateway-mode`): `local` through this datacenter's mesh gateways, `remote` through the
   * target datacenter's, `none` straight to the instances. Default: the config entries' say.
   */
  readonly meshGatewayMode?: MeshGatewayMode;
  /** Where logs go; default warnings and errors on stderr. */
  readonly logger?: Logger;
  /**
   * How long the first request to a service may wait for the control plane to resolve it, and
   * how long dial() waits for a healthy instance. Default 5 s.
   */
  readonly resolveTimeoutMs?: number;
  /**
   * How many distinct services the app may call (each is watched until close). Default 256: a URL
   * built from untrusted input must not make the control plane watch without bound.
   */
  readonly maxUpstreams?: number;
  /**
   * Access log of the service's HTTP requests, both ways, in the sidecar's format (as
   * `-access-log`): "off" (default), "stdout", "stderr" or `{ file }`.
   */
  readonly accessLog?: AccessLogTarget;
  /**
   * OpenTelemetry tracing, as the sidecar's `-tracing-endpoint`/`-tracing-sample-rate`: an
   * OTLP/HTTP traces endpoint, and the share of new traces sampled (default 1; a caller's
   * decision always wins). Off when absent.
   */
  readonly tracing?: { readonly endpoint: string; readonly sampleRate?: number };
  /** Environment read for CONSUL_HTTP_ADDR & co. and MESHPROXY_DATA_DIR; default process.env. */
  readonly env?: NodeJS.ProcessEnv;
}

export interface DialOptions {
  /** ALPN protocols to offer, e.g. `["h2"]`; none by default. */
  readonly alpn?: readonly string[];
}


/** The placeholder listener of a native request: the app's own server is the public listener. */
const NATIVE_LISTENER = { bind: { host: "127.0.0.1", port: 0 }, localApp: { host: "127.0.0.1", port: 0 } } as const;

let instances = 0;

/**
 * The route of an upstream that has none (tcp, or http without a router): everything to its
 * cluster, Envoy's 15 s route timeout and 5 min idle timeout, and a failed connect tried once
 * more on another host (no byte left, so any method is safe), as the first round did.
 */
function defaultRoutes(cluster: string): RouteTable {
  return {
    routes: [
      {
        match: { path: { kind: "prefix", value: "/" }, headers: [], queryParams: [], methods: [] },
        action: {
          splits: [{ cluster, weight: 10_000, requestHeaders: NO_HEADER_MUTATION, responseHeaders: NO_HEADER_MUTATION }],
          timeoutMs: 15_000,
          idleTimeoutMs: 300_000,
          retry: { numRetries: 1, retryOn: ["connect-failure"], retriableStatusCodes: [], backoffBaseMs: 25, backoffMaxMs: 250, perTryTimeoutMs: 0 },
          requestHeaders: NO_HEADER_MUTATION,
          responseHeaders: NO_HEADER_MUTATION,
        },
      },
    ],
  };
}

/** The OpenTelemetry SDK is loaded only when tracing is on, as in the sidecar. */
async function startTracing(service: string, o: NonNullable<ServiceOptions["tracing"]>, metrics: Metrics): Promise<Tracing> {
  const sampleRate = o.sampleRate ?? 1;
  if (!(sampleRate >= 0 && sampleRate <= 1)) throw new RangeError(`tracing.sampleRate ${sampleRate}: want a number from 0 to 1, e.g. 0.1`);
  let url: URL;
  try {
    url = new URL(o.endpoint);
  } catch {
    throw new RangeError(`tracing.endpoint "${o.endpoint}": not a URL; want e.g. http://127.0.0.1:4318/v1/traces`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new RangeError(`tracing.endpoint "${o.endpoint}": want an http(s) URL, e.g. http://127.0.0.1:4318/v1/traces`);
  const { Tracing } = await import("../telemetry/tracing.js");
  return new Tracing({ endpoint: o.endpoint, sampleRate, serviceName: service, exportFailures: metrics.tracingExportFailures });
}

/** Options first, then the Consul environment variables, then the dev state directory. */
function choose(o: ServiceOptions, idSuffix: string): ControlPlaneChoice {
  if (o.configFile !== undefined) return { kind: "static", file: o.configFile };
  const env = o.env ?? process.env;
  const agent = o.consul ?? (o.dataDir === undefined ? consulAgentFromEnv(env) : null);
  if (agent) return { kind: "consul", agent, register: { idSuffix }, native: true };
  return devChoice(o.dataDir ?? (env["MESHPROXY_DATA_DIR"] || undefined), o.datacenter);
}

export class Service {
  readonly name: string;
  readonly metrics: Metrics;
  private readonly log: Logger;
  private current: Snapshot | null = null;
  private tls: TlsMaterial | null = null;
  private gate: InboundGate | null = null;
  private readonly sessions = new SessionCache();
  private readonly pools = new PoolSet(this.sessions);
  private readonly runtimes = new Map<string, ClusterRuntime>();
  /** By upstreamKey: `db`, or `db.service.dc2` for another datacenter's. */
  private upstreams = new Map<string, ResolvedUpstream>();
  private readonly resolving = new Map<string, { promise: Promise<ResolvedUpstream>; settle: (u: ResolvedUpstream) => void; fail: (e: Error) => void }>();
  /** Waiters for the next applied Snapshot (dial() waiting for a healthy instance). */
  private readonly applied = new Set<() => void>();
  private meshDispatcher: MeshDispatcher | null = null;
  private obs: NativeObservers | null = null;
  /** The server whose address is registered in the catalog. */
  private registered: TlsServer | null = null;
  private closing: Promise<void> | null = null;
  private readonly resolveTimeoutMs: number;
  private readonly maxUpstreams: number;
  /** Every service the app asked for, resolved or not (what the control plane watches). */
  private readonly asked = new Set<string>();
  /** Told after each applied Snapshot (gRPC channels' resolvers). */
  private readonly snapshotWatchers = new Set<() => void>();
  /** What each gRPC target's key names (`db.service.dc2` → service db in dc2). */
  private readonly grpcTargets = new Map<string, MeshTarget>();
  /** This Service's id in its gRPC channels' targets. */
  private readonly grpcId: string;
  private grpcUnregister: (() => void) | null = null;

  private constructor(
    opts: ServiceOptions,
    private readonly cp: ControlPlane,
    log: Logger,
    idSuffix: string,
  ) {
    this.grpcId = idSuffix;
    this.name = opts.name;
    this.log = log;
    this.metrics = new Metrics({ processMetrics: false });
    this.resolveTimeoutMs = opts.resolveTimeoutMs ?? 5_000;
    this.maxUpstreams = opts.maxUpstreams ?? 256;
  }

  /**
   * Starts the service: resolves once the control plane delivered a first valid Snapshot (leaf,
   * roots, intentions). A control plane that cannot deliver one fails here with why.
   */
  static async create(opts: ServiceOptions): Promise<Service> {
    if (!isValidServiceName(opts.name)) throw new MeshNameError(`"${opts.name}" is not a valid service name (letters, digits, - _): a native Service is named as it is registered, without a DNS suffix`);
    const log = opts.logger ?? createLogger({ level: "warn" });
    const idSuffix = `native-${process.pid}-${++instances}`;
    const request: ProxyRequest = {
      service: opts.name,
      proxyId: `${opts.name}-${idSuffix}`,
      publicListener: NATIVE_LISTENER,
      upstreams: [],
      ...(opts.meta ? { meta: opts.meta } : {}),
      ...(opts.meshGatewayMode ? { meshGatewayMode: opts.meshGatewayMode } : {}),
    };
    const cp = opts.controlPlane ?? (await createControlPlane(choose(opts, idSuffix), request, log));
    const svc = new Service(opts, cp, log.child("native"), idSuffix);
    await loadUndici();
    const { MeshDispatcher } = await import("./dispatcher.js");
    // The sidecar's router, with this Service's metrics (envoy_cluster_upstream_rq_* per cluster).
    const tracing = opts.tracing ? await startTracing(opts.name, opts.tracing, svc.metrics) : null;
    const obs = new NativeObservers(tracing, new AccessLog(opts.accessLog ?? "off", svc.metrics.accessLogDropped), svc.metrics);
    svc.obs = obs;
    const router = new HttpRouter(svc.log.child("http"), svc.metrics.http, obs, svc.metrics.outboundRejected);
    svc.meshDispatcher = new MeshDispatcher(svc.resolver(), router, obs);
    try {
      await svc.start();
    } catch (e) {
      await obs.close();
      throw e;
    }
    return svc;
  }

  private async start(): Promise<void> {
    let firstError: Error | null = null;
    try {
      await this.cp.start({
        snapshot: (s) => {
          try {
            this.apply(s);
          } catch (e) {
            firstError ??= e instanceof Error ? e : new Error(String(e));
          }
        },
        error: (e) => {
          this.metrics.controlPlaneErrors.labels(this.cp.kind, e.resource).inc();
          this.log.error(this.current ? "control plane error; serving on the last good snapshot" : "control plane error; not serving until the configuration is fixed", { control_plane: this.cp.kind, error: e.message });
        },
      });
    } catch (e) {
      await this.cp.stop().catch(logRejection(this.log, "stopping the control plane after a failed start", "debug"));
      throw e;
    }
    if (!this.current) {
      await this.cp.stop();
      throw firstError ?? new ControlPlaneError(this.cp.kind, "started without delivering a Snapshot", true);
    }
  }

  /** Validates and applies one Snapshot; an invalid one is counted, logged and ignored (the last good one stays). */
  private apply(s: Snapshot): void {
    if (this.closing) return;
    let inbound: InboundPolicy;
    let compiled: CompiledSnapshot;
    try {
      if (s.identity.service !== this.name) throw new SnapshotError("identity.service", `the control plane serves "${s.identity.service}", not "${this.name}"; give the native Service the name the configuration has`);
      // The placeholder listener is not compiled: the app's own server is the public listener.
      compiled = compileSnapshot({ ...s, publicListener: null }, this.tls);
      inbound = compileInbound(s);
    } catch (e) {
      const field = e instanceof SnapshotError ? e.field : e instanceof RouteCompileError ? `routes[${e.routeIndex}].${e.field}` : e instanceof PermissionCompileError ? e.field : e instanceof MatchCompileError ? "intentions" : null;
      if (field === null) throw e;
      this.metrics.snapshotsRejected.labels(s.source, field).inc();
      this.log.error(this.current ? "snapshot rejected; keeping the last good one" : "snapshot rejected; not serving until a valid one arrives", { version: s.version, error: e instanceof Error ? e.message : String(e) });
      if (this.current === null) throw e;
      return;
    }
    const tls = compiled.tls;
    this.sessions.reset(tls.key);
    syncClusterRuntimes(this.runtimes, this.pools, compiled.clusters, tls);
    // Named by upstreamKey (resolve() asks for them so): `db`, `db.service.dc2`.
    const upstreams = new Map<string, ResolvedUpstream>();
    for (const u of compiled.upstreams) {
      const routes = u.routes ?? compileRouteTable(`upstreams[${u.name}]`, defaultRoutes(u.config.cluster), (n) => compiled.clusters.has(n));
      upstreams.set(u.name, { listener: u.config, http: new OutboundHttpState(u.name, routes, this.runtimes) });
    }
    if (this.gate) this.gate.update(inbound, tls);
    else this.gate = new InboundGate(inbound, tls, this.metrics, this.log, this.obs!);
    this.upstreams = upstreams;
    this.current = s;
    this.tls = tls;
    this.metrics.snapshotsApplied.labels(s.source).inc();
    for (const [key, r] of this.resolving) {
      const u = this.upstreams.get(key);
      if (u) r.settle(u);
    }
    for (const w of [...this.applied]) w();
    for (const w of this.snapshotWatchers) w();
  }

  /** This service's SPIFFE ID. */
  get spiffeId(): string {
    return this.snapshot.identity.spiffeId;
  }

  /** The Snapshot in force (leaf, roots, intentions, the upstreams resolved so far). */
  get snapshot(): Snapshot {
    if (!this.current) throw new Error("internal error: a Service is only handed out after its first Snapshot");
    return this.current;
  }

  private get inbound(): InboundGate {
    if (!this.gate) throw new Error("internal error: a Service is only handed out after its first Snapshot");
    return this.gate;
  }

  /**
   * Options to construct a TLS server of this service with (node:https, node:http2, node:tls,
   * a framework's `https` option): TLS 1.2+, the mesh roots, a client certificate requested. They
   * hold no certificate: pass the server to attach(), which installs the leaf together with the
   * checks of every caller, so a server that was never attached completes no handshake.
   */
  serverTLSOptions(): TlsOptions {
    return this.inbound.options;
  }

  /**
   * Guards a TLS server (node:https, node:tls, or a framework's) as this service's public
   * listener: each caller's certificate and SPIFFE ID verified and its intentions checked before
   * any of the server's listeners sees the connection (L7 permissions per request for http
   * services), certificates rotated in place, and the server registered in the catalog once it
   * listens (deregistered when it closes or the Service does).
   */
  attach<S extends TlsServer>(server: S): S {
    this.inbound.attach(server);
    const register = () => this.register(server);
    if (server.listening) register();
    else server.once("listening", register);
    return server;
  }

  /** An HTTPS server for `handler` (a node request listener, an Express app), attached. */
  createServer(handler?: (req: IncomingMessage, res: ServerResponse) => void): HttpsServer {
    const server = handler ? createHttpsServer(this.serverTLSOptions(), handler) : createHttpsServer(this.serverTLSOptions());
    return this.attach(server);
  }

  /** The verified caller of a request or connection accepted by an attached server; null otherwise. */
  peerOf(x: IncomingMessage | Http2ServerRequest | Socket): Peer | null {
    return verifiedPeer(x instanceof IncomingMessage || x instanceof Http2ServerRequest ? x.socket : x);
  }

  /**
   * A TLS server for `server` (a grpc-js Server with the app's services added; grpc-js is the
   * app's, passed in as `grpc`), attached: listen on it instead of `server.bindAsync`. Each
   * connection is verified and authorized as attach() does before grpc-js sees it, and each call
   * again before its handler runs: the intentions in force then, L7 permissions on the method
   * path for http/http2/grpc services; a refused call ends with PERMISSION_DENIED. Closing it
   * closes its gRPC connections gracefully.
   */
  grpcListener<Call extends GrpcServerCall, Meta extends GrpcMetadata, Intercepting, CallCreds>(grpc: GrpcModule<Call, Meta, Intercepting, CallCreds>, server: GrpcServer): TlsServer {
    return this.attach(createGrpcListener(grpc, server, () => this.inbound, this.serverTLSOptions(), this.log));
  }

  /** The verified caller of a call received by a grpcListener's server (`call` as a handler gets it); null otherwise. */
  peerOfCall(call: { readonly metadata?: unknown }): Peer | null {
    return peerOfCall(call);
  }

  /**
   * A channel target for `service` and credentials for it: connections are mTLS with this
   * service's leaf, the server must present `service`'s SPIFFE ID, and calls are balanced
   * round-robin over its healthy instances as each Snapshot has them.
   */
  grpcTarget<Call extends GrpcServerCall, Meta extends GrpcMetadata, Intercepting, CallCreds>(grpc: GrpcModule<Call, Meta, Intercepting, CallCreds>, service: string): GrpcChannel<GrpcChannelCredentials<CallCreds>> {
    const target = targetOfName(service);
    const name = this.keyOf(target);
    if (this.closing) throw new Error(`gRPC channel to "${name}": the Service is closed`);
    this.grpcTargets.set(name, target);
    this.grpcUnregister ??= registerGrpcHost(this.grpcId, {
      known: (key) => this.upstreams.get(key) ?? null,
      resolve: (key) => {
        const t = this.grpcTargets.get(key);
        return t ? this.upstreamOf(t) : Promise.reject(new MeshNameError(`gRPC channel to "${key}": not a target this Service made (use svc.grpcTarget)`));
      },
      clusters: this.runtimes,
      tls: () => this.tls!,
      onSnapshot: (fn) => {
        this.snapshotWatchers.add(fn);
        return () => this.snapshotWatchers.delete(fn);
      },
    });
    return { target: `${GRPC_SCHEME}://${this.grpcId}/${name}`, credentials: makeChannelCredentials(grpc) };
  }

  /** A client of `service` made with `Ctor` (generated, or `grpc.makeGenericClientConstructor`): grpcTarget's target and credentials. */
  grpcClient<Call extends GrpcServerCall, Meta extends GrpcMetadata, Intercepting, CallCreds, Client, Options>(
    grpc: GrpcModule<Call, Meta, Intercepting, CallCreds>,
    Ctor: new (address: string, credentials: GrpcChannelCredentials<CallCreds>, options?: Options) => Client,
    service: string,
    options?: Options,
  ): Client {
    const { target, credentials } = this.grpcTarget(grpc, service);
    return new Ctor(target, credentials, options);
  }

  private register(server: TlsServer): void {
    if (this.closing) return;
    if (this.registered && this.registered !== server) {
      this.log.warn("a second server of this service listens; only the first one is registered in the catalog", {});
      return;
    }
    const a = server.address();
    if (a === null || typeof a === "string") return;
    this.registered = server;
    server.once("close", () => {
      if (this.registered !== server) return;
      this.registered = null;
      this.cp.withdraw().catch(logRejection(this.log, "deregistering the service instance", "warn"));
    });
    const protocol = this.snapshot.publicListener?.protocol ?? "tcp";
    this.cp.announce(announcementOf(a.address, a.port, protocol)).catch(logRejection(this.log, "registering the service instance"));
  }

  /** An undici Dispatcher for `https://<service>.service.consul/...` (fetch's `dispatcher` option). */
  dispatcher(): Dispatcher {
    if (!this.meshDispatcher) throw new Error("internal error: a Service is only handed out after start");
    return this.meshDispatcher;
  }

  /**
   * A verified mTLS connection to a healthy instance of `service`: a name, `<name>.service.consul`
   * or `<name>.service.<dc>.consul`. When the service has no healthy instance yet (it is starting
   * too), waits for one up to resolveTimeoutMs, keeping the process alive meanwhile, then throws
   * NoHealthyUpstreamError.
   */
  async dial(service: string, opts: DialOptions = {}): Promise<TLSSocket> {
    const target = targetOfName(service);
    const u = await this.upstreamOf(target);
    const primary = await this.healthy(u, this.keyOf(target));
    const stream = await new Promise<OpenStream | StreamFailure>((resolve) =>
      openStream(
        {
          primary,
          clusters: this.runtimes,
          tls: this.tls!,
          sessions: this.sessions,
          connectTimeoutMs: u.listener.connectTimeoutMs,
          ...(opts.alpn ? { alpn: opts.alpn } : {}),
          wanted: () => this.closing === null,
          attemptFailed: (cluster, host, err) => {
            // As a sidecar's upstream listener counts them (envoy_cluster_upstream_cx_connect_*).
            this.metrics.connectFailed(cluster.name, err.kind);
            this.log.debug("connect attempt failed", { upstream: service, host: host.key, error: err.message });
          },
        },
        resolve,
      ),
    );
    if ("flag" in stream) throw new DialError(stream.flag, stream.detail);
    return stream.socket;
  }

  /**
   * The upstream's primary cluster once its chain has a healthy host, waiting for Snapshots up to
   * resolveTimeoutMs. The timer is not unref'd: a script whose only work is this dial must neither
   * exit with its await unsettled nor wait forever.
   */
  private async healthy(first: ResolvedUpstream, key: string): Promise<ClusterRuntime> {
    const deadline = performance.now() + this.resolveTimeoutMs;
    let u = first;
    for (;;) {
      const primary = this.runtimes.get(u.listener.cluster);
      if (!primary) throw new DialError("UH", `upstream "${key}": cluster "${u.listener.cluster}" is not configured`);
      if (clusterWithHosts(primary, this.runtimes, undefined, false) !== null) return primary;
      const left = deadline - performance.now();
      if (left <= 0 || this.closing) {
        throw new NoHealthyUpstreamError(`upstream "${key}": no healthy instances within ${this.resolveTimeoutMs} ms (${primary.describeUnavailable()}); start one, or raise resolveTimeoutMs`);
      }
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          this.applied.delete(done);
          resolve();
        };
        const timer = setTimeout(done, left);
        this.applied.add(done);
      });
      u = this.upstreams.get(key) ?? u;
    }
  }

  private resolver(): UpstreamResolver {
    return {
      known: (target) => this.upstreams.get(this.keyOf(target)) ?? null,
      resolve: (target) => this.upstreamOf(target),
      clusters: this.runtimes,
    };
  }

  /** `db`, or `db.service.dc2`; this Service's own datacenter named explicitly is the same as none. */
  private keyOf(t: MeshTarget): string {
    return upstreamKey(t.service, t.datacenter === this.snapshot.identity.datacenter ? undefined : t.datacenter);
  }

  /** The upstream in force, or asks the control plane for one the app names for the first time and waits for it. */
  private upstreamOf(target: MeshTarget): Promise<ResolvedUpstream> {
    const key = this.keyOf(target);
    const known = this.upstreams.get(key);
    if (known) return Promise.resolve(known);
    const pending = this.resolving.get(key);
    if (pending) return pending.promise;
    if (this.closing) return Promise.reject(new Error(`upstream "${key}": the Service is closed`));
    const add = this.cp.addUpstream?.bind(this.cp);
    if (!add) {
      return Promise.reject(new Error(`upstream "${key}": the ${this.cp.kind} control plane serves only the upstreams its configuration lists; add "${key}" there`));
    }
    if (!this.asked.has(key) && this.asked.size >= this.maxUpstreams) {
      return Promise.reject(new MeshNameError(`upstream "${key}": this Service already calls ${this.asked.size} services, its maxUpstreams; raise the option if the app really calls more`));
    }
    this.asked.add(key);
    let settle!: (u: ResolvedUpstream) => void;
    let fail!: (e: Error) => void;
    // Not unref'd, for the reason healthy() gives; close() fails it at once.
    let timer: NodeJS.Timeout | undefined;
    const promise = new Promise<ResolvedUpstream>((resolve, reject) => {
      settle = (u) => {
        clearTimeout(timer);
        this.resolving.delete(key);
        resolve(u);
      };
      fail = (e) => {
        clearTimeout(timer);
        this.resolving.delete(key);
        reject(e);
      };
      timer = setTimeout(() => fail(new Error(`upstream "${key}": the ${this.cp.kind} control plane did not resolve it within ${this.resolveTimeoutMs} ms (is the configuration valid? see the control plane errors logged)`)), this.resolveTimeoutMs);
    });
    this.resolving.set(key, { promise, settle, fail });
    const dc = target.datacenter === this.snapshot.identity.datacenter ? undefined : target.datacenter;
    add({ name: target.service, ...(dc !== undefined ? { datacenter: dc, listenerName: key } : {}), bind: { host: "127.0.0.1", port: 0 }, connectTimeoutMs: DEFAULTS.upstreamConnectTimeoutMs });
    return promise;
  }
  /**
   * Deregisters the instance, stops the control plane's watches and timers, closes every pooled
   * connection, and stops guarding attached servers' new connections (servers stay the app's
   * to close). Leaves no handle behind: a process with nothing else to do exits.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    await this.meshDispatcher?.close();
    // Nothing pending may keep the process alive past close: resolutions fail, dial()s give up.
    for (const [key, r] of this.resolving) r.fail(new Error(`upstream "${key}": the Service was closed while resolving it`));
    for (const w of [...this.applied]) w();
    this.grpcUnregister?.();
    this.snapshotWatchers.clear();
    try {
      await this.cp.withdraw();
    } catch (e) {
      this.log.warn("could not deregister", { error: e instanceof Error ? e.message : String(e) });
    }
    this.registered = null;
    for (const rt of this.runtimes.values()) rt.close();
    this.runtimes.clear();
    await this.pools.closeAll();
    await this.cp.stop();
    await this.obs?.close();
  }
}
