// A mesh gateway's routes from the local Consul agent, watching what Consul's own mesh gateway
// watches (agent/proxycfg/mesh_gateway.go), each with a blocking query: the CA roots (the trust
// domain), the catalog's services and each one's connect instances (/v1/health/connect: the
// sidecars' public listeners), the service-resolvers (subsets), the datacenters, and in each
// other datacenter its mesh gateways at their WAN address. A watch that fails keeps its last
// value, so an agent that goes away leaves the last good table in force. With -register the
// gateway registers as `consul connect envoy -gateway=mesh -register` does (command/connect/envoy):
// Kind mesh-gateway, ID and Name the service name, LAN and WAN TaggedAddresses, a TCP check.
import type { GatewayRegistration, GatewayRouteSource, GatewayRoutesConfig } from "../../config/gateway.js";
import type { Endpoint } from "../../config/snapshot.js";
import { entryIndex } from "../chain/compile.js";
import { EntryError, parseEntry, type ConfigEntry } from "../chain/entries.js";
import { gatewayServices } from "../chain/gateway.js";
import type { ServiceInstance } from "../chain/upstream.js";
import { BlockingQuery, type BlockingOptions } from "./blocking.js";
import type { AgentClient } from "./client.js";
import { parseHealth, parseRoots, WireError, type HealthEndpoint } from "./wire.js";

export interface ConsulGatewaySourceOptions {
  readonly client: AgentClient;
  /** The registration's name and id (Consul: -service, default mesh-gateway). */
  readonly service: string;
  readonly meta: Readonly<Record<string, string>>;
  /** The gateway's datacenter; default the agent's. */
  readonly datacenter?: string | undefined;
  /** Blocking-query wait and error backoff (tests shorten them). */
  readonly waitMs?: number;
  readonly backoff?: { readonly baseMs: number; readonly maxMs: number };
  /** How often the datacenter list is read (it has no blocking index); Consul's cache: 30 s. */
  readonly datacentersEveryMs?: number;
  /** Consul's -deregister-after-critical default. */
  readonly deregisterCriticalServiceAfter?: string;
}

const GATEWAY_FILTER = 'ServiceKind == "mesh-gateway"';

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** `/v1/catalog/services`: service name → tags. */
function parseServiceNames(body: unknown, endpoint: string): string[] {
  if (!isObj(body)) throw new WireError(endpoint, "$", "want an object of service names");
  return Object.keys(body).sort();
}

function parseDatacenters(body: unknown): string[] {
  const ep = "/v1/catalog/datacenters";
  if (!Array.isArray(body) || !body.every((d): d is string => typeof d === "string" && d !== "")) throw new WireError(ep, "$", "want an array of datacenter names");
  return [...body].sort();
}

function parseAgentDatacenter(body: unknown): string {
  const ep = "/v1/agent/self";
  const cfg = isObj(body) ? body["Config"] : undefined;
  const dc = isObj(cfg) ? cfg["Datacenter"] : undefined;
  if (typeof dc !== "string" || dc === "") throw new WireError(ep, "$.Config.Datacenter", "want the agent's datacenter");
  return dc;
}

function parseResolvers(body: unknown): ConfigEntry[] {
  const ep = "/v1/config/service-resolver";
  if (body === null) return [];
  if (!Array.isArray(body)) throw new WireError(ep, "$", "want an array of config entries");
  return body.map((e, i) => {
    try {
      return parseEntry(e, `${ep} $[${i}]`, "wire");
    } catch (err) {
      if (err instanceof EntryError) throw new WireError(ep, `$[${i}]`, err.message);
      throw err;
    }
  });
}

interface RemoteGateway {
  readonly id: string;
  readonly address: string;
  readonly port: number;
  readonly healthy: boolean;
}

