// A mesh gateway listener: reads the SNI from each connection's ClientHello, looks it up in the
// route table, opens a passthrough pipe through the concrete stage (the cluster's balancer,
// outlier detection, MaxConnections, a refused connect retried on another host), replays the
// bytes it peeked and joins the two sockets. TLS is never terminated here: the gateway holds no key, and the two
// mesh endpoints authenticate each other end to end (Envoy's tls_inspector + sni_cluster +
// tcp_proxy, shared/reference/data-plane-anchors.md §6).
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { DEFAULT_HELLO_TIMEOUT_MS, DEFAULT_MAX_HELLO_BYTES, peekClientHello, type PeekResult } from "../tls/client-hello.js";
import { capConnections, DEFAULT_MAX_TLS_HANDSHAKES, listenerLimits } from "../tcp/admission.js";
import { listenOn } from "../tcp/listen.js";
import { RateLimitedWarning } from "../telemetry/rate-limited-log.js";
import { DirectReads, joinSockets, type Pipe } from "../tcp/pipe.js";
import { logRejection, type Logger } from "../telemetry/log.js";
import { openPipe, type OpenPipe, type StreamFailure } from "../outbound/concrete.js";
import type { ClusterRuntime, ClusterStatus } from "../cluster/runtime.js";
import type { ClusterSnapshotStats } from "../telemetry/cluster-gauges.js";
import type { UpstreamTlsError } from "../tls/origin.js";
import { GatewayClusters } from "./clusters.js";
import type { GatewayRoutes } from "./routes.js";
import type { GatewayRejection, GatewayStats } from "./stats.js";
import type { AccessLog } from "../telemetry/access-log.js";

export interface GatewayListenerOptions {
  readonly host: string;
  readonly port: number;
  /** Absolute deadline for the ClientHello (Envoy's listener_filters_timeout, 15 s). */
  readonly helloTimeoutMs?: number;
  readonly maxHelloBytes?: number;
  /** A forwarded connection with no bytes either way for this long is closed (Envoy tcp_proxy: 1 h). */
  readonly idleTimeoutMs?: number;
  /** Connections held at once, peeking or forwarded (default: from the file-descriptor limit, as other listeners). */
  readonly maxConnections?: number;
  /**
   * Connections still sending their ClientHello. Each may buffer up to maxHelloBytes for up to
   * helloTimeoutMs, so this bounds what a slow-hello flood can hold (1024 × 32 KiB = 32 MiB).
   */
  readonly maxPendingHellos?: number;
  readonly stats: GatewayStats;
  readonly log: Logger;
  /** One L4 line per forwarded connection when it closes (the SNI is its listener name). */
  readonly accessLog?: AccessLog;
}

export class GatewayListener {
  private readonly pipes = new Set<Pipe>();
  private readonly pending = new Set<Socket>();
  private closing = false;
  private readonly overload: RateLimitedWarning;
  private readonly clusters = new GatewayClusters();

  private constructor(
    private readonly server: Server,
    private routes: GatewayRoutes,
    private readonly opts: GatewayListenerOptions,
    readonly address: AddressInfo,
  ) {
    this.overload = new RateLimitedWarning(opts.log, "gateway at its limit of connections still sending a ClientHello: refusing connections");
    this.clusters.apply(routes.clusters);
    for (const c of routes.clusters) opts.stats.cluster(c.name);
  }

  static async start(routes: GatewayRoutes, opts: GatewayListenerOptions): Promise<GatewayListener> {
    // Half-open: a client's FIN is passed on as a FIN, and the reply still flows back.
    const server = createServer({ allowHalfOpen: true });
    const address = await listenOn(server, opts.host, opts.port);
    const listener = new GatewayListener(server, routes, opts, address);
    const overflow = new RateLimitedWarning(opts.log, "gateway at its connection limit: refusing connections");
    capConnections(server, opts.maxConnections ?? listenerLimits().maxConnections, (peer) => {
      opts.stats.rejected.labels("overflow").inc();
      overflow.note({ peer });
    });
    server.on("connection", (s: Socket) => listener.accept(s));
    return listener;
  }

  /** New connections route with `routes`; forwarded ones keep the endpoint they were given. */
  apply(routes: GatewayRoutes): void {
    // Runtimes first: a route never names a cluster without one.
    this.clusters.apply(routes.clusters);
    for (const c of routes.clusters) this.opts.stats.cluster(c.name);
    this.routes = routes;
  }

  /** Every cluster with its hosts, for the admin API's /clusters. */
  clusterStatuses(): ClusterStatus[] {
    return this.clusters.statuses();
  }

  /** For the scrape-time cluster gauges (membership, ejections). */
  clusterStats(): ClusterSnapshotStats[] {
    return this.clusters.stats();
  }

