// From a compiled discovery chain plus the instances of each target's service to the Snapshot's
// upstream listener, route table and clusters. Shared by the dev and Consul control planes.
import type { Cluster, Endpoint, UpstreamListener } from "../../config/snapshot.js";
import { DEFAULTS } from "../../config/snapshot.js";
import {
  DEFAULT_LB,
  DEFAULT_LIMITS,
  DEFAULT_OUTLIER_DETECTION,
  NO_HEADER_MUTATION,
  NO_RETRIES,
  type Limits,
  type LoadBalancer,
  type OutlierDetection,
  type RetryOn,
  type RetryPolicy,
  type Route,
} from "../../config/http.js";
import { serviceSpiffeId } from "../../identity/spiffe.js";
import { formatMeshSni } from "../../identity/sni.js";
import type { UpstreamRequest } from "../controlplane.js";
import { compileFilter, type FilterTarget } from "./bexpr.js";
import type { ChainTarget, CompiledChain } from "./compile.js";
import type { RouteDestination, UpstreamSettings } from "./entries.js";

/** One instance of a service, as the catalog or the agent's health endpoint reports it. */
export interface ServiceInstance {
  readonly id: string;
  readonly service: string;
  readonly address: string;
  readonly port: number;
  readonly status: "passing" | "warning" | "critical";
  readonly meta: Readonly<Record<string, string>>;
  readonly tags: readonly string[];
  readonly node: { readonly name: string; readonly datacenter: string; readonly meta: Readonly<Record<string, string>> };
}

export interface UpstreamBuild {
  readonly listener: UpstreamListener;
  readonly clusters: Record<string, Cluster>;
  /** Why a cluster cannot carry traffic as built (no mesh gateway for its mode), for the operator's log. */
  readonly problems: readonly string[];
}

export interface UpstreamBuildInput {
  readonly upstream: UpstreamRequest;
  readonly chain: CompiledChain;
  readonly instances: (service: string, datacenter: string) => readonly ServiceInstance[];
  /** The source service's UpstreamConfig for this destination (defaults merged with the override). */
  readonly settings: UpstreamSettings | undefined;
  readonly trustDomain: string;
  /** The proxy's own datacenter: targets elsewhere go through mesh gateways unless their mode is none. */
  readonly localDatacenter: string;
  /** A datacenter's mesh gateways (services of Kind mesh-gateway), as the catalog reports them. */
  readonly gateways: (datacenter: string) => readonly ServiceInstance[];
}

function filterTarget(i: ServiceInstance): FilterTarget {
  return {
    service: { meta: i.meta, tags: i.tags, id: i.id, name: i.service, address: i.address, port: i.port },
    node: { meta: i.node.meta, name: i.node.name, datacenter: i.node.datacenter },
  };
}

/** The instances a subset selects (all, for no filter), with health as Envoy weighs it. Throws FilterError on a bad filter. */
export function endpointsOf(t: Pick<ChainTarget, "filter" | "onlyPassing">, instances: readonly ServiceInstance[]): Endpoint[] {
  const match = t.filter ? compileFilter(t.filter) : () => true;
  return instances
    .filter((i) => match(filterTarget(i)))
    .map((i) => ({
      id: i.id,
      host: i.address,
      port: i.port,
      // As Envoy weighs them: critical is unhealthy; warning too where the subset is OnlyPassing.
      healthy: i.status === "passing" || (i.status === "warning" && !t.onlyPassing),
      meta: i.meta,
    }));
}

interface TargetEndpoints {
  readonly endpoints: Endpoint[];
  readonly meshGateway?: { readonly mode: "local" | "remote"; readonly datacenter: string };
}

/**
 * A target's endpoints: its instances, or, for a target in another datacenter with mode local or
 * remote, the mesh gateways that lead there. As Consul (agent/xds/endpoints.go), a gateway counts
 * as healthy only while the target has a healthy instance behind it, so failover to the next
 * target still happens when the far side has none; a gateway that is itself down is unhealthy too.
 * No gateway means no endpoint, never a silent fallback to dialling the instances directly.
 */
