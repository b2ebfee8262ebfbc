// A mesh gateway listener: reads the SNI from each connection's ClientHello, looks it up in the
// route table, dials the cluster's next endpoint over plain TCP, replays the bytes it peeked and
// joins the two sockets. TLS is never terminated here: the gateway holds no key, and the two
// mesh endpoints authenticate each other end to end (Envoy's tls_inspector + sni_cluster +
// tcp_proxy, shared/reference/data-plane-anchors.md §6).
import { connect as netConnect, createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { DEFAULT_HELLO_TIMEOUT_MS, DEFAULT_MAX_HELLO_BYTES, peekClientHello, type PeekResult } from "../tls/client-hello.js";
import { capConnections, DEFAULT_MAX_TLS_HANDSHAKES, listenerLimits } from "../tcp/admission.js";
import { listenOn } from "../tcp/listen.js";
import { RateLimitedWarning } from "../telemetry/rate-limited-log.js";
import { joinSockets, type Pipe } from "../tcp/pipe.js";
import { logRejection, type Logger } from "../telemetry/log.js";
import type { GatewayRoutes } from "./routes.js";
import type { GatewayRejection, GatewayStats } from "./stats.js";
import type { AccessLog } from "../telemetry/access-log.js";

export interface GatewayListenerOptions {
  readonly host: string;
  readonly port: number;
  /** Absolute deadline for the ClientHello (Envoy's listener_filters_timeout, 15 s). */
  readonly helloTimeoutMs?: number;
  readonly maxHelloBytes?: number;
  /** Dialling an endpoint (Consul's connect_timeout_ms default, 5 s). */
  readonly connectTimeoutMs?: number;
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

  private constructor(
    private readonly server: Server,
    private routes: GatewayRoutes,
    private readonly opts: GatewayListenerOptions,
    readonly address: AddressInfo,
  ) {
    this.overload = new RateLimitedWarning(opts.log, "gateway at its limit of connections still sending a ClientHello: refusing connections");
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
    this.routes = routes;
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
    const cluster = lookup.cluster;
    const endpoint = cluster.next();
    if (!endpoint) return this.reject(down, "no_healthy_endpoint", `cluster ${cluster.name} has no healthy endpoint`, hello.sni);
    const up = netConnect({ host: endpoint.host, port: endpoint.port, allowHalfOpen: true, noDelay: true });
    const connectTimeoutMs = this.opts.connectTimeoutMs ?? 5_000;
    const failed = (why: string): void => {
      clearTimeout(timer);
      up.destroy();
      down.off("close", abandoned);
      this.reject(down, "upstream_connect_failed", `${cluster.name} endpoint ${endpoint.host}:${endpoint.port}: ${why}`, hello.sni);
    };
    const timer = setTimeout(() => failed(`no connection within ${connectTimeoutMs} ms`), connectTimeoutMs);
    const onUpError = (e: Error): void => failed(e.message);
    // The client gave up while we dialled: nothing to forward.
    const abandoned = (): void => {
      clearTimeout(timer);
      up.destroy();
      this.pending.delete(down);
    };
    up.once("error", onUpError);
    down.once("close", abandoned);
    up.once("connect", () => {
      clearTimeout(timer);
      up.off("error", onUpError);
      down.off("close", abandoned);
      down.off("error", early);
      this.pending.delete(down);
      if (down.destroyed || this.closing) {
        up.destroy();
        down.destroy();
        return;
      }
      this.opts.stats.forwarded.labels(cluster.name).inc();
      const started = Date.now();
      if (this.opts.log.enabled("debug")) this.opts.log.debug("gateway connection forwarded", { sni: hello.sni, alpn: hello.alpn.join(","), cluster: cluster.name, endpoint: `${endpoint.host}:${endpoint.port}` });
      up.write(hello.bytes);
      const pipe = joinSockets(down, up, this.opts.idleTimeoutMs ?? 3_600_000, (r) => {
        this.pipes.delete(pipe);
        // TLS records both ways, counted as Envoy counts a cluster's bytes (never decrypted).
        this.opts.stats.bytesSent.labels(cluster.name).inc(r.downstreamBytesIn);
        this.opts.stats.bytesReceived.labels(cluster.name).inc(r.upstreamBytesIn);
        this.opts.accessLog?.log({
          start_time: new Date(started).toISOString(),
          duration_ms: Date.now() - started,
          protocol: "tcp",
          direction: "inbound",
          listener: `gateway:${hello.sni}`,
          upstream_cluster: cluster.name,
          upstream_host: `${endpoint.host}:${endpoint.port}`,
          bytes_received: r.downstreamBytesIn,
          bytes_sent: r.upstreamBytesIn,
          response_flags: r.error ? "UC" : "-",
          ...(r.error ? { error: r.error.message } : {}),
        });
        if (r.error) this.opts.log.debug("gateway connection closed by error", { cluster: cluster.name, sni: hello.sni, error: r.error.message });
      });
      this.pipes.add(pipe);
      down.resume();
    });
  }
}