/** `/v1/health/service/:name?dc=`: mesh gateways at their best WAN address (Consul's BestAddress(wan)). */
function parseGateways(body: unknown, endpoint: string): RemoteGateway[] {
  if (body === null) return [];
  if (!Array.isArray(body)) throw new WireError(endpoint, "$", "want an array of service entries");
  const out: RemoteGateway[] = [];
  body.forEach((entry, i) => {
    const where = `$[${i}]`;
    if (!isObj(entry) || !isObj(entry["Service"]) || !isObj(entry["Node"])) throw new WireError(endpoint, where, "want Node and Service objects");
    const svc = entry["Service"];
    const node = entry["Node"];
    if (svc["Kind"] !== "mesh-gateway") return;
    const tagged = isObj(svc["TaggedAddresses"]) ? svc["TaggedAddresses"] : {};
    const wan = isObj(tagged["wan"]) ? tagged["wan"] : null;
    const nodeTagged = isObj(node["TaggedAddresses"]) ? node["TaggedAddresses"] : {};
    const serviceAddress = typeof svc["Address"] === "string" ? svc["Address"] : "";
    const wanAddress = wan && typeof wan["Address"] === "string" ? wan["Address"] : "";
    const nodeWan = typeof nodeTagged["wan"] === "string" ? nodeTagged["wan"] : "";
    const nodeAddress = typeof node["Address"] === "string" ? node["Address"] : "";
    const address = wanAddress || serviceAddress || nodeWan || nodeAddress;
    const port = wan && typeof wan["Port"] === "number" && wanAddress ? wan["Port"] : svc["Port"];
    if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535) throw new WireError(endpoint, `${where}.Service.Port`, "want a port number");
    if (!address) throw new WireError(endpoint, where, "no address for the gateway (Service.TaggedAddresses.wan, Service.Address, Node.Address)");
    const checks = Array.isArray(entry["Checks"]) ? entry["Checks"] : [];
    const healthy = checks.every((c) => !isObj(c) || c["Status"] !== "critical");
    out.push({ id: typeof svc["ID"] === "string" ? svc["ID"] : `${address}:${port}`, address, port, healthy });
  });
  return out;
}

function instanceOf(h: HealthEndpoint, service: string, datacenter: string): ServiceInstance {
  return { id: h.id, service, address: h.address, port: h.port, status: h.status, meta: h.meta, tags: h.tags, node: { name: h.node, datacenter: h.datacenter || datacenter, meta: h.nodeMeta } };
}

export class ConsulGatewaySource implements GatewayRouteSource {
  private readonly watches = new Map<string, { stop(): Promise<void> }>();
  private stopped = false;
  private registered: string | null = null;
  // What the watches have seen so far; undefined until a watch's first answer.
  private trustDomain: string | undefined;
  private agentDatacenter: string | undefined;
  private services: string[] | undefined;
  private readonly health = new Map<string, HealthEndpoint[]>();
  private resolvers: ConfigEntry[] | undefined;
  private datacenters: string[] | undefined;
  private readonly gatewayNames = new Map<string, string[]>();
  private readonly gateways = new Map<string, RemoteGateway[]>();
  private onTable: ((cfg: GatewayRoutesConfig) => void) | null = null;
  private onProblem: (message: string) => void = () => undefined;
  private first: { resolve: (cfg: GatewayRoutesConfig) => void; reject: (e: Error) => void } | null = null;
  private accepted = false;
  private lastKey = "";
  /** Problems with names in the table, said once while they last (the table is rebuilt on every change). */
  private namesReported = new Set<string>();

  constructor(private readonly o: ConsulGatewaySourceOptions) {}

  start(onTable: (cfg: GatewayRoutesConfig) => void, onProblem: (message: string) => void): Promise<GatewayRoutesConfig> {
    this.onTable = onTable;
    this.onProblem = onProblem;
    return new Promise((resolve, reject) => {
      this.first = { resolve, reject };
      this.reconcile();
    });
  }

  private get datacenter(): string | undefined {
    return this.o.datacenter ?? this.agentDatacenter;
  }