function targetEndpoints(t: ChainTarget, input: UpstreamBuildInput): TargetEndpoints {
  const instances = endpointsOf(t, input.instances(t.service, t.datacenter));
  if (t.datacenter === input.localDatacenter || t.meshGatewayMode === "none") return { endpoints: instances };
  const mode = t.meshGatewayMode;
  const datacenter = mode === "local" ? input.localDatacenter : t.datacenter;
  const reachable = instances.some((e) => e.healthy);
  const endpoints = input.gateways(datacenter).map((g) => ({
    id: g.id,
    host: g.address,
    port: g.port,
    healthy: reachable && g.status !== "critical",
    meta: g.meta,
  }));
  return { endpoints, meshGateway: { mode, datacenter } };
}

function outlierFrom(s: UpstreamSettings | undefined): OutlierDetection {
  const p = s?.passiveHealthCheck;
  if (!p) return DEFAULT_OUTLIER_DETECTION;
  return {
    ...DEFAULT_OUTLIER_DETECTION,
    ...(p.intervalMs !== undefined ? { intervalMs: p.intervalMs } : {}),
    ...(p.maxFailures !== undefined ? { consecutive5xx: p.maxFailures } : {}),
    ...(p.enforcingConsecutive5xx !== undefined ? { enforcingConsecutive5xx: p.enforcingConsecutive5xx } : {}),
    ...(p.maxEjectionPercent !== undefined ? { maxEjectionPercent: p.maxEjectionPercent } : {}),
    ...(p.baseEjectionTimeMs !== undefined ? { baseEjectionTimeMs: p.baseEjectionTimeMs } : {}),
  };
}

function limitsFrom(s: UpstreamSettings | undefined): Limits {
  const l = s?.limits;
  if (!l) return DEFAULT_LIMITS;
  return {
    ...DEFAULT_LIMITS,
    ...(l.maxConnections !== undefined ? { maxConnections: l.maxConnections } : {}),
    ...(l.maxPendingRequests !== undefined ? { maxPendingRequests: l.maxPendingRequests } : {}),
    ...(l.maxConcurrentRequests !== undefined ? { maxRequests: l.maxConcurrentRequests } : {}),
  };
}

function lbFrom(t: ChainTarget): LoadBalancer {
  const lb = t.loadBalancer;
  if (!lb) return DEFAULT_LB;
  return {
    policy: lb.policy,
    choiceCount: lb.choiceCount ?? DEFAULT_LB.choiceCount,
    ringSize: { min: lb.ringSize?.min ?? DEFAULT_LB.ringSize.min, max: lb.ringSize?.max ?? DEFAULT_LB.ringSize.max },
    hashPolicies: lb.hashPolicies,
  };
}

/**
 * Envoy has no retries without a policy. We retry a connect failure once even then: no request
 * byte has left, so it is always safe, and it is what the L4 path does too.
 */
const CONNECT_FAILURE_ONCE: RetryPolicy = { ...NO_RETRIES, numRetries: 1, retryOn: ["connect-failure"] };

export function retryPolicyFrom(d: RouteDestination): RetryPolicy {
  const on = new Set<RetryOn>(d.retryOn);
  if (d.retryOnConnectFailure) on.add("connect-failure");
  if (d.retryOnStatusCodes.length > 0) on.add("retriable-status-codes");
  if (on.size === 0 && d.numRetries === undefined) return CONNECT_FAILURE_ONCE;
  return {
    ...NO_RETRIES,
    // Envoy: a retry policy without num_retries retries once.
    numRetries: d.numRetries ?? 1,
    retryOn: [...on],
    retriableStatusCodes: d.retryOnStatusCodes,
  };
}

/**
 * The target's SNI, which is also the cluster name Consul's Envoy config uses: the agent's when
 * it compiled the chain, else Consul's TargetSNI (the -v1 form in a partition other than default).
 */
function targetSni(t: ChainTarget, trustDomain: string): string {
  return t.sni ?? formatMeshSni({ kind: "service", subset: t.subset || null, service: t.service, namespace: t.namespace, partition: t.partition, datacenter: t.datacenter, trustDomain });
}

