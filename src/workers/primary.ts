// The primary of -concurrency N: it runs the control plane (one watch of the agent, the state
// directory or the file for all workers), relays each Snapshot to every worker, announces and
// withdraws the instance, serves the admin API and the metrics (one scrape aggregating every
// worker's registry with prom-client's AggregatorRegistry), restarts a worker that dies, and
// drains them all on shutdown. It holds no connection of the data plane: node:cluster's
// round-robin has it accept on the shared listening sockets and pass each connection to a worker.
import cluster, { type Worker } from "node:cluster";
import { EventEmitter } from "node:events";
import { AggregatorRegistry, Counter, type Registry } from "prom-client";
import type { Snapshot } from "../config/snapshot.js";
import type { ReopenedLog } from "../cli/signals.js";
import { announcementOf, type ControlPlane, type ControlPlaneError } from "../controlplane/controlplane.js";
import type { ClusterStatus } from "../cluster/runtime.js";
import type { AdminTarget } from "../admin/server.js";
import type { SplitWriter } from "../config/split-weights.js";
import type { ProxyAddresses } from "../proxy.js";
import { splitAddr } from "../proxy.js";
import type { Metrics } from "../telemetry/metrics.js";
import { sourceTagsOf } from "../telemetry/consul-tags.js";
import { logRejection, type Level, type LevelControl, type Logger } from "../telemetry/log.js";
import { PortChoices } from "./ports.js";
import { mergeClusterStatus } from "./clusters.js";
import { SummedReadings } from "./readings.js";
import { isFromWorker, WORKER_CONTROL_PLANE_ENV, WORKER_INDEX_ENV, type FromWorker, type ToWorker, type WorkerMetrics } from "./protocol.js";

/** A worker could not serve the first Snapshot: which listener (null: not a listener) and why. */
export class WorkerStartError extends Error {
  constructor(
    message: string,
    readonly listener: string | null,
  ) {
    super(message);
    this.name = "WorkerStartError";
  }
}

/** A worker that lived less than this before exiting is restarted after a back-off, not at once. */
const QUICK_EXIT_MS = 5_000;
const MAX_RESTART_DELAY_MS = 30_000;
/** A worker that has not answered a scrape or /clusters within this is left out of the answer. */
const WORKER_REPLY_TIMEOUT_MS = 5_000;
/** How often the primary gathers the workers' request totals for the traffic page (its sampling rate). */
const READINGS_EVERY_MS = 1_000;
/** After the drain timeout, how long workers get to close what is left and exit before SIGKILL. */
const EXIT_GRACE_MS = 5_000;

export interface PrimaryOptions {
  readonly controlPlane: ControlPlane;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly concurrency: number;
  readonly drainTimeoutMs: number;
  /** The workers' -access-log file, named when SIGUSR1 has them reopen it. */
  readonly accessLogFile?: string;
}

interface Slot {
  readonly index: number;
  worker: Worker | null;
  /** Said hello: it takes Snapshots now. */
  listening: boolean;
  ready: boolean;
  startedAt: number;
  quickExits: number;
  restart: NodeJS.Timeout | null;
}

type Reply = Extract<FromWorker, { id: number }>;

export class Primary extends EventEmitter implements AdminTarget {
  readonly metrics: Metrics;
  private readonly cp: ControlPlane;
  private readonly log: Logger;
  private readonly slots: Slot[];
  private readonly ports = new PortChoices();
  private readonly restarts: Counter<"envoy_worker_id">;
  /** The latest Snapshot the control plane delivered, ports resolved: what a (re)started worker gets. */
  private latest: Snapshot | null = null;
  /** What workers last reported applied (for /config_dump, /certs, /traffic.json). */
  private applied: Snapshot | null = null;
  /** Recently relayed Snapshots by version, to name what a worker reports applied. */
  private readonly relayed = new Map<number, Snapshot>();
  private relaying: Promise<void> = Promise.resolve();
  private started = false;
  private stopping: Promise<void> | null = null;
  /** POST /healthcheck/fail: not ready; every worker's server state is DRAINING. */
  private hcFailed = false;
  private firstReady: { resolve(a: ProxyAddresses): void; reject(e: Error): void } | null = null;
  private addresses: ProxyAddresses = { public: null, upstreams: {} };
  private nextRequest = 0;
  private readonly pending = new Map<number, { readonly index: number; resolve(r: Reply | null): void }>();
  private exitedAll: (() => void) | null = null;
  readonly requestReadings = new SummedReadings();
  private readingsTimer: NodeJS.Timeout | null = null;
  private gathering = false;

