// Proxy lifecycle: take Snapshots from a control plane, apply each atomically (new connections
// see the new one, open ones finish where they started), announce the instance, drain on stop.
import { EventEmitter } from "node:events";
import type { Snapshot } from "./config/snapshot.js";
import { DEFAULTS } from "./config/defaults.js";
import { compileSnapshot, SnapshotError, type CompiledSnapshot } from "./compile/snapshot.js";
import { syncClusterRuntimes } from "./cluster/sync.js";
import { alpnFor } from "./compile/inbound.js";
import { ControlPlaneError, announcementOf, type ControlPlane } from "./controlplane/controlplane.js";
import type { TlsMaterial } from "./tls/contexts.js";
import type { SplitWriter } from "./config/split-weights.js";
import { SessionCache } from "./tls/origin.js";
import { PublicListener } from "./inbound/public-listener.js";
import { UpstreamListener } from "./outbound/upstream-listener.js";
import { HttpRouter, OutboundHttpState } from "./outbound/http-router.js";
import { PoolSet } from "./cluster/pools.js";
import type { ClusterRuntime, ClusterStatus } from "./cluster/runtime.js";
import { Metrics } from "./telemetry/metrics.js";
import { sourceTagsOf } from "./telemetry/consul-tags.js";
import type { HttpStats } from "./telemetry/http-stats.js";
import { loadUndici } from "./http/undici.js";
import { registerClusterGauges } from "./telemetry/cluster-gauges.js";
import type { Tracing } from "./telemetry/tracing.js";
import { AccessLog, type AccessLogTarget } from "./telemetry/access-log.js";
import { registerServerGauges } from "./telemetry/server-gauges.js";
import { certInfo, pemCertificates } from "./identity/cert-info.js";
import { createLogger, type Logger } from "./telemetry/log.js";
import { listenerLimits, type ListenerLimits } from "./tcp/admission.js";

export interface ProxyOptions {
  readonly controlPlane: ControlPlane;
  readonly logger?: Logger;
  readonly metrics?: Metrics;
  /** How long open connections may run after shutdown starts. Default 15 s. */
  readonly drainTimeoutMs?: number;
  /** OpenTelemetry tracing of HTTP requests; off when absent. */
  readonly tracing?: { readonly endpoint: string; readonly sampleRate: number };
  /** One JSON line per connection and request; off by default. */
  readonly accessLog?: AccessLogTarget;
  /** Connection and TLS-handshake caps of every listener; default from the file-descriptor limit. */
  readonly limits?: ListenerLimits;
}

export interface ProxyAddresses {
  readonly public: string | null;
  readonly upstreams: Readonly<Record<string, string>>;
}

/** A listener that could not be bound: which one, where, and why. */
export class ListenerBindError extends Error {
  constructor(
    readonly listener: string,
    readonly address: string,
    cause: NodeJS.ErrnoException,
  ) {
    const why = cause.code === "EADDRINUSE" ? "address already in use (another sidecar or app has it)" : cause.message;
    super(`${listener} listener ${address}: ${why}`);
    this.name = "ListenerBindError";
  }
}

export class Proxy extends EventEmitter {
  readonly metrics: Metrics;
  readonly log: Logger;
  private readonly cp: ControlPlane;
  private current: Snapshot | null = null;
  private tls: TlsMaterial | null = null;
  private publicListener: PublicListener | null = null;
  private readonly upstreams = new Map<string, UpstreamListener>();
  private readonly sessions = new SessionCache();
  private readonly pools = new PoolSet(this.sessions);
  /** Cluster state that outlives Snapshots: ejections, counters, pools. */
  private readonly runtimes = new Map<string, ClusterRuntime>();
  private readonly httpStats: HttpStats;
  private readonly router: HttpRouter;
  /** Tracing starts with the first Snapshot: spans are named after the service it names. */
  private readonly obs: { tracing: Tracing | null; accessLog: AccessLog };
  private applying: Promise<void> = Promise.resolve();
  private addrs: { public: string | null; upstreams: Record<string, string> } = { public: null, upstreams: {} };
  private ready = false;
  /** POST /healthcheck/fail: not ready and DRAINING, while every listener keeps serving. */
  private hcFailed = false;
  private stopping: Promise<void> | null = null;
  /** start()'s wait for the first applied Snapshot; stop() ends it. */
  private firstApplied: { resolve(): void; reject(e: unknown): void } | null = null;
  private readonly limits: ListenerLimits;

