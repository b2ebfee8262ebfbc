// A mesh gateway's route table, compiled once per Snapshot: the SNI a client sent → the cluster
// that carries it. Consul's gateway layout (shared/reference/consul-connect.md §5): a local
// service is keyed by its full SNI (Envoy's sni_cluster: the SNI is the cluster name); a name in
// another datacenter goes to that datacenter's gateways (the `*.<dc>.internal.<td>` chains,
// cluster `<dc>.internal.<td>`). Everything else is refused: a gateway forwards only names it
// was told about.
import type { Endpoint } from "../config/snapshot.js";
import { formatMeshSni, parseMeshSni } from "../identity/sni.js";

export interface GatewayRoutesConfig {
  readonly trustDomain: string;
  /** The gateway's own datacenter. */
  readonly datacenter: string;
  /** Local services (and subsets) by the SNI their clients send. */
  readonly services: ReadonlyMap<string, readonly Endpoint[]>;
  /** Other datacenters' mesh gateways (their WAN addresses), by datacenter. */
  readonly remoteGateways: ReadonlyMap<string, readonly Endpoint[]>;
}

export class GatewayConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GatewayConfigError";
  }
}

/** One cluster behind the gateway: its healthy endpoints in turn. */
export class GatewayCluster {
  private cursor = 0;
  private readonly healthy: readonly Endpoint[];

  constructor(
    readonly name: string,
    endpoints: readonly Endpoint[],
  ) {
    this.healthy = endpoints.filter((e) => e.healthy);
  }

  /** The next healthy endpoint (round robin), or null when there is none. */
  next(): Endpoint | null {
    const h = this.healthy;
    if (h.length === 0) return null;
    const e = h[this.cursor % h.length]!;
    this.cursor = (this.cursor + 1) % h.length;
    return e;
  }
}

export type RouteLookup = { readonly ok: true; readonly cluster: GatewayCluster } | { readonly ok: false; readonly message: string };

export class GatewayRoutes {
  private constructor(
    readonly trustDomain: string,
    readonly datacenter: string,
    private readonly local: ReadonlyMap<string, GatewayCluster>,
    private readonly remote: ReadonlyMap<string, GatewayCluster>,
  ) {}

  /**
   * Checks every name once: a local service key must be a canonical service SNI of this
   * datacenter and trust domain (so the exact lookup per connection needs no parsing), and a
   * remote datacenter must not be this one.
   */
  static compile(cfg: GatewayRoutesConfig): GatewayRoutes {
    const td = cfg.trustDomain.toLowerCase();
    const dc = cfg.datacenter.toLowerCase();
    const local = new Map<string, GatewayCluster>();
    for (const [sni, endpoints] of cfg.services) {
      const parsed = parseMeshSni(sni, td);
      if (parsed.kind === "refused") throw new GatewayConfigError(`gateway service ${JSON.stringify(sni)}: ${parsed.message}`);
      if (parsed.kind !== "service") throw new GatewayConfigError(`gateway service ${JSON.stringify(sni)} names a ${parsed.kind}, not a service`);
      if (parsed.datacenter !== dc) throw new GatewayConfigError(`gateway service ${JSON.stringify(sni)} is in datacenter ${parsed.datacenter}, not this gateway's ${dc}: list it under remote gateways`);
      const key = formatMeshSni(parsed);
      if (local.has(key)) throw new GatewayConfigError(`gateway service ${JSON.stringify(sni)} is listed twice`);
      local.set(key, new GatewayCluster(key, endpoints));
    }
    const remote = new Map<string, GatewayCluster>();
    for (const [name, endpoints] of cfg.remoteGateways) {
      const remoteDc = name.toLowerCase();
      if (remoteDc === dc) throw new GatewayConfigError(`remote gateways for ${name}: that is this gateway's own datacenter`);
      const cluster = formatMeshSni({ kind: "datacenter", partition: "default", datacenter: remoteDc, trustDomain: td });
      const check = parseMeshSni(cluster, td);
      if (check.kind !== "datacenter") throw new GatewayConfigError(`remote gateways for ${JSON.stringify(name)}: not a datacenter name (${check.kind === "refused" ? check.message : check.kind})`);
      remote.set(remoteDc, new GatewayCluster(cluster, endpoints));
    }
    return new GatewayRoutes(td, dc, local, remote);
  }

  /** Where a connection that sent `sni` (lowercase, as the ClientHello parser gives it) goes. */
  route(sni: string): RouteLookup {
    const exact = this.local.get(sni);
    if (exact) return { ok: true, cluster: exact };
    const parsed = parseMeshSni(sni, this.trustDomain);
    if (parsed.kind === "refused") return { ok: false, message: parsed.message };
    if (parsed.kind !== "service") return { ok: false, message: `SNI ${sni} names a ${parsed.kind}; this gateway routes services only` };
    if (parsed.datacenter === this.datacenter) return { ok: false, message: `SNI ${sni}: no such service in this datacenter (${this.datacenter})` };
    if (parsed.partition !== "default") return { ok: false, message: `SNI ${sni}: partition ${parsed.partition} is not routed across datacenters` };
    const remote = this.remote.get(parsed.datacenter);
    if (!remote) return { ok: false, message: `SNI ${sni}: no mesh gateway known for datacenter ${parsed.datacenter}` };
    return { ok: true, cluster: remote };
  }
}
