// The embedded dev control plane: its own CA and catalog in a state directory, so a mesh works
// on a fresh machine with no server to install. It watches the directory and turns it, plus
// the ProxyRequest, into Snapshots.
import { watch, type FSWatcher } from "node:fs";
import { mkdir } from "node:fs/promises";
import { hostname } from "node:os";
import {
  ControlPlaneError,
  type Announcement,
  type ControlPlane,
  type ControlPlaneHandlers,
  type ProxyRequest,
} from "../controlplane.js";
import { DEFAULTS, type Cluster, type Endpoint, type Identity, type IntentionPolicy, type Snapshot } from "../../config/snapshot.js";
import { issueLeaf, type IssuedLeaf } from "../../identity/ca.js";
import { serviceSni, serviceSpiffeId } from "../../identity/spiffe.js";
import {
  DEFAULT_POLICY,
  StateError,
  deregisterInstance,
  ensureCa,
  paths,
  processAlive,
  readCatalog,
  readIntentions,
  registerInstance,
  type CatalogEntry,
  type DevCa,
} from "./state.js";
import type { Logger } from "../../telemetry/log.js";

export interface DevControlPlaneOptions {
  readonly dataDir: string;
  readonly request: ProxyRequest;
  readonly logger: Logger;
  /** Fallback poll for filesystems where fs.watch misses events. */
  readonly pollMs?: number;
}

/** A renewal point drawn uniformly from 60–90% of the lifetime, as Consul's agent does. */
export function renewalDelayMs(notBefore: Date, notAfter: Date, now = Date.now(), rand = Math.random): number {
  const life = notAfter.getTime() - notBefore.getTime();
  const at = notBefore.getTime() + life * (0.6 + 0.3 * rand());
  return Math.max(0, at - now);
}

export class DevControlPlane implements ControlPlane {
  readonly kind = "dev";
  private readonly log: Logger;
  private readonly instanceId: string;
  private handlers: ControlPlaneHandlers | null = null;
  private ca: DevCa | null = null;
  private leaf: IssuedLeaf | null = null;
  private intentions: IntentionPolicy = DEFAULT_POLICY;
  private catalog: CatalogEntry[] = [];
  private version = 0;
  private lastFingerprint = "";
  private announced: Announcement | null = null;
  private watchers: FSWatcher[] = [];
  private timers = new Set<NodeJS.Timeout>();
  private refreshing: Promise<void> | null = null;
  private refreshAgain = false;
  private stopped = false;
  private readonly reportedProblems = new Set<string>();

  constructor(private readonly opts: DevControlPlaneOptions) {
    this.log = opts.logger.child("dev-cp");
    this.instanceId = opts.request.proxyId ?? `${opts.request.service}-sidecar-proxy-${process.pid}`;
  }

  async start(handlers: ControlPlaneHandlers): Promise<void> {
    this.handlers = handlers;
    const { dataDir } = this.opts;
    let ca: DevCa & { created: boolean };
    try {
      ca = await ensureCa(dataDir);
    } catch (e) {
      throw new ControlPlaneError("ca", `cannot load or create the dev CA in ${dataDir}: ${(e as Error).message}`, true);
    }
    this.ca = ca;
    if (ca.created) this.log.info("created dev CA", { dir: dataDir, trust_domain: ca.config.trustDomain });
    await mkdir(paths(dataDir).catalog, { recursive: true });
    await this.renewLeaf();
    await this.refresh();
    this.watchDir(dataDir);
    this.watchDir(paths(dataDir).catalog);
    const poll = setInterval(() => void this.refresh(), this.opts.pollMs ?? 1000);
    poll.unref();
    this.timers.add(poll);
  }

  private watchDir(dir: string): void {
    try {
      const w = watch(dir, { persistent: false }, () => this.scheduleRefresh());
      w.on("error", (e) => this.log.debug("watch error; relying on polling", { dir, error: e.message }));
      this.watchers.push(w);
    } catch (e) {
      this.log.debug("cannot watch; relying on polling", { dir, error: (e as Error).message });
    }
  }

  private scheduleRefresh(): void {
    // Coalesce bursts of events (a rename is several) into one re-read.
    if (this.refreshing) {
      this.refreshAgain = true;
      return;
    }
    void this.refresh();
  }

  private async renewLeaf(): Promise<void> {
    const ca = this.ca!;
    const { service } = this.opts.request;
    const spiffeId = serviceSpiffeId({ trustDomain: ca.config.trustDomain, namespace: DEFAULTS.namespace, datacenter: ca.config.datacenter, service });
    this.leaf = await issueLeaf(ca, { spiffeId, commonName: service, ttlMs: ca.config.leafTtlMs });
    this.log.info("issued leaf certificate", { service, serial: this.leaf.serial, not_after: this.leaf.notAfter.toISOString() });
    this.scheduleRenewal(renewalDelayMs(this.leaf.notBefore, this.leaf.notAfter));
  }