  constructor(private readonly opts: ProxyOptions) {
    super();
    this.limits = opts.limits ?? listenerLimits();
    this.cp = opts.controlPlane;
    this.log = opts.logger ?? createLogger();
    this.metrics = opts.metrics ?? new Metrics();
    this.httpStats = this.metrics.http;
    this.obs = { tracing: null, accessLog: new AccessLog(opts.accessLog ?? "off", this.metrics.accessLogDropped) };
    this.router = new HttpRouter(this.log.child("http"), this.httpStats, this.obs, this.metrics.outboundRejected);
    registerClusterGauges(this.metrics.registry, () => [...this.runtimes.values()].map((rt) => rt.statsSnapshot()));
    registerServerGauges(this.metrics.registry, {
      state: () => (this.stopping || (this.ready && this.hcFailed) ? "draining" : this.ready ? "live" : "initializing"),
      totalConnections: () => this.activeConnections,
    });
  }

  get isReady(): boolean {
    return this.ready && !this.stopping && !this.hcFailed;
  }

  get healthCheckFailed(): boolean {
    return this.hcFailed;
  }

  /** SIGUSR1 (log rotation): the -access-log file is opened again; resolves with its path once open, null when it is not a file. */
  async reopenLogs(): Promise<{ readonly file: string } | null> {
    await this.obs.accessLog.reopen();
    const file = this.obs.accessLog.path;
    return file === null ? null : { file };
  }

  /**
   * Envoy's /healthcheck/fail (true) and /healthcheck/ok (false): /ready answers 503 and the
   * server state is DRAINING, the listeners stay open and the process runs on; the control plane
   * fails the instance's health check where it keeps one (Consul -register's TTL check).
   */
  async setHealthCheckFailed(failed: boolean): Promise<void> {
    this.hcFailed = failed;
    await this.cp.setHealthCheckFailed?.(failed);
  }

  get snapshot(): Snapshot | null {
    return this.current;
  }

  get addresses(): ProxyAddresses {
    return this.addrs;
  }

  /** The control plane's writer of split weights, when it has one (the admin API's traffic page). */
  get splitWriter(): SplitWriter | null {
    const set = this.cp.setSubsetWeights?.bind(this.cp);
    return set ? { setSubsetWeights: set } : null;
  }

  /** Every cluster's hosts with health, ejection and active requests, for the admin API. */
  clusters(): ClusterStatus[] {
    return [...this.runtimes.values()].map((rt) => rt.hostsSnapshot());
  }

  /**
   * Resolves when the first Snapshot is applied and every listener is bound. Until then nothing
   * listens and the proxy is not ready: a control plane whose first configuration is bad keeps
   * start() waiting (fail closed), and stop() ends the wait.
   */
  async start(): Promise<ProxyAddresses> {
    // Settles when a Snapshot is first applied, or rejects when a first apply fails for a reason
    // a new Snapshot cannot fix (a port in use). An invalid first Snapshot is counted and logged
    // by apply(); start() goes on waiting for a valid one, not ready and listening on nothing.
    const firstApplied = new Promise<void>((resolve, reject) => {
      this.firstApplied = { resolve, reject };
    });
    let delivered = false;
    try {
      await this.cp.start({
        snapshot: (s) => {
          delivered = true;
          this.enqueue(s).then(
            () => {
              if (this.current !== null) this.firstApplied?.resolve();
            },
            (e: unknown) => {
              // An invalid Snapshot was counted and logged by apply(); anything else is a failure
              // to start (first) or a bug that must not pass unseen (later): a compiled Snapshot
              // commits whole, so nothing a Snapshot holds should get here.
              if (e instanceof SnapshotError) return;
              if (this.firstApplied) return this.firstApplied.reject(e);
              this.metrics.snapshotsRejected.labels(s.source, "apply").inc();
              this.log.error("applying a snapshot failed unexpectedly (a bug: please report it); it may be partly applied", { version: s.version, error: e instanceof Error ? e.message : String(e) });
            },
          );
        },
        error: (e) => this.onControlPlaneError(e),
      });
    } catch (e) {
      // Stopped while waiting for a first good configuration: a clean stop, not a failure.
      if (this.stopping && !delivered) {
        await this.stopping;
        return this.addrs;
      }
      throw e;
    }
    if (!delivered) throw new ControlPlaneError(this.cp.kind, "control plane started without delivering a Snapshot", true);
    await firstApplied;
    this.firstApplied = null;
    if (this.current === null) {
      // stop() ended the wait.
      await this.stopping;
      return this.addrs;
    }
    if (this.publicListener && this.current.publicListener) {
      const [host, port] = splitAddr(this.addrs.public!);
      await this.cp.announce(announcementOf(host, port, this.current.publicListener.protocol));
    }
    this.ready = true;
    this.log.info("proxy ready", { service: this.current.identity.service, control_plane: this.cp.kind, public: this.addrs.public, ...prefixed("upstream.", this.addrs.upstreams) });
    this.emit("ready", this.addrs);
    return this.addrs;
  }

