// A mesh gateway's routes from the dev state directory: this datacenter's live service
// instances (and the subsets its service-resolvers define) by the SNI their clients send, and
// every other datacenter's live gateways. Re-read on every change to the catalogs or the config
// entries (and every 500 ms, which also finds new datacenters and dead processes); a read that
// fails keeps the previous table. The gateway registers in its own datacenter's catalog.
import { watch, type FSWatcher } from "node:fs";
import { readRegularFile } from "../read-file.js";
import { hostname } from "node:os";
import { join } from "node:path";
import type { GatewayRegistration, GatewayRouteSource, GatewayRoutesConfig } from "../../config/gateway.js";
import type { Endpoint } from "../../config/snapshot.js";
import { CoalescedRun } from "../coalesce.js";
import { entryIndex } from "../chain/compile.js";
import type { ConfigEntry } from "../chain/entries.js";
import { gatewayServices } from "../chain/gateway.js";
import type { ServiceInstance } from "../chain/upstream.js";
import { catalogDir, deregisterInstance, listDatacenters, openStateDir, parseCaConfig, paths, readCatalog, readEntries, registerInstance, StateError, type CatalogEntry } from "./state.js";
import { ownProcess, processAlive } from "./process-identity.js";

export interface DevGatewaySourceOptions {
  readonly dataDir: string;
  /** The gateway's datacenter; default the CA config's (the home datacenter). */
  readonly datacenter?: string | undefined;
  /** The service name it registers under. */
  readonly service: string;
  readonly meta: Readonly<Record<string, string>>;
}

/** What the gateway knows of the state directory, read once at start. */
interface View {
  readonly trustDomain: string;
  readonly datacenter: string;
  readonly home: string;
  readonly catalog: string;
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

async function readView(dataDir: string, datacenter: string | undefined): Promise<View> {
  await openStateDir(dataDir);
  const file = paths(dataDir).caConfig;
  let text: string;
  try {
    text = await readRegularFile(file);
  } catch (e) {
    // The gateway never makes a CA: a mesh without one has no trust domain to route.
    throw new StateError(file, `cannot be read (${messageOf(e)}); start a sidecar first (it creates the dev CA), or give the -data-dir the mesh uses`);
  }
  const cfg = parseCaConfig(text, file);
  const dc = datacenter ?? cfg.datacenter;
  return { trustDomain: cfg.trustDomain.toLowerCase(), datacenter: dc, home: cfg.datacenter, catalog: catalogDir(dataDir, dc, cfg.datacenter) };
}

function endpointOf(e: CatalogEntry): Endpoint {
  return { host: e.address, port: e.port, healthy: processAlive(e), id: e.id, meta: e.meta };
}

function instanceOf(e: CatalogEntry, datacenter: string): ServiceInstance {
  return { id: e.id, service: e.service, address: e.address, port: e.port, status: processAlive(e) ? "passing" : "critical", meta: e.meta, tags: [], node: { name: hostname(), datacenter, meta: {} } };
}

export class DevGatewaySource implements GatewayRouteSource {
  private view: View | null = null;
  private readonly watchers: FSWatcher[] = [];
  private poll: NodeJS.Timeout | null = null;
  private stopped = false;
  private refresher: CoalescedRun | null = null;
  /** The last config entries that read whole; a directory that cannot be read keeps them. */
  private entries: ConfigEntry[] | null = null;
  private registered: string | null = null;

  constructor(private readonly opts: DevGatewaySourceOptions) {}