  constructor(private readonly opts: PrimaryOptions) {
    super();
    this.cp = opts.controlPlane;
    this.metrics = opts.metrics;
    this.log = opts.log;
    this.slots = Array.from({ length: opts.concurrency }, (_, index): Slot => ({ index, worker: null, listening: false, ready: false, startedAt: 0, quickExits: 0, restart: null }));
    this.restarts = new Counter({ name: "meshproxy_worker_restarts_total", help: "Workers (-concurrency) that exited unasked and were started again; their open connections were lost", labelNames: ["envoy_worker_id"], registers: [this.metrics.registry] });
    for (const s of this.slots) this.restarts.labels(String(s.index)).inc(0);
  }

  get isReady(): boolean {
    return this.started && !this.stopping && !this.hcFailed && this.slots.some((s) => s.ready);
  }

  get healthCheckFailed(): boolean {
    return this.hcFailed;
  }

  /**
   * SIGUSR1 (log rotation): the primary writes no access log, each worker writes its own lines to
   * the -access-log file, so each is told to reopen it (and logs when it has). Null: no file.
   */
  reopenLogs(): Promise<ReopenedLog | null> {
    const file = this.opts.accessLogFile;
    if (file === undefined) return Promise.resolve(null);
    const told = this.slots.filter((s) => s.listening);
    for (const s of told) this.send(s, { t: "reopen-logs" });
    return Promise.resolve({ file, workers: told.length });
  }

  /** As Proxy.setHealthCheckFailed; every worker (and one started later) follows for its server state. */
  async setHealthCheckFailed(failed: boolean): Promise<void> {
    this.hcFailed = failed;
    for (const s of this.slots) if (s.listening) this.send(s, { t: "health-check", failed });
    await this.cp.setHealthCheckFailed?.(failed);
  }

  get snapshot(): Snapshot | null {
    return this.applied;
  }

  get splitWriter(): SplitWriter | null {
    const set = this.cp.setSubsetWeights?.bind(this.cp);
    return set ? { setSubsetWeights: set } : null;
  }

  /**
   * Starts the control plane and the workers; resolves when every worker serves the first
   * Snapshot. As with one process, an invalid first Snapshot keeps it waiting (every worker
   * rejects it), and a listener that cannot bind fails the start.
   */
  async start(): Promise<ProxyAddresses> {
    // Round-robin: the primary accepts and hands connections out in turn. The kernel's own
    // spread over workers accepting on one socket (SCHED_NONE) is known to be very uneven, and
    // SO_REUSEPORT (listen's reusePort) is not in Node 20.
    cluster.schedulingPolicy = cluster.SCHED_RR;
    cluster.setupPrimary({ serialization: "advanced" });
    cluster.on("message", this.onMessage);
    cluster.on("exit", this.onExit);
    const ready = new Promise<ProxyAddresses>((resolve, reject) => (this.firstReady = { resolve, reject }));
    await this.cp.start({ snapshot: (s) => this.relay(s), error: (e) => this.onControlPlaneError(e) });
    await this.relaying;
    if (this.stopping) return this.addresses;
    for (const s of this.slots) this.fork(s);
    const addresses = await ready;
    this.firstReady = null;
    if (this.stopping) return addresses;
    if (addresses.public && this.applied?.publicListener) {
      const [host, port] = splitAddr(addresses.public);
      await this.cp.announce(announcementOf(host, port, this.applied.publicListener.protocol));
    }
    this.started = true;
    this.readingsTimer = setInterval(() => void this.gatherReadings().catch(logRejection(this.log, "gathering the workers' request totals")), READINGS_EVERY_MS);
    this.readingsTimer.unref();
    const service = (this.applied ?? this.latest)?.identity.service;
    this.log.info("proxy ready", { service, control_plane: this.cp.kind, workers: this.slots.length, public: addresses.public, ...prefixed("upstream.", addresses.upstreams) });
    this.emit("ready", addresses);
    return addresses;
  }

  private onControlPlaneError(e: ControlPlaneError): void {
    this.metrics.controlPlaneErrors.labels(this.cp.kind, e.resource).inc();
    const msg = this.applied ? "control plane error; serving on the last good snapshot" : "control plane error; not serving (not ready, no listeners) until the configuration is fixed";
    this.log.error(msg, { control_plane: this.cp.kind, error: e.message });
  }