  private watch<T>(key: string, opts: Omit<BlockingOptions<T>, "client" | "onError" | "onValue" | "waitMs" | "backoff">, onValue: (v: T) => void): void {
    if (this.watches.has(key) || this.stopped) return;
    const q = new BlockingQuery<T>({
      ...opts,
      client: this.o.client,
      ...(this.o.waitMs !== undefined ? { waitMs: this.o.waitMs } : {}),
      ...(this.o.backoff ? { backoff: this.o.backoff } : {}),
      onValue: (v) => {
        if (this.stopped) return;
        onValue(v);
        this.reconcile();
      },
      // The last value stays: an agent that is down or answers garbage changes no route.
      onError: (e) => {
        if (!this.stopped) this.onProblem(`${e.message}; ${this.accepted ? "the previous routes stay in force" : "the gateway is not serving until the agent answers"}`);
      },
    });
    this.watches.set(key, q);
    q.start();
  }

  /** Starts the watches the current view needs, stops the rest, and hands on a complete table. */
  private reconcile(): void {
    if (this.stopped) return;
    const wanted = new Set<string>();
    const want = <T>(key: string, opts: Omit<BlockingOptions<T>, "client" | "onError" | "onValue" | "waitMs" | "backoff">, onValue: (v: T) => void): void => {
      wanted.add(key);
      this.watch(key, opts, onValue);
    };
    want("roots", { path: "/v1/agent/connect/ca/roots", mode: "index", parse: parseRoots }, (v) => (this.trustDomain = v.trustDomain));
    if (this.o.datacenter === undefined) want("self", { path: "/v1/agent/self", mode: "hash", rate: { burst: 1, perSecond: 1 / 60 }, parse: parseAgentDatacenter }, (v) => (this.agentDatacenter = v));
    const dc = this.datacenter;
    if (dc !== undefined) {
      const local = { dc };
      want("services", { path: "/v1/catalog/services", query: local, mode: "index", parse: (b) => parseServiceNames(b, "/v1/catalog/services") }, (v) => (this.services = v));
      for (const name of this.services ?? []) {
        want(`health:${name}`, { path: `/v1/health/connect/${encodeURIComponent(name)}`, query: local, mode: "index", parse: (b) => parseHealth(b, name) }, (v) => this.health.set(name, v));
      }
      want("resolvers", { path: "/v1/config/service-resolver", query: local, mode: "index", parse: parseResolvers }, (v) => (this.resolvers = v));
      const every = this.o.datacentersEveryMs ?? 30_000;
      want("datacenters", { path: "/v1/catalog/datacenters", mode: "hash", rate: { burst: 1, perSecond: 1000 / every }, parse: parseDatacenters }, (v) => (this.datacenters = v));
      for (const remote of this.datacenters ?? []) {
        if (remote === dc) continue;
        const q = { dc: remote };
        want(`gateway-names:${remote}`, { path: "/v1/catalog/services", query: { ...q, filter: GATEWAY_FILTER }, mode: "index", parse: (b) => parseServiceNames(b, `/v1/catalog/services?dc=${remote}`) }, (v) => this.gatewayNames.set(remote, v));
        for (const name of this.gatewayNames.get(remote) ?? []) {
          const path = `/v1/health/service/${encodeURIComponent(name)}`;
          want(`gateways:${remote}:${name}`, { path, query: q, mode: "index", parse: (b) => parseGateways(b, `${path}?dc=${remote}`) }, (v) => this.gateways.set(`${remote}:${name}`, v));
        }
      }
    }
    for (const [key, q] of this.watches) {
      if (wanted.has(key)) continue;
      this.watches.delete(key);
      q.stop().catch((e: unknown) => this.onProblem(`stopping the watch ${key}: ${e instanceof Error ? e.message : String(e)}`));
      if (key.startsWith("health:")) this.health.delete(key.slice("health:".length));
      else if (key.startsWith("gateway-names:")) this.gatewayNames.delete(key.slice("gateway-names:".length));
      else if (key.startsWith("gateways:")) this.gateways.delete(key.slice("gateways:".length));
    }
    const cfg = this.table(wanted);
    if (cfg) this.emit(cfg);
  }