  async start(onTable: (cfg: GatewayRoutesConfig) => void, onProblem: (message: string) => void): Promise<GatewayRoutesConfig> {
    const view = await readView(this.opts.dataDir, this.opts.datacenter);
    this.view = view;
    let accepted: GatewayRoutesConfig | null = null;
    // A poll that finds nothing new hands on nothing (the gateway's runtimes stay untouched).
    let acceptedKey = "";
    // Each problem is said once while it lasts, as the dev control plane does.
    let reported = new Set<string>();
    let seen = new Set<string>();
    const problem = (message: string): void => {
      seen.add(message);
      if (!reported.has(message)) onProblem(message);
    };
    // Until a first table reads, start() waits for one, as a sidecar waits for its first
    // configuration: an unreadable config entry at start is a problem to fix, not an exit.
    let firstTable: (cfg: GatewayRoutesConfig) => void = () => undefined;
    const first = new Promise<GatewayRoutesConfig>((resolve) => (firstTable = resolve));
    this.refresher = new CoalescedRun(async () => {
      seen = new Set();
      try {
        const cfg = await this.read(view, problem);
        const key = JSON.stringify([[...cfg.services], [...cfg.remoteGateways]]);
        if (key !== acceptedKey) {
          // The gateway may refuse a table (one that does not compile): the previous one stays.
          onTable(cfg);
          if (!accepted) firstTable(cfg);
          accepted = cfg;
          acceptedKey = key;
        }
      } catch (e) {
        problem(`${messageOf(e)}; ${accepted ? "the previous routes stay in force" : "the gateway is not serving until it is fixed"}`);
      }
      reported = seen;
    }, () => this.stopped);
    await this.refresher.run();
    const refresh = (): void => {
      this.refresher?.run().catch((e: unknown) => onProblem(`re-reading the state directory: ${messageOf(e)}`));
    };
    const entriesDir = paths(this.opts.dataDir).entries;
    for (const dir of [paths(this.opts.dataDir).catalog, view.catalog, entriesDir, join(entriesDir, "service-resolver")]) {
      try {
        this.watchers.push(watch(dir, { persistent: false }, refresh).on("error", () => undefined));
      } catch {
        // polling below still sees every change
      }
    }
    // Other datacenters' catalogs may appear at any time; the poll finds them and dead processes.
    this.poll = setInterval(refresh, 500);
    this.poll.unref();
    return accepted ?? first;
  }

  private async read(view: View, problem: (message: string) => void): Promise<GatewayRoutesConfig> {
    const dataDir = this.opts.dataDir;
    const local = new Map<string, ServiceInstance[]>();
    const remoteGateways = new Map<string, Endpoint[]>();
    for (const dc of await listDatacenters(dataDir, view.home)) {
      const read = await readCatalog(dataDir, catalogDir(dataDir, dc, view.home));
      // Not an empty catalog but an unknown one (out of descriptors): the previous routes stay.
      if (!read.complete) throw new Error(read.problems.map((p) => p.message).join("; "));
      for (const p of read.problems) problem(p.message);
      for (const e of read.entries) {
        if (dc !== view.datacenter) {
          if (e.kind !== "mesh-gateway") continue;
          const list = remoteGateways.get(dc.toLowerCase()) ?? [];
          list.push(endpointOf(e));
          remoteGateways.set(dc.toLowerCase(), list);
          continue;
        }
        // A gateway is not an instance of a service, whatever it is named.
        if (e.kind !== undefined) continue;
        const list = local.get(e.service) ?? [];
        list.push(instanceOf(e, view.datacenter));
        local.set(e.service, list);
      }
    }
    const read = await readEntries(dataDir);
    if (read.problems.length === 0) this.entries = read.entries;
    else {
      for (const p of read.problems) problem(`${p.message}; ${this.entries ? "the previous config entries stay in force" : "subsets are not routed until it is fixed"}`);
      // Without entries that ever read whole, a resolver's DefaultSubset is unknown: the table is refused.
      if (!this.entries) throw new StateError(paths(dataDir).entries, "cannot be read whole");
    }
    const services = gatewayServices({ trustDomain: view.trustDomain, datacenter: view.datacenter, instances: local, entries: entryIndex(this.entries) }, problem);
    return { trustDomain: view.trustDomain, datacenter: view.datacenter, services, remoteGateways };
  }

  /** The dev catalog has one address per instance: the one other datacenters' gateways dial. */
  async register(at: GatewayRegistration): Promise<void> {
    const view = this.view;
    if (!view) throw new Error("register before start");
    const id = `${this.opts.service}-${view.datacenter}-${process.pid}`;
    const dialled = at.wan ?? at.lan;
    await registerInstance(this.opts.dataDir, { id, service: this.opts.service, address: dialled.address, port: dialled.port, protocol: "tcp", ...ownProcess(), meta: { ...this.opts.meta }, kind: "mesh-gateway" }, view.catalog);
    this.registered = id;
  }

  async deregister(): Promise<void> {
    const id = this.registered;
    if (!id || !this.view) return;
    this.registered = null;
    await deregisterInstance(this.opts.dataDir, id, this.view.catalog);
  }

  async close(): Promise<void> {
    this.stopped = true;
    if (this.poll) clearInterval(this.poll);
    for (const w of this.watchers) w.close();
    this.watchers.length = 0;
    await this.refresher?.settled();
  }

  /** The registered instance id, for logs. */
  get registrationId(): string | null {
    return this.registered;
  }
}
