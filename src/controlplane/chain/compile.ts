// Compiling a discovery chain from config entries, as Consul's servers do for
// /v1/discovery-chain: router → splitter → resolver → targets. The dev control plane compiles
// chains itself; the Consul control plane receives them compiled and maps them to the same
// CompiledChain, so both feed one Snapshot builder.
import { DEFAULTS, type Protocol } from "../../config/snapshot.js";
import type { HeaderMutation, RouteMatch } from "../../config/http.js";
import { EntryError, type ConfigEntry, type EntryKind, type MeshGatewayMode, type RouteDestination, type ServiceResolver, type ServiceRouter, type ServiceSplitter, type ServiceDefaults, type ProxyDefaults } from "./entries.js";

export interface ChainTarget {
  /** `[<subset>.]<service>.<namespace>.<datacenter>`, Consul's target id (without partition). */
  readonly id: string;
  readonly service: string;
  readonly subset: string;
  readonly namespace: string;
  /**
   * The target's admin partition (Consul Enterprise; `default` in CE): part of the identity its
   * instances present (`spiffe://<td>/ap/<partition>/ns/…`) and of its SNI (`….internal-v1.<td>`).
   */
  readonly partition: string;
  readonly datacenter: string;
  /** bexpr over the health entry; empty selects every instance. */
  readonly filter: string;
  readonly onlyPassing: boolean;
  readonly connectTimeoutMs?: number;
  /** Consul's authoritative SNI for the target, when the chain came from an agent. */
  readonly sni?: string;
  /** Target ids to use, in order, when this target has no healthy instance. */
  readonly failover: readonly string[];
  readonly loadBalancer?: ServiceResolver["loadBalancer"];
  /** How the target is reached when it is in another datacenter than the proxy (Consul's MeshGateway.Mode). */
  readonly meshGatewayMode: MeshGatewayMode;
}

export interface ChainSplit {
  readonly target: string;
  /** 1/10000ths. */
  readonly weight: number;
  readonly requestHeaders?: HeaderMutation;
  readonly responseHeaders?: HeaderMutation;
}

export interface ChainRoute {
  readonly match: RouteMatch;
  readonly destination: RouteDestination;
  readonly splits: readonly ChainSplit[];
  /** The resolver's RequestTimeout, used when the route sets none. */
  readonly resolverRequestTimeoutMs?: number;
}

export interface CompiledChain {
  readonly service: string;
  readonly protocol: Protocol;
  /** HTTP-like protocols: the router's routes then a catch-all. Empty for tcp. */
  readonly routes: readonly ChainRoute[];
  /** Where tcp traffic (and the catch-all without a splitter) goes. */
  readonly defaultTarget: string;
  readonly targets: Readonly<Record<string, ChainTarget>>;
}

export interface EntryLookup {
  get(kind: EntryKind, name: string): ConfigEntry | undefined;
}

/** A simple lookup over a list of entries (last write wins). */
export function entryIndex(entries: readonly ConfigEntry[]): EntryLookup {
  const m = new Map<string, ConfigEntry>();
  for (const e of entries) m.set(`${e.kind}/${e.name}`, e);
  return { get: (kind, name) => m.get(`${kind}/${name}`) };
}

export function serviceDefaults(lookup: EntryLookup, service: string): ServiceDefaults | undefined {
  const e = lookup.get("service-defaults", service);
  return e?.kind === "service-defaults" ? e : undefined;
}

export function proxyDefaults(lookup: EntryLookup): ProxyDefaults | undefined {
  const e = lookup.get("proxy-defaults", "global");
  return e?.kind === "proxy-defaults" ? e : undefined;
}

export function serviceProtocol(lookup: EntryLookup, service: string): Protocol {
  return serviceDefaults(lookup, service)?.protocol ?? proxyDefaults(lookup)?.protocol ?? "tcp";
}

function isHttpLike(p: Protocol): boolean {
  return p !== "tcp";
}

const MAX_HOPS = 8;

export function targetId(service: string, subset: string, namespace: string, datacenter: string): string {
  return `${subset ? `${subset}.` : ""}${service}.${namespace}.${datacenter}`;
}

