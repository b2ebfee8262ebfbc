// The public listener: terminate mTLS, verify the client's chain and SPIFFE identity,
// authorize it with intentions, and only then dial the local app. (Consul's built-in proxy
// dials the app first; an unauthorized client never reaches ours.) Connections over the
// listener's limits are closed at accept, before any TLS work.
import { createServer, type Server, type TLSSocket } from "node:tls";
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from "node:net";
import type { PublicListener as PublicListenerConfig } from "../config/snapshot.js";
import type { TlsMaterial } from "../tls/contexts.js";
import type { Caller } from "../authz/intentions.js";
import type { CompiledL7Intentions, SourceAuthorizer } from "../authz/l7.js";
import { alpnFor, type InboundState } from "../compile/inbound.js";
import { InboundHttp } from "./http-inbound.js";
import { verifyClient } from "../identity/peer.js";
import { listenOn } from "../tcp/listen.js";
import { DirectReads, joinSockets, type Pipe } from "../tcp/pipe.js";
import { connectDeadline } from "../tcp/connect-deadline.js";
import { envoyListenerAddress, type ClusterStats, type InboundRejection, type ListenerStats, type Metrics } from "../telemetry/metrics.js";
import type { HttpConnManagerStats, TcpProxyStats } from "../telemetry/filter-stats.js";
import { LOCAL_APP_CLUSTER } from "../telemetry/consul-tags.js";
import { logRejection, type Logger } from "../telemetry/log.js";
import type { Observers } from "../telemetry/observers.js";
import { RateLimitedWarning } from "../telemetry/rate-limited-log.js";
import { HandshakeGate, capConnections, type ListenerLimits } from "../tcp/admission.js";

export class PublicListener {
  /** Accepts TCP and applies the limits; admitted sockets are handed to `server` for TLS. */
  private readonly acceptor: NetServer;
  /** Terminates TLS on the sockets the acceptor hands it; never listens itself. */
  private readonly server: Server;
  private readonly handshakes: HandshakeGate;
  private readonly overflowLog: RateLimitedWarning;
  private readonly overloadLog: RateLimitedWarning;
  private readonly log: Logger;
  private state: InboundState;
  private tlsKey: string;
  private stats: ListenerStats | null = null;
  private tcp: { tcp: TcpProxyStats; app: ClusterStats } | null = null;
  private hcm: HttpConnManagerStats | null = null;
  private readonly pipes = new Set<Pipe>();
  private readonly pending = new Set<Socket>();
  private inboundHttp: InboundHttp | null = null;
  /** ALPN is fixed per TLS server: a service switching to or from HTTP/2 gets a new listener. */
  readonly alpn: "h2" | "none";
  private address = "";

  constructor(
    state: InboundState,
    tls: TlsMaterial,
    private readonly metrics: Metrics,
    logger: Logger,
    private readonly obs: Observers,
    private readonly limits: ListenerLimits,
  ) {
    this.log = logger.child("inbound");
    this.state = state;
    this.tlsKey = tls.key;
    this.alpn = alpnFor(state.config.protocol);
    this.server = createServer({
      ...tls.options,
      // HTTP/2 services offer h2 (and http/1.1); others negotiate no ALPN at all, as Consul's
      // Envoy public listener does, so a TCP service never claims a protocol it does not speak.
      ...(this.alpn === "h2" ? { ALPNProtocols: ["h2", "http/1.1"] } : {}),
      // Verify the chain ourselves after the handshake, so every refusal has a precise reason
      // and a counter; nothing is forwarded before that check passes.
      requestCert: true,
      rejectUnauthorized: false,
      handshakeTimeout: state.config.handshakeTimeoutMs,
    });
    this.acceptor = createNetServer({
      // Not before the handshake: a client that connects and hangs up at once must free its
      // handshake slot now, not at the handshake timeout. onConnection turns it on for the pipe.
      allowHalfOpen: false,
      // Without it, the first answer on a new connection waits for the delayed ACK (40 ms on
      // Linux) of the TLS 1.3 session tickets sent just before it (Nagle's algorithm).
      noDelay: true,
    }, (raw) => this.admit(raw));
    this.handshakes = new HandshakeGate(limits.maxTlsHandshakes, () => this.stats?.handshakesActive.dec());
    this.overflowLog = new RateLimitedWarning(this.log, "public listener at its connection limit (-max-connections); closing new connections at once");
    this.overloadLog = new RateLimitedWarning(this.log, "public listener at its TLS handshake limit (-max-tls-handshakes); closing new connections at once");
    capConnections(this.acceptor, limits.maxConnections, (peer) => {
      this.stats?.cxOverflow.inc();
      this.overflowLog.note({ address: this.address, max_connections: limits.maxConnections, peer });
    });
    this.acceptor.on("error", (e) => this.log.error("listener error", { address: this.address, error: e.message }));
    this.server.on("secureConnection", (s) => {
      this.handshakes.done(s);
      this.onConnection(s);
    });
    this.server.on("tlsClientError", (err: NodeJS.ErrnoException, s: TLSSocket) => {
      this.handshakes.done(s);
      this.onTlsError(err, s);
    });
  }