  private onControlPlaneError(e: ControlPlaneError): void {
    this.metrics.controlPlaneErrors.labels(this.cp.kind, e.resource).inc();
    // Before the first Snapshot there is nothing to serve on: say that nothing is served.
    const msg = this.current ? "control plane error; serving on the last good snapshot" : "control plane error; not serving (not ready, no listeners) until the configuration is fixed";
    this.log.error(msg, { control_plane: this.cp.kind, error: e.message });
  }

  private enqueue(s: Snapshot): Promise<void> {
    // Serialised: each apply sees the state the previous one left.
    const next = this.applying.then(() => this.apply(s));
    // The caller of enqueue() handles the failure; the chain only needs to go on after it.
    this.applying = next.then(noop, noop);
    return next;
  }

  /**
   * Compiles one Snapshot, then commits it. A Snapshot that does not compile is counted, logged
   * with the field, and ignored whole: nothing of it is applied. The commit works from compiled
   * values only, so nothing a Snapshot holds can make it fail halfway; a listener that cannot
   * bind is the one exception (the address is taken), logged and tried again with the next.
   */
  async apply(s: Snapshot): Promise<void> {
    if (this.stopping) return;
    let compiled: CompiledSnapshot;
    try {
      compiled = compileSnapshot(s, this.tls);
    } catch (e) {
      if (!(e instanceof SnapshotError)) throw e;
      this.metrics.snapshotsRejected.labels(s.source, e.field).inc();
      this.rejected(s, e);
      if (this.current === null) throw e;
      return;
    }
    // HTTP/2 goes through undici's pools; HTTP/1.1 on the llhttp core does not, so a sidecar
    // that speaks only TCP or HTTP/1.1 loads undici only if a request ever takes the node:http
    // path (http/undici.ts). The node:http engine, chosen by hand, sends everything through it.
    if (compiled.speaksHttp2 || (compiled.speaksHttp && process.env["MESHPROXY_HTTP1_CORE"] === "node")) await loadUndici();
    const first = this.current === null;
    if (first && this.opts.tracing && !this.obs.tracing) {
      // The OpenTelemetry SDK is loaded only when tracing is on.
      const { Tracing } = await import("./telemetry/tracing.js");
      this.obs.tracing = new Tracing({ ...this.opts.tracing, serviceName: s.identity.service, exportFailures: this.metrics.tracingExportFailures });
      this.log.info("tracing requests", { endpoint: this.opts.tracing.endpoint, sample_rate: this.opts.tracing.sampleRate });
    }
    // stop() may have begun while undici or the tracing SDK loaded: it closed every listener.
    if (this.stopping) return;
    const binds = this.commit(compiled);
    const errors = await this.bindNew(binds);
    if (first && errors.length > 0) {
      this.closeAll();
      throw errors[0]!;
    }
    for (const e of errors) this.log.error("listener not started; will retry with the next snapshot", { error: e.message });
    if (compiled.tls !== this.tls) this.recordCertExpiry(s);
    this.current = s;
    this.tls = compiled.tls;
    this.metrics.setSource(sourceTagsOf(s.identity));
    this.metrics.snapshotsApplied.labels(s.source).inc();
    this.metrics.controlPlaneLastSuccess.labels(s.source).setToCurrentTime();
    this.log.debug("snapshot applied", { version: s.version, source: s.source });
    this.emit("snapshot", s);
  }

