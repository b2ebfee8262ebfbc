// An upstream listener: plain TCP from the local app on loopback, mTLS to an instance of the
// destination chosen by the concrete stage (concrete.ts) like every HTTP request: the cluster's
// balancer, failover, outlier detection and breakers. A connect failure tries another instance.
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer } from "node:http";
import { createServer as createH2Server, type Http2Server } from "node:http2";
import type { UpstreamListener as UpstreamListenerConfig } from "../config/snapshot.js";
import type { CompiledCluster } from "../compile/cluster.js";
import type { CompiledUpstream } from "../compile/snapshot.js";
import type { TlsMaterial } from "../tls/contexts.js";
import type { SessionCache } from "../tls/origin.js";
import type { ClusterRuntime } from "../cluster/runtime.js";
import { openStream, type OpenStream, type StreamFailure } from "./concrete.js";
import { listenOn } from "../tcp/listen.js";
import { DirectReads, joinSockets, type Pipe } from "../tcp/pipe.js";
import { envoyListenerAddress, type ClusterStats, type ListenerStats, type Metrics } from "../telemetry/metrics.js";
import type { HttpConnManagerStats, TcpProxyStats } from "../telemetry/filter-stats.js";
import type { UpstreamTags } from "../telemetry/consul-tags.js";
import type { Logger } from "../telemetry/log.js";
import type { Observers } from "../telemetry/observers.js";
import type { HttpRouter, OutboundHttpState } from "./http-router.js";
import { upgradeOutbound, type UpgradeRequest } from "./upgrade.js";
import { OutboundHttp1, outboundHttp1Engine } from "./http1-outbound.js";
import { NODE_SERVER_DEFAULTS } from "../http1/server.js";
import { localReply } from "../http/local-reply.js";
import { answerClientError } from "../http/client-error.js";
import { RateLimitedWarning } from "../telemetry/rate-limited-log.js";
import { capConnections, type ListenerLimits } from "../tcp/admission.js";

interface OutboundState {
  readonly config: UpstreamListenerConfig;
  readonly cluster: CompiledCluster;
  readonly tls: TlsMaterial;
  readonly clusterStats: ClusterStats;
  /** HTTP upstreams: compiled routes and the clusters they use. Null for tcp. */
  readonly http: OutboundHttpState | null;
}

export class UpstreamListener {
  private readonly server: Server;
  private readonly log: Logger;
  private state: OutboundState;
  private stats: ListenerStats | null = null;
  private readonly pipes = new Set<Pipe>();
  private readonly pending = new Set<Socket>();
  private readonly httpSockets = new Set<Socket>();
  private httpServer: HttpServer | null = null;
  private h2Server: Http2Server | null = null;
  private address = "";
  private tcp: TcpProxyStats | null = null;
  private hcm: HttpConnManagerStats | null = null;
  private readonly overflowLog: RateLimitedWarning;
  /** The llhttp core for the app's HTTP/1.1 (MESHPROXY_HTTP1_CORE), made with the first HTTP connection. */
  private core: OutboundHttp1 | null | undefined;