  /** In order, each after the previous one's ports are chosen. */
  private relay(s: Snapshot): void {
    this.relaying = this.relaying
      .then(async () => {
        const r = await this.ports.apply(s);
        this.latest = r;
        this.relayed.set(r.version, r);
        // Versions reported applied are recent ones; an old one never comes back.
        for (const v of this.relayed.keys()) if (this.relayed.size > 16) this.relayed.delete(v);
        for (const slot of this.slots) if (slot.listening) this.send(slot, { t: "snapshot", snapshot: r });
      })
      .catch(logRejection(this.log, "choosing ports for the snapshot's port-0 listeners"));
  }

  private fork(slot: Slot): void {
    slot.restart = null;
    slot.listening = false;
    slot.ready = false;
    slot.startedAt = Date.now();
    const w = cluster.fork({ [WORKER_INDEX_ENV]: String(slot.index), [WORKER_CONTROL_PLANE_ENV]: this.cp.kind });
    slot.worker = w;
    this.log.info("worker started", { worker: slot.index, pid: w.process.pid });
  }

  private send(slot: Slot, m: ToWorker): void {
    const w = slot.worker;
    if (w?.isConnected()) w.send(m);
  }

  private slotOf(worker: Worker): Slot | undefined {
    return this.slots.find((s) => s.worker === worker);
  }

  private readonly onMessage = (worker: Worker, m: unknown): void => {
    const slot = this.slotOf(worker);
    if (!slot || !isFromWorker(m)) return;
    switch (m.t) {
      case "hello":
        slot.listening = true;
        // Started while draining: a drain sent before it listened was lost.
        if (this.stopping) return this.send(slot, { t: "drain" });
        if (this.hcFailed) this.send(slot, { t: "health-check", failed: true });
        // The last good Snapshot first: a worker restarted while the latest is one every worker
        // rejected must serve what the others serve, not wait for a valid one.
        if (this.applied) this.send(slot, { t: "snapshot", snapshot: this.applied });
        if (this.latest && this.latest !== this.applied) this.send(slot, { t: "snapshot", snapshot: this.latest });
        return;
      case "ready":
        return this.onReady(slot, m.addresses);
      case "applied": {
        const s = this.relayed.get(m.version);
        if (s) this.onApplied(s);
        return;
      }
      case "failed":
        if (this.firstReady) return this.firstReady.reject(new WorkerStartError(m.error, m.listener));
        this.log.error("worker could not serve its first snapshot", { worker: slot.index, error: m.error });
        return;
      case "clusters":
      case "metrics":
      case "readings": {
        const p = this.pending.get(m.id);
        if (p) {
          this.pending.delete(m.id);
          p.resolve(m);
        }
        return;
      }
      case "stopped":
        return;
    }
  };

  private onApplied(s: Snapshot): void {
    if (this.applied !== null && this.applied.version >= s.version) return;
    this.applied = s;
    this.metrics.setSource(sourceTagsOf(s.identity));
  }

  private onReady(slot: Slot, addresses: ProxyAddresses): void {
    slot.ready = true;
    if (this.started) {
      this.log.info("worker ready", { worker: slot.index, pid: slot.worker?.process.pid });
      return;
    }
    this.addresses = addresses;
    if (this.slots.every((s) => s.ready)) this.firstReady?.resolve(addresses);
  }

  private readonly onExit = (worker: Worker, code: number | null, signal: string | null): void => {
    const slot = this.slotOf(worker);
    if (!slot) return;
    slot.worker = null;
    slot.listening = false;
    slot.ready = false;
    for (const [id, p] of this.pending) {
      if (p.index !== slot.index) continue;
      this.pending.delete(id);
      p.resolve(null);
    }
    if (this.stopping) {
      if (this.slots.every((s) => s.worker === null)) this.exitedAll?.();
      return;
    }
    if (!this.started) {
      // A worker that dies before serving fails the start, as a process that cannot start does.
      this.firstReady?.reject(new WorkerStartError(`worker ${slot.index} exited before it was ready (${signal ?? `code ${code}`})`, null));
      return;
    }
    this.requestReadings.retire(slot.index);
    const lived = Date.now() - slot.startedAt;
    slot.quickExits = lived < QUICK_EXIT_MS ? slot.quickExits + 1 : 0;
    const delay = slot.quickExits === 0 ? 0 : Math.min(MAX_RESTART_DELAY_MS, 500 * 2 ** (slot.quickExits - 1));
    this.restarts.labels(String(slot.index)).inc();
    this.log.warn("worker exited; starting a new one (its open connections are lost, other workers' are not)", { worker: slot.index, pid: worker.process.pid, code, signal, restart_in_ms: delay });
    slot.restart = setTimeout(() => this.fork(slot), delay);
  };