class Compiler {
  readonly targets: Record<string, ChainTarget> = {};

  constructor(
    private readonly lookup: EntryLookup,
    private readonly namespace: string,
    private readonly partition: string,
    private readonly datacenter: string,
    private readonly meshGatewayOverride: MeshGatewayMode | undefined,
  ) {}

  /**
   * As Consul's chain compiler: the proxy's override (upstream, then proxy instance, its service's
   * defaults, proxy-defaults; see meshGatewayOverride) wins, then the target service's own
   * service-defaults, then proxy-defaults, then `none`.
   */
  private meshGatewayMode(service: string): MeshGatewayMode {
    return this.meshGatewayOverride ?? serviceDefaults(this.lookup, service)?.meshGatewayMode ?? proxyDefaults(this.lookup)?.meshGatewayMode ?? "none";
  }

  private resolverOf(service: string): ServiceResolver | undefined {
    const e = this.lookup.get("service-resolver", service);
    return e?.kind === "service-resolver" ? e : undefined;
  }

  private splitterOf(service: string): ServiceSplitter | undefined {
    const e = this.lookup.get("service-splitter", service);
    return e?.kind === "service-splitter" ? e : undefined;
  }

  /** Resolver step: redirects, the default subset, failover. Returns the target id. */
  resolve(service: string, subset: string, datacenter: string, withFailover = true, hops = 0): string {
    if (hops > MAX_HOPS) throw new EntryError(`service-resolver "${service}"`, "redirect chain is longer than 8 hops (a loop?)");
    const r = this.resolverOf(service);
    if (r?.redirect) {
      const red = r.redirect;
      const next = { service: red.service ?? service, subset: red.serviceSubset ?? (red.service ? "" : subset), datacenter: red.datacenter ?? datacenter };
      // As Consul: a redirect that lands on the target it started from (db redirected to db in
      // dc2, now resolving db in dc2) has arrived; only a different target resolves again.
      if (next.service !== service || next.subset !== subset || next.datacenter !== datacenter) {
        return this.resolve(next.service, next.subset, next.datacenter, withFailover, hops + 1);
      }
    }
    const sub = subset || r?.defaultSubset || "";
    const def = sub ? r?.subsets[sub] : undefined;
    if (sub && !def) throw new EntryError(`service-resolver "${service}"`, `subset "${sub}" is not defined in Subsets`);
    const id = targetId(service, sub, this.namespace, datacenter);
    if (this.targets[id] && (!withFailover || this.targets[id].failover.length > 0)) return id;
    const failoverDefs = withFailover ? (r?.failover[sub] ?? r?.failover["*"] ?? []) : [];
    const target: ChainTarget = {
      id,
      service,
      subset: sub,
      namespace: this.namespace,
      partition: this.partition,
      datacenter,
      filter: def?.filter ?? "",
      onlyPassing: def?.onlyPassing ?? false,
      ...(r?.connectTimeoutMs !== undefined ? { connectTimeoutMs: r.connectTimeoutMs } : {}),
      failover: [],
      ...(r?.loadBalancer ? { loadBalancer: r.loadBalancer } : {}),
      meshGatewayMode: this.meshGatewayMode(service),
    };
    this.targets[id] = target;
    const failover = failoverDefs.map((f) => this.resolve(f.service ?? service, f.serviceSubset ?? "", f.datacenter ?? datacenter, false, hops + 1)).filter((t) => t !== id);
    this.targets[id] = { ...target, failover };
    return id;
  }

  /** Splitter step (flattening nested splitters), then the resolver. */
  split(service: string, subset: string, weight: number, depth = 0): ChainSplit[] {
    if (depth > MAX_HOPS) throw new EntryError(`service-splitter "${service}"`, "nested splitters deeper than 8 (a loop?)");
    const sp = subset ? undefined : this.splitterOf(service);
    if (!sp) return [{ target: this.resolve(service, subset, this.datacenter), weight }];
    const out: ChainSplit[] = [];
    for (const leg of sp.splits) {
      const w = Math.round((weight * Math.round(leg.weight * 100)) / 10_000);
      const legService = leg.service ?? service;
      // A leg back to the same service without a subset goes to its resolver, not round again.
      const legs =
        legService === service && !leg.serviceSubset
          ? [{ target: this.resolve(service, "", this.datacenter), weight: w }]
          : this.split(legService, leg.serviceSubset ?? "", w, depth + 1);
      for (const l of legs) {
        out.push({
          ...l,
          ...(leg.requestHeaders ? { requestHeaders: leg.requestHeaders } : {}),
          ...(leg.responseHeaders ? { responseHeaders: leg.responseHeaders } : {}),
        });
      }
    }
    return mergeSplits(out);
  }

}