  /** The table, once every wanted watch has answered at least once; null before. */
  private table(wanted: ReadonlySet<string>): GatewayRoutesConfig | null {
    const td = this.trustDomain;
    const dc = this.datacenter;
    if (td === undefined || dc === undefined || this.services === undefined || this.resolvers === undefined || this.datacenters === undefined) return null;
    for (const key of wanted) {
      if (key.startsWith("health:") && !this.health.has(key.slice("health:".length))) return null;
      if (key.startsWith("gateway-names:") && !this.gatewayNames.has(key.slice("gateway-names:".length))) return null;
      if (key.startsWith("gateways:") && !this.gateways.has(key.slice("gateways:".length))) return null;
    }
    const instances = new Map<string, ServiceInstance[]>();
    for (const [name, list] of this.health) {
      // A service with no connect instance is not in the mesh (an app behind a sidecar, the sidecar itself).
      if (list.length > 0) instances.set(name, list.map((h) => instanceOf(h, name, dc)));
    }
    const remoteGateways = new Map<string, Endpoint[]>();
    for (const [key, list] of this.gateways) {
      const remote = key.slice(0, key.indexOf(":")).toLowerCase();
      const endpoints = remoteGateways.get(remote) ?? [];
      for (const g of list) endpoints.push({ host: g.address, port: g.port, healthy: g.healthy, id: g.id, meta: {} });
      remoteGateways.set(remote, endpoints);
    }
    const seen = new Set<string>();
    const services = gatewayServices({ trustDomain: td, datacenter: dc, instances, entries: entryIndex(this.resolvers) }, (m) => {
      seen.add(m);
      if (!this.namesReported.has(m)) this.onProblem(m);
    });
    this.namesReported = seen;
    return { trustDomain: td, datacenter: dc.toLowerCase(), services, remoteGateways };
  }

  private emit(cfg: GatewayRoutesConfig): void {
    const key = JSON.stringify({ ...cfg, services: [...cfg.services], remoteGateways: [...cfg.remoteGateways] });
    if (key === this.lastKey) return;
    try {
      this.onTable?.(cfg);
      this.lastKey = key;
      this.accepted = true;
      const first = this.first;
      this.first = null;
      first?.resolve(cfg);
    } catch (e) {
      this.onProblem(`${e instanceof Error ? e.message : String(e)}; ${this.accepted ? "the previous routes stay in force" : "the gateway is not serving until it is fixed"}`);
    }
  }

  async register(at: GatewayRegistration): Promise<void> {
    const id = this.o.service;
    await this.o.client.call("PUT", "/v1/agent/service/register", {
      body: {
        Kind: "mesh-gateway",
        ID: id,
        Name: this.o.service,
        Address: at.lan.address,
        Port: at.lan.port,
        ...(Object.keys(this.o.meta).length > 0 ? { Meta: this.o.meta } : {}),
        TaggedAddresses: {
          lan: { Address: at.lan.address, Port: at.lan.port },
          ...(at.wan ? { wan: { Address: at.wan.address, Port: at.wan.port } } : {}),
        },
        Check: { Name: "mesh-gateway listening", TCP: `${at.lan.address.includes(":") ? `[${at.lan.address}]` : at.lan.address}:${at.lan.port}`, Interval: "10s", DeregisterCriticalServiceAfter: this.o.deregisterCriticalServiceAfter ?? "6h" },
      },
    });
    this.registered = id;
  }

  async deregister(): Promise<void> {
    const id = this.registered;
    if (!id) return;
    this.registered = null;
    await this.o.client.call("PUT", `/v1/agent/service/deregister/${encodeURIComponent(id)}`);
  }

  async close(): Promise<void> {
    this.stopped = true;
    const first = this.first;
    this.first = null;
    first?.reject(new Error("stopped before the agent gave a complete route table"));
    await Promise.all([...this.watches.values()].map((q) => q.stop()));
    this.watches.clear();
  }
}
