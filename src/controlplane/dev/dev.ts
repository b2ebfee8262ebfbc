// The embedded dev control plane: its own CA and catalog in a state directory, so a mesh works
// on a fresh machine with no server to install. It watches the directory and turns it, plus
// the ProxyRequest, into Snapshots.
//
// It fails closed: no Snapshot is made until intentions.json and the config entries have been
// read whole and valid at least once (until then start() waits, and the proxy binds nothing and
// reports not ready); after that, a file that breaks or disappears keeps the last good one.
import { watch, type FSWatcher } from "node:fs";
import { CoalescedRun } from "../coalesce.js";
import { mkdir } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import {
  ControlPlaneError,
  type Announcement,
  type ControlPlane,
  type ControlPlaneHandlers,
  type ProxyRequest,
  type UpstreamRequest,
} from "../controlplane.js";
import { DEFAULTS, type Cluster, type Identity, type IntentionPolicy, type Snapshot, type UpstreamListener } from "../../config/snapshot.js";
import type { CaMaterial, IssuedLeaf, LeafRequest } from "../../identity/ca.js";
import { issueLeafInWorker } from "../../identity/ca-worker.js";
import { serviceSpiffeId } from "../../identity/spiffe.js";
import { ENTRY_KINDS, type ConfigEntry } from "../chain/entries.js";
import { compileChain, entryIndex, meshGatewayOverride, serviceDefaults, serviceProtocol, type EntryLookup } from "../chain/compile.js";
import { buildUpstream, upstreamSettingsFor, type ServiceInstance } from "../chain/upstream.js";
import {
  StateError,
  catalogDir,
  deregisterInstance,
  ensureCa,
  listDatacenters,
  openStateDir,
  paths,
  readCaRoots,
  readCatalog,
  readEntries,
  readIntentions,
  registerInstance,
  writeSubsetWeights,
  type CaRoots,
  type CatalogEntry,
  type DevCa,
} from "./state.js";
import type { Logger } from "../../telemetry/log.js";
import type { SubsetWeight } from "../../config/split-weights.js";
import { ownProcess, processAlive } from "./process-identity.js";

export interface DevControlPlaneOptions {
  readonly dataDir: string;
  readonly request: ProxyRequest;
  readonly logger: Logger;
  /** This proxy's datacenter (-datacenter); default: the CA config's (dc1). */
  readonly datacenter?: string;
  /** Fallback poll for filesystems where fs.watch misses events. */
  readonly pollMs?: number;
  /** After a root rotation, the leaf is re-issued after a random delay up to this (default 3 s), so proxies do not all ask at once. */
  readonly rotationJitterMs?: number;
  /** Issues a leaf (default: in a child process); tests slow it down to race a rotation. */
  readonly issueLeaf?: (ca: CaMaterial, req: LeafRequest) => Promise<IssuedLeaf>;
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
  /** This proxy's datacenter and its catalog directory, once the CA config is read. */
  private datacenter = "";
  private catalogPath = "";
  /** The leaf in use, with the intermediates of the root that issued it (sent after it). */
  private leaf: (IssuedLeaf & { readonly chainPem: string }) | null = null;
  private renewal: NodeJS.Timeout | null = null;
  /** When the pending renewal fires (ms since the epoch). */
  private renewalDueAt = Infinity;
  /** The last intentions read whole and valid; null until the first such read. */
  private intentions: IntentionPolicy | null = null;
  /** Every datacenter's catalog in the state directory, by datacenter. */
  private catalogs = new Map<string, CatalogEntry[]>();
  /** Upstreams that cannot carry traffic as configured (no mesh gateway): each said once while it lasts. */
  private upstreamProblems = new Set<string>();
  /** The last set of config entries that compiled; null until the first. A broken edit never replaces it. */
  private entries: ConfigEntry[] | null = null;
  /** Settles start(): the first Snapshot delivered, or stop() before one could be. */
  private first: { resolve: () => void; reject: (e: Error) => void } | null = null;
  private version = 0;
  private lastFingerprint = "";
  private announced: Announcement | null = null;
  /** Upstreams added after start (a Connect-native app's), after the request's own. */
  private readonly added: UpstreamRequest[] = [];
  private watchers: FSWatcher[] = [];
  private timers = new Set<NodeJS.Timeout>();
  private readonly refresher = new CoalescedRun(async () => {
    try {
      await this.readState();
      this.emitIfChanged();
    } catch (e) {
      // A bug, not a bad file (those are reported above): say it, and keep what is in force.
      this.reportOnce("state", `cannot read the state directory: ${messageOf(e)}`);
    }
  }, () => this.stopped);
  private stopped = false;
  // Problems reported and still present after the last read: each is said once while it lasts,
  // and again if it comes back after a fix (a second bad edit is news to the operator).
  private reportedProblems = new Set<string>();
  private seenProblems = new Set<string>();