/** Legs to the same target merge; zero-weight legs are kept so a 0% canary stays visible. */
function mergeSplits(legs: ChainSplit[]): ChainSplit[] {
  const by = new Map<string, ChainSplit>();
  for (const l of legs) {
    const prev = by.get(l.target);
    by.set(l.target, prev ? { ...prev, weight: prev.weight + l.weight } : l);
  }
  return [...by.values()];
}

/**
 * The mode a proxy asks its chains to use (Consul's OverrideMeshGateway): the first one set of
 * the upstream's own, the proxy instance's (-mesh-gateway-mode), the proxy's service-defaults
 * MeshGateway, proxy-defaults MeshGateway. Undefined leaves it to each target's service.
 */
export function meshGatewayOverride(lookup: EntryLookup, source: string, upstream: MeshGatewayMode | undefined, instance: MeshGatewayMode | undefined): MeshGatewayMode | undefined {
  return upstream ?? instance ?? serviceDefaults(lookup, source)?.meshGatewayMode ?? proxyDefaults(lookup)?.meshGatewayMode;
}

const CATCH_ALL: RouteMatch = { path: { kind: "prefix", value: "/" }, headers: [], queryParams: [], methods: [] };

/**
 * Compiles the chain for `service` as seen from a proxy in `datacenter` (and `partition`, default
 * the default one). Throws EntryError naming the entry and field when the entries do not fit together.
 */
export function compileChain(lookup: EntryLookup, service: string, opts: { namespace: string; partition?: string; datacenter: string; meshGatewayOverride?: MeshGatewayMode }): CompiledChain {
  const protocol = serviceProtocol(lookup, service);
  const c = new Compiler(lookup, opts.namespace, opts.partition ?? DEFAULTS.partition, opts.datacenter, opts.meshGatewayOverride);
  const re = lookup.get("service-router", service);
  const router: ServiceRouter | undefined = re?.kind === "service-router" ? re : undefined;
  const splitter = lookup.get("service-splitter", service);
  if (!isHttpLike(protocol) && (router || splitter)) {
    throw new EntryError(`${router ? "service-router" : "service-splitter"} "${service}"`, `needs an HTTP-like protocol, but "${service}" is ${protocol}; set Protocol in its service-defaults`);
  }
  const defaultTarget = c.resolve(service, "", opts.datacenter);
  if (!isHttpLike(protocol)) return { service, protocol, routes: [], defaultTarget, targets: c.targets };
  const resolverTimeout = (svc: string) => {
    const r = lookup.get("service-resolver", svc);
    return r?.kind === "service-resolver" ? r.requestTimeoutMs : undefined;
  };
  const routes: ChainRoute[] = (router?.routes ?? []).map((r) => {
    const dest = r.destination.service ?? service;
    const rt = resolverTimeout(dest);
    return {
      match: { ...(r.path ? { path: r.path } : {}), headers: r.headers, queryParams: r.queryParams, methods: r.methods },
      destination: r.destination,
      splits: c.split(dest, r.destination.serviceSubset ?? "", 10_000),
      ...(rt !== undefined ? { resolverRequestTimeoutMs: rt } : {}),
    };
  });
  const rt = resolverTimeout(service);
  routes.push({
    match: CATCH_ALL,
    destination: { retryOn: [], retryOnStatusCodes: [] },
    splits: c.split(service, "", 10_000),
    ...(rt !== undefined ? { resolverRequestTimeoutMs: rt } : {}),
  });
  return { service, protocol, routes, defaultTarget, targets: c.targets };
}