  /**
   * A handshake costs ~2 ms of CPU and tens of KB until it ends or times out: past the cap, a
   * new connection is closed before node starts one, so idle or slow clients cannot grow memory
   * or queue work without bound. Established connections are not affected.
   */
  private admit(raw: Socket): void {
    if (!this.handshakes.admit(raw)) {
      this.stats?.cxOverloadReject.inc();
      this.overloadLog.note({ address: this.address, max_tls_handshakes: this.limits.maxTlsHandshakes, peer: `${raw.remoteAddress}:${raw.remotePort}` });
      raw.destroy();
      return;
    }
    this.stats?.handshakesActive.inc();
    this.server.emit("connection", raw);
  }

  async listen(): Promise<AddressInfo> {
    const { host, port } = this.state.config.bind;
    const addr = await listenOn(this.acceptor, host, port);
    this.address = `${addr.address}:${addr.port}`;
    this.stats = this.metrics.listener(this.address);
    // Declared at start, as Envoy does: dashboards read 0 rather than nothing before traffic.
    if (this.state.config.protocol === "tcp") this.tcpStats();
    else this.hcmStats();
    this.log.info("public listener started", {
      address: this.address,
      local_app: `${this.state.config.localApp.host}:${this.state.config.localApp.port}`,
      max_connections: this.limits.maxConnections,
      max_tls_handshakes: this.limits.maxTlsHandshakes,
    });
    return addr;
  }

  /** New connections see the new Snapshot; connections already open are left alone. */
  update(state: InboundState, tls: TlsMaterial): void {
    this.state = state;
    if (this.state.http) this.inboundHttp?.update(this.state.http);
    if (tls.key !== this.tlsKey) {
      this.server.setSecureContext({ ...tls.options });
      this.tlsKey = tls.key;
      this.log.info("public listener certificates rotated", { address: this.address, serial: state.serial });
    }
  }

  get bind(): PublicListenerConfig["bind"] {
    return this.state.config.bind;
  }

  get activeConnections(): number {
    return this.pipes.size + this.pending.size + (this.inboundHttp?.activeConnections ?? 0);
  }

  private onTlsError(err: NodeJS.ErrnoException, s: TLSSocket): void {
    const reason: InboundRejection = err.code === "ERR_TLS_HANDSHAKE_TIMEOUT" ? "handshake_timeout" : "tls_error";
    this.metrics.reject(reason);
    this.log.warn("inbound TLS handshake failed", { address: this.address, peer: `${s.remoteAddress}:${s.remotePort}`, reason, error: err.message });
    s.destroy();
  }

  private refuse(s: TLSSocket, reason: InboundRejection, detail: string, fields: Record<string, string> = {}): void {
    this.metrics.reject(reason);
    this.log.warn("inbound connection refused", { address: this.address, peer: `${s.remoteAddress}:${s.remotePort}`, reason, detail, ...fields });
    // Envoy's flags: UF when the app could not be reached, UAEX for every refusal of the caller.
    this.logConnection(Date.now(), reason === "local_app_unreachable" ? "UF" : "UAEX", 0, 0, fields["source"], detail);
    s.destroy();
  }

  private logConnection(started: number, flags: string, received: number, sent: number, source: string | undefined, error?: string): void {
    if (!this.obs.accessLog.enabled) return;
    this.obs.accessLog.log({
      start_time: new Date(started).toISOString(),
      duration_ms: Date.now() - started,
      protocol: "tcp",
      direction: "inbound",
      listener: this.address,
      upstream_cluster: "local_app",
      upstream_host: `${this.state.config.localApp.host}:${this.state.config.localApp.port}`,
      ...(source ? { source_identity: source } : {}),
      bytes_received: received,
      bytes_sent: sent,
      response_flags: flags,
      ...(error ? { error } : {}),
    });
  }

  private onConnection(s: TLSSocket): void {
    // Half-close carries through from here on (a client may shut down its side and still read).
    s.allowHalfOpen = true;
    const stats = this.stats!;
    stats.cxTotal.inc();
    stats.cxActive.inc();
    const accepted = performance.now();
    s.once("close", () => {
      stats.cxActive.dec();
      stats.cxDestroy.inc();
      stats.cxLengthMs.observe(performance.now() - accepted);
    });
    s.on("error", () => s.destroy());
    const state = this.state;
    const peer = verifyClient(s, state.trustDomain);
    if (!peer.ok) return this.refuse(s, peer.reason, peer.detail);
    if (state.l7 && state.http) {
      this.inboundHttp ??= new InboundHttp(state.http, this.metrics, this.log, this.obs, this.hcmStats());
      this.inboundHttp.accept(s, this.currentAuthorizer(peer.id, state.l7), peer.uri);
      return;
    }
    // The whole identity is authorized: a caller in another namespace or partition is not the
    // service of the same name here.
    const decision = state.intentions.authorize(peer.id);
    if (!decision.allowed) {
      return this.refuse(s, "denied_by_intention", decision.reason, { source: peer.id.service, destination: state.service });
    }
    this.dialLocalApp(s, state, peer.id.service);
  }