  constructor(private readonly opts: DevControlPlaneOptions) {
    this.log = opts.logger.child("dev-cp");
    this.instanceId = opts.request.proxyId ?? `${opts.request.service}-sidecar-proxy-${process.pid}`;
  }

  async start(handlers: ControlPlaneHandlers): Promise<void> {
    this.handlers = handlers;
    const { dataDir } = this.opts;
    // Refuses a directory another user could write (UnsafeStateDirError, fatal) before reading it.
    const { created } = await openStateDir(dataDir);
    if (created) this.log.info("laid out a new state directory", { dir: dataDir });
    let ca: DevCa & { created: boolean };
    try {
      ca = await ensureCa(dataDir);
    } catch (e) {
      throw new ControlPlaneError("ca", `cannot load or create the dev CA in ${dataDir}: ${(e as Error).message}`, true);
    }
    this.ca = ca;
    this.datacenter = this.opts.datacenter ?? ca.config.datacenter;
    try {
      this.catalogPath = catalogDir(dataDir, this.datacenter, ca.config.datacenter);
    } catch (e) {
      throw new ControlPlaneError("datacenter", `-datacenter: ${messageOf(e)}`, true);
    }
    if (ca.created) this.log.info("created dev CA", { dir: dataDir, trust_domain: ca.config.trustDomain });
    await mkdir(this.catalogPath, { recursive: true, mode: 0o755 });
    await this.renewLeaf();
    const delivered = new Promise<void>((resolve, reject) => (this.first = { resolve, reject }));
    // stop() may settle it before start() awaits it: that is not an unhandled rejection.
    delivered.catch((e: unknown) => this.log.debug("stopped while waiting for a first valid configuration", { error: e instanceof Error ? e.message : String(e) }));
    if (this.stopped) this.first?.reject(new ControlPlaneError("dev", "stopped before the first snapshot", true));
    // Watching starts before the first read, so a fix made while the proxy waits is seen at once.
    this.watchDir(dataDir);
    this.watchDir(paths(dataDir).caDir);
    this.watchDir(this.catalogPath);
    this.watchDir(paths(dataDir).entries);
    // fs.watch is not recursive here: each config-entry kind has its own directory to watch, so
    // a `meshproxy config write` applies in milliseconds rather than at the next poll.
    for (const kind of ENTRY_KINDS) this.watchDir(join(paths(dataDir).entries, kind));
    const poll = setInterval(() => this.scheduleRefresh(), this.opts.pollMs ?? 1000);
    poll.unref();
    this.timers.add(poll);
    await this.refresh();
    await delivered;
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

  /** A read that fails past the readers' own error handling is a bug: reported, never unhandled. */
  private scheduleRefresh(): void {
    this.refresher.run().catch((e: unknown) => this.report(new ControlPlaneError("state", `re-reading ${this.opts.dataDir} failed: ${e instanceof Error ? e.message : String(e)}`)));
  }

  private async renewLeaf(): Promise<void> {
    const issue = this.opts.issueLeaf ?? issueLeafInWorker;
    let ca = this.ca!;
    const { service } = this.opts.request;
    const spiffeId = serviceSpiffeId({ trustDomain: ca.config.trustDomain, namespace: DEFAULTS.namespace, datacenter: this.datacenter, service });
    let leaf = await issue(ca, { spiffeId, commonName: service, ttlMs: ca.config.leafTtlMs });
    // A rotation noticed while this leaf was being issued: it is from the old root, which the
    // next rotation stops trusting, and keeping it would also put off the rotation's own
    // re-issue until this leaf's renewal. Issue again from the root now active.
    while (this.ca!.rootId !== ca.rootId && !this.stopped) {
      this.log.debug("the root rotated while a leaf was being issued; issuing again from the new root", { root: this.ca!.rootId });
      // Still trusted (the previous root stays in the bundle): in use meanwhile, so the leaf it
      // replaces cannot expire while the new one is issued.
      this.leaf = { ...leaf, chainPem: leaf.certPem + ca.intermediatesPem.join("") };
      this.scheduleRefresh();
      ca = this.ca!;
      leaf = await issue(ca, { spiffeId, commonName: service, ttlMs: ca.config.leafTtlMs });
    }
    this.leaf = { ...leaf, chainPem: leaf.certPem + ca.intermediatesPem.join("") };
    this.log.info("issued leaf certificate", { service, serial: leaf.serial, not_after: leaf.notAfter.toISOString(), root: ca.rootId });
    this.scheduleRenewal(renewalDelayMs(leaf.notBefore, leaf.notAfter));
  }

  /** One renewal pending at a time: a rotation's replaces the one planned for the old leaf. */
  private scheduleRenewal(delayMs: number): void {
    if (this.renewal) {
      clearTimeout(this.renewal);
      this.timers.delete(this.renewal);
    }
    this.renewalDueAt = Date.now() + delayMs;
    const t = setTimeout(() => {
      this.timers.delete(t);
      this.renewal = null;
      this.renewalDueAt = Infinity;
      if (this.stopped) return;
      this.renewLeaf()
        .then(() => this.refresh())
        .catch((e: unknown) => {
          this.report(new ControlPlaneError("leaf", `renewal failed: ${e instanceof Error ? e.message : String(e)}; retrying in 5s`));
          this.scheduleRenewal(5000);
        });
    }, Math.min(delayMs, 2 ** 31 - 1));
    t.unref();
    this.timers.add(t);
    this.renewal = t;
  }

  /**
   * Follows `meshproxy ca rotate`: the new bundle is trusted from the next Snapshot, and the leaf
   * is re-issued from the new root after a little jitter, as Consul's agents do. A roots file
   * that cannot be read keeps the CA in force.
   */
  private async readRoots(): Promise<void> {
    const ca = this.ca!;
    let roots: CaRoots;
    try {
      roots = await readCaRoots(this.opts.dataDir, { rotated: ca.rotated });
    } catch (e) {
      this.reportOnce("ca", `${messageOf(e)}; the current CA (active root ${ca.rootId}) stays in force`);
      return;
    }
    if (roots.rootId === ca.rootId && roots.rootsPem.join("") === ca.rootsPem.join("")) return;
    this.ca = { ...roots, config: ca.config };
    if (roots.rootId === ca.rootId) return;
    // Never later than the renewal it replaces: a short-lived leaf could expire in the jitter.
    const delayMs = Math.floor(Math.max(0, Math.min(Math.random() * (this.opts.rotationJitterMs ?? 3000), this.renewalDueAt - Date.now())));
    this.log.info("the dev CA root rotated; trusting the new and previous roots, re-issuing the leaf from the new one", { root: roots.rootId, previous: ca.rootId, trusted: roots.rootsPem.length, reissue_in_ms: delayMs });
    this.scheduleRenewal(delayMs);
  }

  private report(e: ControlPlaneError): void {
    this.handlers?.error(e);
  }

  private refresh(): Promise<void> {
    return this.refresher.run();
  }

  private async readState(): Promise<void> {
    const { dataDir } = this.opts;
    this.seenProblems = new Set();
    await this.readRoots();
    try {
      this.intentions = await readIntentions(dataDir);
    } catch (e) {
      // Keep the last good intentions; say so once per distinct problem, not every poll.
      this.reportOnce("intentions", `${messageOf(e)}; ${this.intentions ? "the previous intentions stay in force" : NOT_SERVING}`);
    }
    // Every datacenter's catalog: upstreams in another datacenter need its instances (mode none,
    // and the health behind a gateway) and its mesh gateways (mode remote).
    const home = this.ca!.config.datacenter;
    const catalogs = new Map<string, CatalogEntry[]>();
    let datacenters: string[];
    try {
      datacenters = await listDatacenters(dataDir, home);
    } catch (e) {
      this.reportOnce("catalog", this.catalogs.size > 0 ? `${messageOf(e)}; the previous catalogs stay in force` : messageOf(e));
      datacenters = [this.datacenter, ...this.catalogs.keys()];
    }
    if (!datacenters.includes(this.datacenter)) datacenters.push(this.datacenter);
    for (const dc of datacenters) {
      const { entries, problems, complete } = await readCatalog(dataDir, catalogDir(dataDir, dc, home));
      // A catalog that could not be read (out of descriptors) is not an empty one: the instances
      // it lists did not go away, so the last one read stays until it can be read again.
      const previous = complete ? undefined : this.catalogs.get(dc);
      catalogs.set(dc, previous ?? entries);
      for (const p of problems) this.reportOnce("catalog", previous ? `${p.message}; the previous catalog of ${dc} stays in force` : p.message);
    }
    this.catalogs = catalogs;
    const read = await readEntries(dataDir);
    const keep = this.entries ? "the previous config entries stay in force" : NOT_SERVING;
    for (const p of read.problems) this.reportOnce("config-entries", `${p.message}; ${keep}`);
    if (read.problems.length === 0) {
      try {
        this.compileAll(entryIndex(read.entries));
        this.entries = read.entries;
      } catch (e) {
        this.reportOnce("config-entries", `${messageOf(e)}; ${keep}`);
      }
    }
    this.reportedProblems = this.seenProblems; // fixed problems are forgotten
  }

  private reportOnce(resource: string, message: string): void {
    this.seenProblems.add(message);
    if (this.reportedProblems.has(message)) return;
    this.reportedProblems.add(message);
    this.report(new ControlPlaneError(resource, message));
  }

  /** The instances of `service` registered in `datacenter`'s catalog (not this proxy's own catalog: a target may be elsewhere). */
  private instancesOf(service: string, datacenter: string): ServiceInstance[] {
    return (this.catalogs.get(datacenter) ?? [])
      // A mesh gateway is not an instance of a service, whatever it is named.
      .filter((e) => e.service === service && e.kind === undefined)
      .map((e) => this.instanceOf(e, datacenter));
  }

  /** The mesh gateways registered in `datacenter`'s catalog. */
  private gatewaysOf(datacenter: string): ServiceInstance[] {
    return (this.catalogs.get(datacenter) ?? []).filter((e) => e.kind === "mesh-gateway").map((e) => this.instanceOf(e, datacenter));
  }

  private instanceOf(e: CatalogEntry, datacenter: string): ServiceInstance {
    return {
      id: e.id,
      service: e.service,
      address: e.address,
      port: e.port,
      status: processAlive(e) ? "passing" : "critical",
      meta: e.meta,
      tags: [],
      node: { name: hostname(), datacenter, meta: {} },
    };
  }

  /** Compiles every upstream's chain; throws on entries that do not fit together. */
  private compileAll(lookup: EntryLookup): { listeners: UpstreamListener[]; clusters: Record<string, Cluster>; problems: string[] } {
    const ca = this.ca!;
    const { trustDomain } = ca.config;
    const datacenter = this.datacenter;
    const req = this.opts.request;
    const own = serviceDefaults(lookup, req.service);
    const listeners: UpstreamListener[] = [];
    const clusters: Record<string, Cluster> = {};
    const problems: string[] = [];
    for (const u of [...req.upstreams, ...this.added]) {
      const dc = u.datacenter ?? datacenter;
      const settings = upstreamSettingsFor(own?.upstreamDefaults, own?.upstreamOverrides ?? [], u.name);
      const override = meshGatewayOverride(lookup, req.service, u.meshGatewayMode ?? settings?.meshGatewayMode, req.meshGatewayMode);
      const chain = compileChain(lookup, u.name, { namespace: DEFAULTS.namespace, datacenter: dc, ...(override ? { meshGatewayOverride: override } : {}) });
      const built = buildUpstream({
        upstream: u,
        chain,
        instances: (svc, d) => this.instancesOf(svc, d),
        gateways: (d) => this.gatewaysOf(d),
        localDatacenter: datacenter,
        settings,
        trustDomain,
      });
      listeners.push(built.listener);
      Object.assign(clusters, built.clusters);
      problems.push(...built.problems);
    }
    return { listeners, clusters, problems };
  }

  private build(intentions: IntentionPolicy, entries: readonly ConfigEntry[]): Snapshot {
    const ca = this.ca!;
    const leaf = this.leaf!;
    const req = this.opts.request;
    const { trustDomain } = ca.config;
    const datacenter = this.datacenter;
    const namespace = DEFAULTS.namespace;
    const identity: Identity = {
      service: req.service,
      namespace,
      datacenter,
      trustDomain,
      spiffeId: serviceSpiffeId({ trustDomain, namespace, datacenter, service: req.service }),
      certChainPem: leaf.chainPem,
      privateKeyPem: leaf.keyPem,
      serial: leaf.serial,
      notBefore: leaf.notBefore,
      notAfter: leaf.notAfter,
    };
    const lookup = entryIndex(entries);
    const { listeners, clusters, problems } = this.compileAll(lookup);
    this.warnUpstreamProblems(problems);
    const own = serviceDefaults(lookup, req.service);
    const pl = req.publicListener;
    return {
      version: this.version + 1,
      source: this.kind,
      identity,
      trust: { trustDomain, rootsPem: [...ca.rootsPem] },
      publicListener: pl
        ? {
            bind: pl.bind,
            localApp: pl.localApp,
            protocol: pl.protocol ?? serviceProtocol(lookup, req.service),
            handshakeTimeoutMs: DEFAULTS.handshakeTimeoutMs,
            localConnectTimeoutMs: own?.localConnectTimeoutMs ?? DEFAULTS.localConnectTimeoutMs,
            idleTimeoutMs: DEFAULTS.idleTimeoutMs,
            ...(own?.localRequestTimeoutMs ? { requestTimeoutMs: own.localRequestTimeoutMs } : {}),
          }
        : null,
      upstreams: listeners,
      clusters,
      intentions,
    };
  }

  /** Not a control-plane error (the state is valid), but the operator must hear it: once while it lasts. */
  private warnUpstreamProblems(problems: readonly string[]): void {
    for (const p of problems) if (!this.upstreamProblems.has(p)) this.log.warn("upstream cannot carry traffic", { error: p });
    this.upstreamProblems = new Set(problems);
  }

  private emitIfChanged(): void {
    if (this.stopped || !this.handlers) return;
    // Fail closed: nothing is served before intentions and config entries were read once.
    if (!this.intentions || !this.entries) return;
    const snap = this.build(this.intentions, this.entries);
    // Everything except the version number: only a real change makes a new Snapshot.
    const fingerprint = JSON.stringify({ ...snap, version: 0 });
    if (fingerprint === this.lastFingerprint) return;
    this.lastFingerprint = fingerprint;
    this.version = snap.version;
    this.handlers.snapshot(snap);
    this.first?.resolve();
    this.first = null;
  }

  addUpstream(u: UpstreamRequest): void {
    // The same service in another datacenter is another upstream.
    const same = (x: UpstreamRequest) => x.name === u.name && x.datacenter === u.datacenter;
    if (this.opts.request.upstreams.some(same) || this.added.some(same)) return;
    this.added.push(u);
    this.scheduleRefresh();
  }

  /** Writes the splitter into the state directory, as `meshproxy config write` does; the watch applies it. */
  async setSubsetWeights(service: string, weights: readonly SubsetWeight[]): Promise<void> {
    await writeSubsetWeights(this.opts.dataDir, service, weights);
    this.log.info("service-splitter weights changed through the admin API", { service, weights: weights.map((w) => `${w.subset}:${w.weight / 100}`).join(",") });
    this.scheduleRefresh();
  }

  async announce(a: Announcement): Promise<void> {
    this.announced = a;
    await registerInstance(this.opts.dataDir, {
      id: this.instanceId,
      service: this.opts.request.service,
      address: a.address,
      port: a.port,
      protocol: a.protocol,
      ...ownProcess(),
      meta: { ...this.opts.request.meta },
    }, this.catalogPath);
    this.log.info("registered service instance", { id: this.instanceId, address: `${a.address}:${a.port}` });
  }

  async withdraw(): Promise<void> {
    if (!this.announced) return;
    this.announced = null;
    await deregisterInstance(this.opts.dataDir, this.instanceId, this.catalogPath);
    this.log.info("deregistered service instance", { id: this.instanceId });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.first?.reject(new ControlPlaneError("dev", "stopped before the state directory held a valid configuration", true));
    this.first = null;
    for (const w of this.watchers) w.close();
    for (const t of this.timers) clearTimeout(t);
    this.watchers = [];
    this.timers.clear();
    await this.refresher.settled();
  }
}

const NOT_SERVING = "the proxy is not serving (not ready, no listeners) until it is fixed";

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export { StateError };
