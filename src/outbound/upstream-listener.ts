// An upstream listener: plain TCP from the local app on loopback, mTLS to a healthy instance of
// the destination. A connect failure tries the next instance before giving up.
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import type { Cluster, UpstreamListener as UpstreamListenerConfig } from "../config/snapshot.js";
import type { TlsMaterial } from "../tls/contexts.js";
import { originate, type SessionCache, type UpstreamTlsError } from "../tls/origin.js";
import { EndpointPicker, NoHealthyEndpointError } from "../cluster/endpoints.js";
import type { Endpoint } from "../config/snapshot.js";
import { joinSockets, type Pipe } from "../tcp/pipe.js";
import type { ClusterStats, ListenerStats, Metrics } from "../telemetry/metrics.js";
import type { Logger } from "../telemetry/log.js";

/** How many distinct instances one connection may try. */
const MAX_ATTEMPTS = 3;

interface OutboundState {
  readonly config: UpstreamListenerConfig;
  readonly cluster: Cluster;
  readonly tls: TlsMaterial;
  readonly clusterStats: ClusterStats;
}

export class UpstreamListener {
  private readonly server: Server;
  private readonly log: Logger;
  private state: OutboundState;
  private readonly picker = new EndpointPicker();
  private stats: ListenerStats | null = null;
  private readonly pipes = new Set<Pipe>();
  private readonly pending = new Set<Socket>();
  private address = "";

  constructor(
    config: UpstreamListenerConfig,
    cluster: Cluster,
    tls: TlsMaterial,
    private readonly sessions: SessionCache,
    private readonly metrics: Metrics,
    logger: Logger,
  ) {
    this.log = logger.child(`upstream.${config.name}`);
    this.state = { config, cluster, tls, clusterStats: metrics.cluster(cluster.name) };
    this.picker.update(cluster);
    // pauseOnConnect: nothing is read from the app until the mTLS side is up, so early bytes
    // wait in the kernel instead of in our memory.
    this.server = createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (s) => this.onConnection(s));
    this.server.on("error", (e) => this.log.error("listener error", { address: this.address, error: e.message }));
  }

  get name(): string {
    return this.state.config.name;
  }

  get bind(): UpstreamListenerConfig["bind"] {
    return this.state.config.bind;
  }

  get activeConnections(): number {
    return this.pipes.size + this.pending.size;
  }

  async listen(): Promise<AddressInfo> {
    const { host, port } = this.state.config.bind;
    await new Promise<void>((resolve, reject) => {
      const onError = (e: Error) => reject(e);
      this.server.once("error", onError);
      this.server.listen({ host, port, exclusive: true }, () => {
        this.server.off("error", onError);
        resolve();
      });
    });
    const addr = this.server.address() as AddressInfo;
    this.address = `${addr.address}:${addr.port}`;
    this.stats = this.metrics.listener(this.address);
    this.log.info("upstream listener started", { address: this.address, destination: this.state.cluster.service });
    return addr;
  }

  update(config: UpstreamListenerConfig, cluster: Cluster, tls: TlsMaterial): void {
    const clusterStats = cluster.name === this.state.cluster.name ? this.state.clusterStats : this.metrics.cluster(cluster.name);
    this.state = { config, cluster, tls, clusterStats };
    this.picker.update(cluster);
  }

  private onConnection(down: Socket): void {
    const stats = this.stats!;
    stats.cxTotal.inc();
    stats.cxActive.inc();
    down.once("close", () => {
      stats.cxActive.dec();
      stats.cxDestroy.inc();
    });
    down.on("error", () => down.destroy());
    const state = this.state;
    let candidates: readonly Endpoint[];
    try {
      candidates = this.picker.pick(MAX_ATTEMPTS);
    } catch (e) {
      if (!(e instanceof NoHealthyEndpointError)) throw e;
      state.clusterStats.cxNoHealthyUpstream.inc();
      this.log.warn("connection refused", { error: e.message });
      down.destroy();
      return;
    }
    this.pending.add(down);
    down.once("close", () => this.pending.delete(down));
    this.attempt(down, state, candidates, 0, []);
  }

  private attempt(down: Socket, state: OutboundState, candidates: readonly Endpoint[], i: number, errors: string[]): void {
    const ep = candidates[i]!;
    const { cluster, config, tls, clusterStats } = state;
    originate(
      { host: ep.host, port: ep.port, sni: cluster.sni, expectedSpiffeId: cluster.expectedSpiffeId, timeoutMs: config.connectTimeoutMs },
      tls,
      this.sessions,
      (err: UpstreamTlsError | null, up: TLSSocket) => {
        if (!this.pending.has(down)) {
          up.destroy(); // the app hung up while we were connecting
          return;
        }
        if (err) {
          if (err.kind === "timeout") clusterStats.cxConnectTimeout.inc();
          else clusterStats.cxConnectFail.inc();
          if (err.kind === "identity") this.metrics.upstreamIdentityRejected.labels(cluster.name).inc();
          errors.push(err.message);
          if (i + 1 < candidates.length) return this.attempt(down, state, candidates, i + 1, errors);
          this.log.warn("connection failed", { error: `upstream "${cluster.name}": ${errors.length} instance(s) failed: ${errors.join("; ")}` });
          this.pending.delete(down);
          down.destroy();
          return;
        }
        this.pending.delete(down);
        clusterStats.cxTotal.inc();
        clusterStats.cxActive.inc();
        const pipe = joinSockets(down, up, config.idleTimeoutMs, (r) => {
          this.pipes.delete(pipe);
          clusterStats.cxActive.dec();
          clusterStats.txBytes.inc(r.downstreamBytesIn);
          clusterStats.rxBytes.inc(r.upstreamBytesIn);
          if (this.log.enabled("debug")) {
            this.log.debug("connection closed", { endpoint: `${ep.host}:${ep.port}`, bytes_out: r.downstreamBytesIn, bytes_in: r.upstreamBytesIn, error: r.error?.message });
          }
        });
        this.pipes.add(pipe);
        down.resume();
      },
    );
  }

  close(): void {
    if (this.server.listening) this.server.close();
  }

  destroyConnections(): void {
    for (const p of this.pipes) p.destroy();
    for (const s of this.pending) s.destroy();
  }
}