  constructor(
    upstream: CompiledUpstream,
    tls: TlsMaterial,
    http: OutboundHttpState | null,
    /** Every cluster's runtime, kept current by the proxy: the primary and its failover clusters. */
    private readonly clusters: ReadonlyMap<string, ClusterRuntime>,
    private readonly sessions: SessionCache,
    private readonly metrics: Metrics,
    private readonly router: HttpRouter,
    logger: Logger,
    private readonly obs: Observers,
    private readonly limits: ListenerLimits,
  ) {
    this.log = logger.child(`upstream.${upstream.name}`);
    this.state = { config: upstream.config, cluster: upstream.cluster, tls, clusterStats: metrics.cluster(upstream.cluster.name), http };
    // pauseOnConnect: nothing is read from the app until the mTLS side is up, so early bytes
    // wait in the kernel instead of in our memory.
    this.server = createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (s) => this.onConnection(s));
    this.server.on("error", (e) => this.log.error("listener error", { address: this.address, error: e.message }));
    // The local app is trusted with its traffic, not with the proxy's descriptors: a connection
    // leak in the app must not starve the public listener of them.
    this.overflowLog = new RateLimitedWarning(this.log, "upstream listener at its connection limit (-max-connections); closing new connections at once");
    capConnections(this.server, limits.maxConnections, (peer) => {
      this.stats?.cxOverflow.inc();
      this.overflowLog.note({ address: this.address, max_connections: limits.maxConnections, peer });
    });
  }

  get name(): string {
    return this.state.config.name;
  }

  get bind(): UpstreamListenerConfig["bind"] {
    return this.state.config.bind;
  }

  get activeConnections(): number {
    return this.pipes.size + this.pending.size + this.httpSockets.size;
  }

  async listen(): Promise<AddressInfo> {
    const { host, port } = this.state.config.bind;
    const addr = await listenOn(this.server, host, port);
    this.address = `${addr.address}:${addr.port}`;
    this.stats = this.metrics.listener(this.address);
    if (this.state.http) this.hcmStats();
    else this.tcpStats();
    this.log.info("upstream listener started", { address: this.address, destination: this.state.cluster.service });
    return addr;
  }

  /** New connections and requests see the new Snapshot; open ones finish on the state they started with. */
  update(upstream: CompiledUpstream, tls: TlsMaterial, http: OutboundHttpState | null): void {
    const cluster = upstream.cluster;
    const clusterStats = cluster.name === this.state.cluster.name ? this.state.clusterStats : this.metrics.cluster(cluster.name);
    this.state = { config: upstream.config, cluster, tls, clusterStats, http };
  }

  /**
   * Consul's upstream stat prefix `upstream.<svc>.<ns>.<partition>.<dc>`: the chain's service and
   * the namespace and partition the upstream names (its own, else the proxy's), in the datacenter
   * its default target lives in.
   */
  private upstreamTags(): UpstreamTags {
    const { config, cluster } = this.state;
    return { service: config.name, namespace: config.namespace ?? cluster.namespace, partition: config.partition ?? "default", datacenter: cluster.datacenter };
  }

  private tcpStats(): TcpProxyStats {
    return (this.tcp ??= this.metrics.filters.tcpProxy(this.upstreamTags()));
  }

  private hcmStats(): HttpConnManagerStats {
    return (this.hcm ??= this.metrics.filters.httpConnManager(this.upstreamTags(), envoyListenerAddress(this.address)));
  }

  /** One node:http server parses every HTTP connection of this listener; routing reads the current state per request. */
  private http(): HttpServer {
    if (this.httpServer) return this.httpServer;
    const srv = createHttpServer({ keepAliveTimeout: 60_000, headersTimeout: 10_000, requestTimeout: 0, connectionsCheckingInterval: 1_000 }, (req, res) => {
      const h = this.state.http;
      if (!h) return localReply(res, 503, "NR", `upstream "${this.name}" is no longer HTTP; reconnect`);
      this.router.handle(req, res, h, this.hcmStats());
    });
    // node starts tracking connections (headersTimeout, closeIdleConnections) on "listening",
    // which a server fed with emit("connection") never sees: without this, slow headers are
    // never timed out and draining leaves idle keep-alive connections open.
    srv.emit("listening");
    srv.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => this.upgrade(req, socket, head));
    srv.on("clientError", (err: NodeJS.ErrnoException, socket: Socket) => answerClientError(err, socket, this.metrics.configErrors));
    this.httpServer = srv;
    return srv;
  }

  /** The HTTP/1 core's path, or null when node:http serves HTTP/1.1 (MESHPROXY_HTTP1_CORE=node, or no core). */
  private http1(): OutboundHttp1 | null {
    if (this.core !== undefined) return this.core;
    this.core =
      outboundHttp1Engine(this.log) === "llhttp"
        ? new OutboundHttp1(
            {
              state: () => this.state.http,
              hcm: () => this.hcmStats(),
              upgrade: (req, socket, head) => this.upgrade(req, socket, head),
            },
            this.router,
            this.obs,
            this.log,
            this.metrics.configErrors,
          )
        : null;
    return this.core;
  }

  private upgrade(req: UpgradeRequest, socket: Socket, head: Buffer): void {
    const h = this.state.http;
    if (!h) return void socket.destroy();
    upgradeOutbound(req, socket, head, h, this.state.tls, this.sessions, this.state.config.idleTimeoutMs, this.router, this.log);
  }

  /** h2c with prior knowledge, as gRPC clients speak to a plain address. */
  private h2(): Http2Server {
    if (this.h2Server) return this.h2Server;
    const srv = createH2Server({}, (req, res) => {
      const h = this.state.http;
      if (!h) return localReply(res, 503, "NR", `upstream "${this.name}" is no longer HTTP; reconnect`);
      this.router.handle(req, res, h, this.hcmStats());
    });
    this.h2Server = srv;
    return srv;
  }

  /**
   * The app may speak HTTP/1.1 or HTTP/2 (h2c); the first bytes tell, as Envoy's codec AUTO does.
   * Until then no server owns the socket, so this stage closes it itself: on EOF before a byte (a
   * client that connected and gave up, a port check) and when no byte came within the HTTP/1
   * core's head timeout; otherwise it would sit in CLOSE-WAIT for the life of the process.
   */
  private sniff(down: Socket): void {
    const silent = setTimeout(() => down.destroy(), NODE_SERVER_DEFAULTS.headersTimeoutMs);
    const ended = (): void => void down.destroy();
    const readable = (): void => {
      // Not in object mode and no encoding set: read() gives a Buffer, or null when nothing is
      // buffered (at EOF, which 'end' then reports).
      const first = down.read() as Buffer | null;
      if (first === null) return void down.once("readable", readable);
      clearTimeout(silent);
      down.off("end", ended);
      down.unshift(first);
      const h2 = first.length >= 3 && first[0] === 0x50 && first[1] === 0x52 && first[2] === 0x49; // "PRI" of the HTTP/2 preface
      const core = h2 ? null : this.http1();
      // The core resumes the socket itself, unless its first bytes already handed it on (an upgrade).
      if (core) core.accept(down);
      else if (h2) this.h2().emit("connection", down);
      else {
        this.http().emit("connection", down);
        // node:http stops reading a socket it consumes only on the socket's 'pause' event, which
        // is emitted on a change from flowing; this one is still paused from the sniff, so node:http
        // never held the app back and a 1 GiB upload piled up in the sidecar (Node 20: 1.1 GB
        // RSS). Flowing again, it pauses and resumes as node:http asks. Not from inside this
        // 'readable' handler: until the next tick the stream still counts the listener, and a
        // resume then leaves it paused.
        process.nextTick(() => down.resume());
      }
    };
    down.once("readable", readable);
    down.once("end", ended);
    down.once("close", () => clearTimeout(silent));
    // Reading starts now (the listener pauses new sockets); stay paused until one server owns it.
    down.resume();
    down.pause();
  }

  private onConnection(down: Socket): void {
    const stats = this.stats!;
    stats.cxTotal.inc();
    stats.cxActive.inc();
    const accepted = performance.now();
    down.once("close", () => {
      stats.cxActive.dec();
      stats.cxDestroy.inc();
      stats.cxLengthMs.observe(performance.now() - accepted);
    });
    down.on("error", () => down.destroy());
    const state = this.state;
    if (state.http) {
      this.httpSockets.add(down);
      down.once("close", () => this.httpSockets.delete(down));
      this.sniff(down);
      return;
    }
    const tcp = this.tcpStats();
    tcp.cxTotal.inc();
    const primary = this.clusters.get(state.cluster.name);
    if (primary === undefined) {
      tcp.noRoute.inc();
      // The proxy builds every cluster's runtime before it updates listeners: a bug, refused closed.
      this.refuse(down, state, { flag: "UH", detail: `cluster "${state.cluster.name}" has no runtime` });
      return;
    }
    this.pending.add(down);
    down.once("close", () => this.pending.delete(down));
    const reads = DirectReads.tlsIntoPlain(down);
    openStream(
      {
        primary,
        clusters: this.clusters,
        tls: state.tls,
        sessions: this.sessions,
        connectTimeoutMs: state.config.connectTimeoutMs,
        onread: reads.onread,
        wanted: () => this.pending.has(down),
        attemptFailed: (cluster, _host, err) => this.metrics.connectFailed(cluster.name, err.kind),
      },
      (result) => {
        this.pending.delete(down);
        if ("flag" in result) return this.refuse(down, state, result);
        this.pipe(down, state, result, reads);
      },
    );
  }

  private statsOf(state: OutboundState, cluster: ClusterRuntime): ClusterStats {
    return cluster.name === state.cluster.name ? state.clusterStats : this.metrics.cluster(cluster.name);
  }

  /** No upstream for this connection: counted, logged, and the app's connection closed. */
  private refuse(down: Socket, state: OutboundState, f: StreamFailure): void {
    let cluster = state.cluster.name;
    if (f.flag === "UH") {
      state.clusterStats.cxNoHealthyUpstream.inc();
      this.log.warn("connection refused", { error: f.detail });
    } else if (f.flag === "UO") {
      cluster = f.cluster.name;
      this.statsOf(state, f.cluster).cxOverflow.inc();
      // Counted, and logged at debug: under overload this happens on every connection.
      this.log.debug("connection refused", { error: f.detail });
    } else {
      this.log.warn("connection failed", { error: f.detail });
    }
    this.logConnection(Date.now(), f.flag, 0, 0, cluster, undefined, f.detail);
    down.destroy();
  }

  private pipe(down: Socket, state: OutboundState, stream: OpenStream, reads: DirectReads): void {
    const { cluster, host, socket: up } = stream;
    const stats = this.statsOf(state, cluster);
    const tcp = this.tcpStats();
    stats.cxTotal.inc();
    stats.cxActive.inc();
    stats.cxConnectMs.observe(stream.connectMs);
    stats.sslHandshake.inc();
    if (up.isSessionReused()) stats.sslSessionReused.inc();
    const started = Date.now();
    const opened = performance.now();
    const endpoint = host.key;
    const pipe = joinSockets(down, up, state.config.idleTimeoutMs, (r) => {
      this.logConnection(started, "-", r.downstreamBytesIn, r.upstreamBytesIn, cluster.name, endpoint, r.error?.message);
      this.pipes.delete(pipe);
      stats.cxActive.dec();
      stats.cxLengthMs.observe(performance.now() - opened);
      stats.txBytes.inc(r.downstreamBytesIn);
      stats.rxBytes.inc(r.upstreamBytesIn);
      tcp.rxBytes.inc(r.downstreamBytesIn);
      tcp.txBytes.inc(r.upstreamBytesIn);
      if (this.log.enabled("debug")) {
        this.log.debug("connection closed", { endpoint, bytes_out: r.downstreamBytesIn, bytes_in: r.upstreamBytesIn, error: r.error?.message });
      }
    }, reads, DirectReads.intoTls(up));
    this.pipes.add(pipe);
    down.resume();
  }

  private logConnection(started: number, flags: string, received: number, sent: number, cluster: string, host: string | undefined, error?: string): void {
    if (!this.obs.accessLog.enabled) return;
    this.obs.accessLog.log({
      start_time: new Date(started).toISOString(),
      duration_ms: Date.now() - started,
      protocol: "tcp",
      direction: "outbound",
      listener: this.address,
      upstream_cluster: cluster,
      ...(host ? { upstream_host: host } : {}),
      bytes_received: received,
      bytes_sent: sent,
      response_flags: flags,
      ...(error ? { error } : {}),
    });
  }

  close(): void {
    if (this.server.listening) this.server.close();
    this.overflowLog.close();
  }

  /** Draining: idle keep-alive connections close now, busy ones after their response. */
  closeIdle(): void {
    this.httpServer?.closeIdleConnections();
    this.core?.closeIdle();
  }

  destroyConnections(): void {
    for (const p of this.pipes) p.destroy();
    for (const s of this.pending) s.destroy();
    for (const s of this.httpSockets) s.destroy();
  }
}