  /**
   * Each request is checked against the intentions in force when it arrives, not those the
   * connection was accepted under: a pooled keep-alive connection lives as long as traffic flows,
   * so a revoked permission would otherwise never stop applying. forSource is a cached lookup.
   */
  private currentAuthorizer(source: Caller, accepted: CompiledL7Intentions): SourceAuthorizer {
    const current = () => (this.state.l7 ?? accepted).forSource(source);
    return {
      get intention() {
        return current().intention;
      },
      authorize: (req) => current().authorize(req),
    };
  }

  /** Envoy's tcp_proxy stats under Consul's `public_listener` prefix, and the `local_app` cluster's. */
  private tcpStats(): { tcp: TcpProxyStats; app: ClusterStats } {
    return (this.tcp ??= { tcp: this.metrics.filters.tcpProxy(null), app: this.metrics.cluster(LOCAL_APP_CLUSTER) });
  }

  private hcmStats(): HttpConnManagerStats {
    return (this.hcm ??= this.metrics.filters.httpConnManager(null, envoyListenerAddress(this.address)));
  }

  private dialLocalApp(s: TLSSocket, state: InboundState, source: string): void {
    const { localApp, localConnectTimeoutMs, idleTimeoutMs } = state.config;
    const { tcp, app: appStats } = this.tcpStats();
    tcp.cxTotal.inc();
    const dialled = performance.now();
    this.pending.add(s);
    const reads = DirectReads.intoTls(s);
    const app = netConnect({ host: localApp.host, port: localApp.port, allowHalfOpen: true, noDelay: true, onread: reads.onread });
    const cancelDeadline = connectDeadline(localConnectTimeoutMs, () => app.connecting, () => app.destroy(new Error(`connect timeout after ${localConnectTimeoutMs} ms`)));
    const fail = (e: Error) => {
      cancelDeadline();
      if (e.message.startsWith("connect timeout")) appStats.cxConnectTimeout.inc();
      else appStats.cxConnectFail.inc();
      this.pending.delete(s);
      this.refuse(s, "local_app_unreachable", `local app ${localApp.host}:${localApp.port}: ${e.message}`, { source });
    };
    app.once("error", fail);
    s.once("close", () => {
      if (this.pending.delete(s)) {
        cancelDeadline();
        app.destroy();
      }
    });
    app.once("connect", () => {
      cancelDeadline();
      app.off("error", fail);
      if (!this.pending.delete(s)) return; // the client went away while we dialled
      const started = Date.now();
      const opened = performance.now();
      appStats.cxTotal.inc();
      appStats.cxActive.inc();
      appStats.cxConnectMs.observe(opened - dialled);
      const pipe = joinSockets(s, app, idleTimeoutMs, (r) => {
        this.pipes.delete(pipe);
        tcp.rxBytes.inc(r.downstreamBytesIn);
        tcp.txBytes.inc(r.upstreamBytesIn);
        appStats.cxActive.dec();
        appStats.cxLengthMs.observe(performance.now() - opened);
        appStats.txBytes.inc(r.downstreamBytesIn);
        appStats.rxBytes.inc(r.upstreamBytesIn);
        this.logConnection(started, "-", r.downstreamBytesIn, r.upstreamBytesIn, source, r.error?.message);
        if (this.log.enabled("debug")) {
          this.log.debug("inbound connection closed", { source, bytes_in: r.downstreamBytesIn, bytes_out: r.upstreamBytesIn, error: r.error?.message });
        }
      }, reads, DirectReads.tlsIntoPlain(app));
      this.pipes.add(pipe);
    });
  }

  /** Stops accepting; open connections carry on (server.close's callback would wait for them). */
  close(): void {
    if (this.acceptor.listening) this.acceptor.close();
    this.overflowLog.close();
    this.overloadLog.close();
  }

  closeIdle(): void {
    this.inboundHttp?.closeIdle();
  }

  destroyConnections(): void {
    for (const p of this.pipes) p.destroy();
    for (const s of this.pending) s.destroy();
    this.inboundHttp?.destroyAll();
    this.inboundHttp?.close().catch(logRejection(this.log, "closing the inbound HTTP pools", "debug"));
  }
}