  /**
   * Stops accepting and lets forwarded connections finish for up to `timeoutMs` (Envoy's drain),
   * then closes whatever is left. Connections still sending a ClientHello are closed at once.
   */
  async drain(timeoutMs: number): Promise<void> {
    this.closing = true;
    this.server.close();
    for (const s of this.pending) s.destroy();
    const deadline = Date.now() + timeoutMs;
    while (this.pipes.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, Math.min(100, Math.max(1, deadline - Date.now()))));
    await this.close();
  }

  get openConnections(): number {
    return this.pipes.size;
  }

  /** Stops accepting and closes every connection, forwarded or still being peeked. */
  async close(): Promise<void> {
    this.closing = true;
    const closed = this.server.listening ? new Promise<void>((resolve) => this.server.close(() => resolve())) : Promise.resolve();
    for (const s of this.pending) s.destroy();
    for (const p of this.pipes) p.destroy();
    this.clusters.close();
    await closed;
  }

  private reject(down: Socket, reason: GatewayRejection, message: string, sni: string | null): void {
    this.opts.stats.rejected.labels(reason).inc();
    this.opts.log.debug("gateway connection refused", { reason, sni, error: message, remote: `${down.remoteAddress}:${down.remotePort}` });
    this.pending.delete(down);
    down.destroy();
  }

  private accept(down: Socket): void {
    if (this.closing) {
      down.destroy();
      return;
    }
    if (this.pending.size >= (this.opts.maxPendingHellos ?? DEFAULT_MAX_TLS_HANDSHAKES)) {
      this.opts.stats.rejected.labels("overload").inc();
      this.overload.note({ peer: `${down.remoteAddress}:${down.remotePort}`, pending: this.pending.size });
      down.destroy();
      return;
    }
    this.pending.add(down);
    down.once("close", () => this.pending.delete(down));
    // Until the pipe owns it, a reset or a timeout here just ends this one connection.
    const early = (): void => undefined;
    down.on("error", early);
    down.setNoDelay(true);
    // The peek never rejects; a bug while forwarding is logged and ends this connection only.
    peekClientHello(down, { timeoutMs: this.opts.helloTimeoutMs ?? DEFAULT_HELLO_TIMEOUT_MS, maxBytes: this.opts.maxHelloBytes ?? DEFAULT_MAX_HELLO_BYTES })
      .then((hello) => this.forward(down, hello, early))
      .catch((e: unknown) => {
        logRejection(this.opts.log, "forwarding a gateway connection")(e);
        this.pending.delete(down);
        down.destroy();
      });
  }

  private forward(down: Socket, hello: PeekResult, early: () => void): void {
    if (!hello.ok) return this.reject(down, hello.reason, hello.message, null);
    if (down.destroyed) return this.reject(down, "truncated", "the connection closed while the ClientHello was being routed", hello.sni);
    const lookup = this.routes.route(hello.sni);
    if (!lookup.ok) return this.reject(down, "unknown_sni", lookup.message, hello.sni);
    const primary = this.clusters.get(lookup.cluster);
    // apply() builds every route's runtime before the route: a bug, refused closed.
    if (!primary) return this.reject(down, "no_healthy_endpoint", `cluster ${lookup.cluster} has no runtime`, hello.sni);
    // The next hop's bytes go straight into the caller's socket (the shared read buffer).
    const reads = DirectReads.intoPlain(down);
    openPipe(
      {
        primary,
        clusters: this.clusters.all,
        connectTimeoutMs: primary.config.connectTimeoutMs,
        onread: reads.onread,
        wanted: () => !down.destroyed && !this.closing,
        attemptFailed: (cluster, host, err) => this.attemptFailed(cluster, host.key, err, hello.sni),
      },
      (result) => {
        if ("flag" in result) return this.refused(down, primary, result, hello.sni);
        down.off("error", early);
        this.pending.delete(down);
        this.pipe(down, hello, result, reads);
      },
    );
  }

  private attemptFailed(cluster: ClusterRuntime, host: string, err: UpstreamTlsError, sni: string): void {
    if (err.kind === "timeout") this.opts.stats.cluster(cluster.name).connectTimedOut.inc();
    else this.opts.stats.cluster(cluster.name).connectFailed.inc();
    this.opts.log.debug("gateway connect attempt failed", { cluster: cluster.name, endpoint: host, sni, error: err.message });
  }

  private refused(down: Socket, primary: ClusterRuntime, f: StreamFailure, sni: string): void {
    if (f.flag === "UH") {
      this.opts.stats.cluster(primary.name).noneHealthy.inc();
      return this.reject(down, "no_healthy_endpoint", f.detail, sni);
    }
    if (f.flag === "UO") {
      this.opts.stats.cluster(f.cluster.name).overflow.inc();
      return this.reject(down, "upstream_overflow", f.detail, sni);
    }
    return this.reject(down, "upstream_connect_failed", f.detail, sni);
  }

  private pipe(down: Socket, hello: Extract<PeekResult, { ok: true }>, stream: OpenPipe, reads: DirectReads): void {
    const { cluster, host, socket: up } = stream;
    const endpoint = host.key;
    const clusterStats = this.opts.stats.cluster(cluster.name);
    clusterStats.forwarded.inc();
    const started = Date.now();
    if (this.opts.log.enabled("debug")) this.opts.log.debug("gateway connection forwarded", { sni: hello.sni, alpn: hello.alpn.join(","), cluster: cluster.name, endpoint, attempts: stream.attempts });
    up.write(hello.bytes);
    const pipe = joinSockets(down, up, this.opts.idleTimeoutMs ?? 3_600_000, (r) => {
      this.pipes.delete(pipe);
      // TLS records both ways, counted as Envoy counts a cluster's bytes (never decrypted).
      clusterStats.bytesSent.inc(r.downstreamBytesIn);
      clusterStats.bytesReceived.inc(r.upstreamBytesIn);
      this.opts.accessLog?.log({
        start_time: new Date(started).toISOString(),
        duration_ms: Date.now() - started,
        protocol: "tcp",
        direction: "inbound",
        listener: `gateway:${hello.sni}`,
        upstream_cluster: cluster.name,
        upstream_host: endpoint,
        bytes_received: r.downstreamBytesIn,
        bytes_sent: r.upstreamBytesIn,
        response_flags: r.error ? "UC" : "-",
        ...(r.error ? { error: r.error.message } : {}),
      });
      if (r.error) this.opts.log.debug("gateway connection closed by error", { cluster: cluster.name, sni: hello.sni, error: r.error.message });
    }, reads, DirectReads.intoPlain(up));
    this.pipes.add(pipe);
    down.resume();
  }
}