  private scheduleRenewal(delayMs: number): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (this.stopped) return;
      this.renewLeaf()
        .then(() => this.refresh())
        .catch((e: Error) => {
          this.report(new ControlPlaneError("leaf", `renewal failed: ${e.message}; retrying in 5s`));
          this.scheduleRenewal(5000);
        });
    }, Math.min(delayMs, 2 ** 31 - 1));
    t.unref();
    this.timers.add(t);
  }

  private report(e: ControlPlaneError): void {
    this.handlers?.error(e);
  }

  private async refresh(): Promise<void> {
    if (this.stopped) return;
    if (this.refreshing) {
      this.refreshAgain = true;
      return this.refreshing;
    }
    this.refreshing = (async () => {
      do {
        this.refreshAgain = false;
        await this.readState();
        this.emitIfChanged();
      } while (this.refreshAgain && !this.stopped);
    })().finally(() => (this.refreshing = null));
    return this.refreshing;
  }

  private async readState(): Promise<void> {
    const { dataDir } = this.opts;
    try {
      this.intentions = await readIntentions(dataDir);
      this.reportedProblems.delete("intentions");
    } catch (e) {
      // Keep the last good intentions; say so once per distinct problem, not every poll.
      const msg = (e as Error).message;
      if (!this.reportedProblems.has(msg)) {
        this.reportedProblems.add(msg);
        this.report(new ControlPlaneError("intentions", msg));
      }
    }
    const { entries, problems } = await readCatalog(dataDir);
    this.catalog = entries;
    for (const p of problems) {
      if (this.reportedProblems.has(p.message)) continue;
      this.reportedProblems.add(p.message);
      this.report(new ControlPlaneError("catalog", p.message));
    }
  }

  private endpointsFor(service: string): Endpoint[] {
    return this.catalog
      .filter((e) => e.service === service)
      .map((e) => ({ id: e.id, host: e.address, port: e.port, healthy: processAlive(e.pid), meta: e.meta }));
  }

  private build(): Snapshot {
    const ca = this.ca!;
    const leaf = this.leaf!;
    const req = this.opts.request;
    const { trustDomain, datacenter } = ca.config;
    const namespace = DEFAULTS.namespace;
    const identity: Identity = {
      service: req.service,
      namespace,
      datacenter,
      trustDomain,
      spiffeId: serviceSpiffeId({ trustDomain, namespace, datacenter, service: req.service }),
      certChainPem: leaf.certPem,
      privateKeyPem: leaf.keyPem,
      serial: leaf.serial,
      notBefore: leaf.notBefore,
      notAfter: leaf.notAfter,
    };
    const clusters: Record<string, Cluster> = {};
    for (const u of req.upstreams) {
      const dc = u.datacenter ?? datacenter;
      clusters[u.name] = {
        name: u.name,
        service: u.name,
        namespace,
        datacenter: dc,
        sni: serviceSni(u.name, namespace, dc, trustDomain),
        expectedSpiffeId: serviceSpiffeId({ trustDomain, namespace, datacenter: dc, service: u.name }),
        endpoints: this.endpointsFor(u.name),
      };
    }
    const pl = req.publicListener;
    return {
      version: this.version + 1,
      source: this.kind,
      identity,
      trust: { trustDomain, rootsPem: [ca.certPem] },
      publicListener: pl
        ? {
            bind: pl.bind,
            localApp: pl.localApp,
            protocol: pl.protocol ?? "tcp",
            handshakeTimeoutMs: DEFAULTS.handshakeTimeoutMs,
            localConnectTimeoutMs: DEFAULTS.localConnectTimeoutMs,
            idleTimeoutMs: DEFAULTS.idleTimeoutMs,
          }
        : null,
      upstreams: req.upstreams.map((u) => ({
        name: u.name,
        bind: u.bind,
        cluster: u.name,
        protocol: "tcp",
        connectTimeoutMs: u.connectTimeoutMs ?? DEFAULTS.upstreamConnectTimeoutMs,
        idleTimeoutMs: DEFAULTS.idleTimeoutMs,
      })),
      clusters,
      intentions: this.intentions,
    };
  }

  private emitIfChanged(): void {
    if (this.stopped || !this.handlers) return;
    const snap = this.build();
    // Everything except the version number: only a real change makes a new Snapshot.
    const fingerprint = JSON.stringify({ ...snap, version: 0 });
    if (fingerprint === this.lastFingerprint) return;
    this.lastFingerprint = fingerprint;
    this.version = snap.version;
    this.handlers.snapshot(snap);
  }

  async announce(a: Announcement): Promise<void> {
    this.announced = a;
    await registerInstance(this.opts.dataDir, {
      id: this.instanceId,
      service: this.opts.request.service,
      address: a.address,
      port: a.port,
      protocol: a.protocol,
      pid: process.pid,
      meta: { host: hostname() },
    });
    this.log.info("registered service instance", { id: this.instanceId, address: `${a.address}:${a.port}` });
  }

  async withdraw(): Promise<void> {
    if (!this.announced) return;
    this.announced = null;
    await deregisterInstance(this.opts.dataDir, this.instanceId);
    this.log.info("deregistered service instance", { id: this.instanceId });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const w of this.watchers) w.close();
    for (const t of this.timers) clearTimeout(t);
    this.watchers = [];
    this.timers.clear();
    await this.refreshing;
  }
}

export { StateError };
