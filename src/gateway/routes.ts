// A mesh gateway's route table, compiled once per table the route source gives: the SNI a client
// sent → the cluster that carries it. Consul's gateway layout (shared/reference/consul-connect.md
// §5): a local service, or a subset of it, is keyed by its full SNI (Envoy's sni_cluster: the SNI
// is the cluster name); a name in another datacenter goes to that datacenter's gateways (the
// `*.<dc>.internal.<td>` chains, cluster `<dc>.internal.<td>`). Everything else is refused: a
// gateway forwards only names it was told about. Each route's cluster is an ordinary Cluster, so
// the concrete stage balances, ejects and limits it as it does a sidecar's.
import { DEFAULT_LB, DEFAULT_LIMITS, DEFAULT_OUTLIER_DETECTION } from "../config/http.js";
import type { Cluster } from "../config/snapshot.js";
import { SnapshotError } from "../config/validate.js";
import { compileCluster, type CompiledCluster } from "../compile/cluster.js";
import type { GatewayRoutesConfig, GatewayService } from "../config/gateway.js";

export type { GatewayRoutesConfig, GatewayService };
import { formatMeshSni, parseMeshSni } from "../identity/sni.js";
import { serviceSpiffeId } from "../identity/spiffe.js";

export class GatewayConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GatewayConfigError";
  }
}

/** A route found: the name of its cluster. The same object for every connection to that route. */
export type RouteLookup = { readonly ok: true; readonly cluster: string } | { readonly ok: false; readonly message: string };

/**
 * Consul's mesh gateway clusters (agent/xds/clusters.go, makeGatewayCluster): round robin, outlier
 * detection with Envoy's defaults (an empty OutlierDetection), Envoy's default circuit breakers.
 */
function gatewayCluster(name: string, service: string, datacenter: string, spiffeId: string, s: GatewayService): Cluster {
  return {
    name,
    service,
    namespace: "default",
    datacenter,
    sni: name,
    // What the client will check end to end; the gateway itself never sees a certificate.
    expectedSpiffeId: spiffeId,
    endpoints: s.endpoints,
    lb: DEFAULT_LB,
    outlierDetection: DEFAULT_OUTLIER_DETECTION,
    limits: DEFAULT_LIMITS,
    ...(s.connectTimeoutMs !== undefined ? { connectTimeoutMs: s.connectTimeoutMs } : {}),
  };
}

export class GatewayRoutes {
  private constructor(
    readonly trustDomain: string,
    readonly datacenter: string,
    private readonly local: ReadonlyMap<string, RouteLookup>,
    private readonly remote: ReadonlyMap<string, RouteLookup>,
    /** Every route's cluster, once each. */
    readonly clusters: readonly CompiledCluster[],
  ) {}

  /**
   * Checks every name once: a local key must be a canonical service or subset SNI of this
   * datacenter and trust domain (so the exact lookup per connection needs no parsing), and a
   * remote datacenter must not be this one.
   */
  static compile(cfg: GatewayRoutesConfig): GatewayRoutes {
    const td = cfg.trustDomain.toLowerCase();
    const dc = cfg.datacenter.toLowerCase();
    const local = new Map<string, RouteLookup>();
    const clusters: Cluster[] = [];
    for (const [sni, service] of cfg.services) {
      const parsed = parseMeshSni(sni, td);
      if (parsed.kind === "refused") throw new GatewayConfigError(`gateway service ${JSON.stringify(sni)}: ${parsed.message}`);
      if (parsed.kind !== "service") throw new GatewayConfigError(`gateway service ${JSON.stringify(sni)} names a ${parsed.kind}, not a service`);
      if (parsed.datacenter !== dc) throw new GatewayConfigError(`gateway service ${JSON.stringify(sni)} is in datacenter ${parsed.datacenter}, not this gateway's ${dc}: list it under remote gateways`);
      const key = formatMeshSni(parsed);
      if (local.has(key)) throw new GatewayConfigError(`gateway service ${JSON.stringify(sni)} is listed twice`);
      local.set(key, { ok: true, cluster: key });
      const spiffeId = serviceSpiffeId({ trustDomain: td, namespace: parsed.namespace, datacenter: dc, service: parsed.service });
      clusters.push(gatewayCluster(key, parsed.service, dc, spiffeId, service));
    }
    const remote = new Map<string, RouteLookup>();
    for (const [name, endpoints] of cfg.remoteGateways) {
      const remoteDc = name.toLowerCase();
      if (remoteDc === dc) throw new GatewayConfigError(`remote gateways for ${name}: that is this gateway's own datacenter`);
      const cluster = formatMeshSni({ kind: "datacenter", partition: "default", datacenter: remoteDc, trustDomain: td });
      const check = parseMeshSni(cluster, td);
      if (check.kind !== "datacenter") throw new GatewayConfigError(`remote gateways for ${JSON.stringify(name)}: not a datacenter name (${check.kind === "refused" ? check.message : check.kind})`);
      if (remote.has(remoteDc)) throw new GatewayConfigError(`remote gateways for ${JSON.stringify(name)} are listed twice`);
      remote.set(remoteDc, { ok: true, cluster });
      // Consul's mesh gateway identity (spiffe://<td>/gateway/mesh/dc/<dc>), for /clusters only.
      clusters.push(gatewayCluster(cluster, "mesh-gateway", remoteDc, `spiffe://${td}/gateway/mesh/dc/${remoteDc}`, { endpoints }));
    }
    // Compiled here, with the names: a table whose cluster settings cannot be right is refused
    // whole, before any runtime is touched, as a sidecar's Snapshot is.
    const compiled = clusters.map((c) => {
      try {
        return compileCluster(c, false, `gateway cluster ${c.name}`);
      } catch (e) {
        if (e instanceof SnapshotError) throw new GatewayConfigError(`${e.field}: ${e.reason}`);
        throw e;
      }
    });
    return new GatewayRoutes(td, dc, local, remote, compiled);
  }

  /** Where a connection that sent `sni` (lowercase, as the ClientHello parser gives it) goes. */
  route(sni: string): RouteLookup {
    const exact = this.local.get(sni);
    if (exact) return exact;
    const parsed = parseMeshSni(sni, this.trustDomain);
    if (parsed.kind === "refused") return { ok: false, message: parsed.message };
    if (parsed.kind !== "service") return { ok: false, message: `SNI ${sni} names a ${parsed.kind}; this gateway routes services only` };
    if (parsed.datacenter === this.datacenter) {
      const what = parsed.subset === null ? "service" : `subset ${parsed.subset} of service ${parsed.service}`;
      return { ok: false, message: `SNI ${sni}: no such ${what} in this datacenter (${this.datacenter})` };
    }
    if (parsed.partition !== "default") return { ok: false, message: `SNI ${sni}: partition ${parsed.partition} is not routed across datacenters` };
    const remote = this.remote.get(parsed.datacenter);
    if (!remote) return { ok: false, message: `SNI ${sni}: no mesh gateway known for datacenter ${parsed.datacenter}` };
    return remote;
  }
}