  private rejected(s: Snapshot, e: SnapshotError): void {
    const msg = this.current ? "snapshot rejected; keeping the last good one" : "snapshot rejected; not serving (not ready, no listeners) until a valid one arrives";
    this.log.error(msg, { version: s.version, field: e.field, error: e.message });
  }

  /** Leaf and root expiry series, replaced whole when the certificates change (rotation drops old serials). */
  private recordCertExpiry(s: Snapshot): void {
    this.metrics.certExpiry.reset();
    this.metrics.certExpiry.labels("leaf", s.identity.serial).set(s.identity.notAfter.getTime() / 1000);
    for (const pem of s.trust.rootsPem.flatMap(pemCertificates)) {
      try {
        const root = certInfo(pem);
        this.metrics.certExpiry.labels("root", root.serial).set(new Date(root.notAfter).getTime() / 1000);
      } catch (e) {
        this.log.warn("cannot read a trusted root certificate for its expiry metric", { error: e instanceof Error ? e.message : String(e) });
      }
    }
  }

  /**
   * The synchronous part of applying: cluster runtimes and every listener that stays take the new
   * compiled state in one step, so new connections and requests see all of the new Snapshot or
   * none of it. Returns the listeners still to bind (new addresses, a changed ALPN).
   */
  private commit(c: CompiledSnapshot): Array<() => Promise<ListenerBindError | null>> {
    this.sessions.reset(c.tls.key);
    syncClusterRuntimes(this.runtimes, this.pools, c.clusters, c.tls);
    const binds: Array<() => Promise<ListenerBindError | null>> = [];
    this.commitPublic(c, binds);
    this.commitUpstreams(c, binds);
    return binds;
  }

  /** One after the other, as the Snapshot lists them (ports chosen by the OS are then in that order too). */
  private async bindNew(binds: ReadonlyArray<() => Promise<ListenerBindError | null>>): Promise<ListenerBindError[]> {
    const errors: ListenerBindError[] = [];
    for (const bind of binds) {
      const e = await bind();
      if (e !== null) errors.push(e);
    }
    return errors;
  }

  private commitPublic(c: CompiledSnapshot, binds: Array<() => Promise<ListenerBindError | null>>): void {
    const inbound = c.inbound;
    const existing = this.publicListener;
    if (inbound === null) {
      if (existing) {
        existing.close();
        this.publicListener = null;
        this.addrs.public = null;
      }
      return;
    }
    let replaced = existing;
    if (existing && sameBind(existing.bind, inbound.config.bind)) {
      if (existing.alpn === alpnFor(inbound.config.protocol)) {
        existing.update(inbound, c.tls);
        return;
      }
      // Same address, different ALPN: the old server must release the port first.
      existing.close();
      this.publicListener = null;
      replaced = null;
    }
    binds.push(async () => {
      const l = new PublicListener(inbound, c.tls, this.metrics, this.log, this.obs, this.limits);
      try {
        const a = await l.listen();
        replaced?.close();
        this.publicListener = l;
        this.addrs.public = `${a.address}:${a.port}`;
        return null;
      } catch (e) {
        return new ListenerBindError("public", fmt(inbound.config.bind), e as NodeJS.ErrnoException);
      }
    });
  }