export function buildUpstream(input: UpstreamBuildInput): UpstreamBuild {
  const { upstream: u, chain, trustDomain, settings } = input;
  const clusters: Record<string, Cluster> = {};
  const problems: string[] = [];
  const names: Record<string, string> = {};
  for (const t of Object.values(chain.targets)) names[t.id] = targetSni(t, trustDomain);
  for (const t of Object.values(chain.targets)) {
    const name = names[t.id]!;
    const connectTimeoutMs = settings?.connectTimeoutMs ?? t.connectTimeoutMs ?? u.connectTimeoutMs ?? DEFAULTS.upstreamConnectTimeoutMs;
    const { endpoints, meshGateway } = targetEndpoints(t, input);
    if (meshGateway && endpoints.length === 0) problems.push(`upstream "${u.name}": no mesh gateway in ${meshGateway.datacenter} for mode ${meshGateway.mode} (target ${t.id}); connections to it are refused until one is registered`);
    clusters[name] = {
      name,
      service: t.service,
      namespace: t.namespace,
      datacenter: t.datacenter,
      sni: name,
      // A subset is a slice of one service: every instance presents the service's identity, in
      // the target's partition (Consul's upstream cluster SAN match: /ap/<partition>/ unless default).
      expectedSpiffeId: serviceSpiffeId({ trustDomain, partition: t.partition, namespace: t.namespace, datacenter: t.datacenter, service: t.service }),
      endpoints,
      ...(meshGateway ? { meshGateway } : {}),
      lb: lbFrom(t),
      outlierDetection: outlierFrom(settings),
      limits: limitsFrom(settings),
      connectTimeoutMs,
      failover: t.failover.map((id) => names[id]!).filter((n) => n !== undefined),
    };
  }
  const defaultCluster = names[chain.defaultTarget]!;
  const routes: Route[] = chain.routes.map((r) => {
    const d = r.destination;
    return {
      match: r.match,
      action: {
        splits: r.splits.map((s) => ({
          cluster: names[s.target]!,
          weight: s.weight,
          requestHeaders: s.requestHeaders ?? NO_HEADER_MUTATION,
          responseHeaders: s.responseHeaders ?? NO_HEADER_MUTATION,
        })),
        ...(d.prefixRewrite !== undefined ? { prefixRewrite: d.prefixRewrite } : {}),
        timeoutMs: d.requestTimeoutMs ?? r.resolverRequestTimeoutMs ?? 15_000,
        idleTimeoutMs: d.idleTimeoutMs ?? 300_000,
        retry: retryPolicyFrom(d),
        requestHeaders: d.requestHeaders ?? NO_HEADER_MUTATION,
        responseHeaders: d.responseHeaders ?? NO_HEADER_MUTATION,
      },
    };
  });
  const listener: UpstreamListener = {
    name: u.listenerName ?? u.name,
    bind: u.bind,
    cluster: defaultCluster,
    protocol: chain.protocol,
    connectTimeoutMs: clusters[defaultCluster]!.connectTimeoutMs ?? DEFAULTS.upstreamConnectTimeoutMs,
    idleTimeoutMs: DEFAULTS.idleTimeoutMs,
    ...(routes.length > 0 ? { routes: { routes } } : {}),
    ...(u.namespace !== undefined ? { namespace: u.namespace } : {}),
    ...(u.partition !== undefined ? { partition: u.partition } : {}),
  };
  return { listener, clusters, problems };
}

/** The source service's settings for one destination: Defaults, then the matching Override. */
export function upstreamSettingsFor(defaults: UpstreamSettings | undefined, overrides: ReadonlyArray<UpstreamSettings & { name: string }>, destination: string): UpstreamSettings | undefined {
  const o = overrides.find((x) => x.name === destination);
  if (!defaults && !o) return undefined;
  return {
    ...defaults,
    ...o,
    ...(defaults?.limits || o?.limits ? { limits: { ...defaults?.limits, ...o?.limits } } : {}),
    ...(defaults?.passiveHealthCheck || o?.passiveHealthCheck ? { passiveHealthCheck: { ...defaults?.passiveHealthCheck, ...o?.passiveHealthCheck } } : {}),
  };
}