  /** Asks every worker that takes messages; resolves with the replies that came in time, by worker index. */
  private ask(question: (id: number) => ToWorker): Promise<Array<{ readonly worker: number; readonly reply: Reply }>> {
    const asked = this.slots.filter((s) => s.listening && s.worker?.isConnected());
    return Promise.all(
      asked.map(
        (slot) =>
          new Promise<{ readonly worker: number; readonly reply: Reply } | null>((resolve) => {
            const id = this.nextRequest++;
            const timer = setTimeout(() => {
              this.pending.delete(id);
              this.log.warn("worker did not answer in time; left out of this answer", { worker: slot.index, timeout_ms: WORKER_REPLY_TIMEOUT_MS });
              resolve(null);
            }, WORKER_REPLY_TIMEOUT_MS);
            this.pending.set(id, {
              index: slot.index,
              resolve: (r) => {
                clearTimeout(timer);
                resolve(r && { worker: slot.index, reply: r });
              },
            });
            this.send(slot, question(id));
          }),
      ),
    ).then((replies) => replies.filter((r) => r !== null));
  }

  /** Every worker's clusters, merged into one view (clusters.ts). */
  async clusters(): Promise<ClusterStatus[]> {
    const replies = await this.ask((id) => ({ t: "clusters", id }));
    return mergeClusterStatus(replies.flatMap(({ reply: r }) => (r.t === "clusters" ? [r.clusters] : [])));
  }

  private async gatherReadings(): Promise<void> {
    // One round at a time: a worker slow to answer delays the figures, it does not pile up asks.
    if (this.gathering) return;
    this.gathering = true;
    try {
      const replies = await this.ask((id) => ({ t: "readings", id }));
      for (const { worker, reply: r } of replies) if (r.t === "readings") this.requestReadings.update(worker, r.readings);
      this.requestReadings.commit();
    } finally {
      this.gathering = false;
    }
  }

  /** The primary's registry and every worker's, aggregated by prom-client (counters summed, gauges by their aggregator). */
  async aggregatedRegistry(): Promise<Registry> {
    const replies = await this.ask((id) => ({ t: "metrics", id }));
    const workers: WorkerMetrics[] = replies.flatMap(({ reply: r }) => (r.t === "metrics" ? [r.metrics] : []));
    return AggregatorRegistry.aggregate([await this.metrics.registry.getMetricsAsJSON(), ...workers]);
  }

  /** POST /logging: every worker's level follows the primary's. */
  levels(own: LevelControl): LevelControl {
    return {
      level: () => own.level(),
      setLevel: (level: Level) => {
        own.setLevel(level);
        for (const s of this.slots) this.send(s, { t: "log-level", level });
      },
    };
  }

  /** Withdraws the instance, has every worker drain, waits for them to exit, stops the control plane. */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    this.emit("draining");
    if (this.readingsTimer) clearInterval(this.readingsTimer);
    this.firstReady?.resolve(this.addresses);
    try {
      await this.cp.withdraw();
    } catch (e) {
      this.log.warn("could not deregister", { error: e instanceof Error ? e.message : String(e) });
    }
    for (const s of this.slots) {
      if (s.restart) clearTimeout(s.restart);
      s.restart = null;
    }
    const exited = new Promise<void>((resolve) => (this.exitedAll = resolve));
    if (this.slots.every((s) => s.worker === null)) this.exitedAll?.();
    for (const s of this.slots) this.send(s, { t: "drain" });
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), this.opts.drainTimeoutMs + EXIT_GRACE_MS)));
    if ((await Promise.race([exited, late])) === "late") {
      this.log.warn("workers did not exit after the drain timeout; killing them", { workers: this.slots.filter((s) => s.worker !== null).map((s) => s.index).join(",") });
      for (const s of this.slots) s.worker?.process.kill("SIGKILL");
      await exited;
    }
    clearTimeout(timer);
    cluster.off("message", this.onMessage);
    cluster.off("exit", this.onExit);
    await this.cp.stop();
    this.emit("stopped");
  }
}

function prefixed(prefix: string, r: Readonly<Record<string, string>>): Record<string, string> {
  return Object.fromEntries(Object.entries(r).map(([k, v]) => [`${prefix}${k}`, v]));
}