  private commitUpstreams(c: CompiledSnapshot, binds: Array<() => Promise<ListenerBindError | null>>): void {
    const wanted = new Set(c.upstreams.map((u) => u.name));
    for (const [name, l] of this.upstreams) {
      if (wanted.has(name)) continue;
      l.close();
      this.upstreams.delete(name);
      delete this.addrs.upstreams[name];
      this.log.info("upstream listener removed", { upstream: name });
    }
    for (const u of c.upstreams) {
      const http = u.routes === null ? null : new OutboundHttpState(u.name, u.routes, this.runtimes);
      const existing = this.upstreams.get(u.name);
      if (existing && sameBind(existing.bind, u.config.bind)) {
        existing.update(u, c.tls, http);
        continue;
      }
      binds.push(async () => {
        const l = new UpstreamListener(u, c.tls, http, this.runtimes, this.sessions, this.metrics, this.router, this.log, this.obs, this.limits);
        try {
          const a = await l.listen();
          existing?.close();
          this.upstreams.set(u.name, l);
          this.addrs.upstreams[u.name] = `${a.address}:${a.port}`;
          return null;
        } catch (e) {
          return new ListenerBindError(`upstream "${u.name}"`, fmt(u.config.bind), e as NodeJS.ErrnoException);
        }
      });
    }
  }

  private allListeners(): Array<PublicListener | UpstreamListener> {
    return [...(this.publicListener ? [this.publicListener] : []), ...this.upstreams.values()];
  }

  private closeAll(): void {
    for (const l of this.allListeners()) l.close();
  }

  get activeConnections(): number {
    return this.allListeners().reduce((n, l) => n + l.activeConnections, 0);
  }

  /**
   * Graceful stop: deregister, stop accepting, let open connections finish up to the drain
   * timeout, then close what is left.
   */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    this.emit("draining");
    this.firstApplied?.resolve();
    try {
      await this.cp.withdraw();
    } catch (e) {
      this.log.warn("could not deregister", { error: (e as Error).message });
    }
    this.closeAll();
    const deadline = Date.now() + (this.opts.drainTimeoutMs ?? DEFAULTS.drainTimeoutMs);
    if (this.activeConnections > 0) this.log.info("draining open connections", { open: this.activeConnections, timeout_ms: deadline - Date.now() });
    // Callers learn of the withdrawal from their control plane only after a while (the dev
    // catalog's poll is 1 s) and until then send requests on their pooled keep-alive connections.
    // Closing one of those as idle races a request already on its way, which then fails where the
    // caller cannot retry it (its bytes had left): so idle connections are left open for a grace
    // first, as Envoy keeps serving through its drain period, while busy ones finish as before.
    const graceEnd = Date.now() + Math.min(DEREGISTRATION_GRACE_MS, (deadline - Date.now()) / 2);
    while (this.activeConnections > 0 && Date.now() < graceEnd) await new Promise((r) => setTimeout(r, 50));
    while (this.activeConnections > 0 && Date.now() < deadline) {
      // Keep-alive HTTP connections close as soon as they are idle; busy ones after their response.
      for (const l of this.allListeners()) l.closeIdle();
      await new Promise((r) => setTimeout(r, 50));
    }
    if (this.activeConnections > 0) this.log.warn("drain timeout; closing open connections", { open: this.activeConnections });
    for (const l of this.allListeners()) l.destroyConnections();
    for (const rt of this.runtimes.values()) rt.close();
    await this.pools.closeAll();
    await this.obs.tracing?.shutdown();
    this.obs.accessLog.close();
    await this.cp.stop();
    this.ready = false;
    this.emit("stopped");
  }
}

function noop(): void {}

/** How long a drain leaves idle keep-alive connections open after deregistering: twice the dev catalog's poll. */
const DEREGISTRATION_GRACE_MS = 2000;

function sameBind(a: { host: string; port: number }, b: { host: string; port: number }): boolean {
  return a.host === b.host && a.port === b.port;
}

function fmt(hp: { host: string; port: number }): string {
  return hp.host.includes(":") ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

export function splitAddr(a: string): [string, number] {
  const i = a.lastIndexOf(":");
  return [a.slice(0, i).replace(/^\[|\]$/g, ""), Number(a.slice(i + 1))];
}

function prefixed(prefix: string, r: Readonly<Record<string, string>>): Record<string, string> {
  return Object.fromEntries(Object.entries(r).map(([k, v]) => [`${prefix}${k}`, v]));
}
