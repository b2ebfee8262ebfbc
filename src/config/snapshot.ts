// The Snapshot: everything the data plane needs to know, as one immutable value.
// A control plane produces them; the proxy applies each one atomically. Nothing here
// knows about sockets or about where the values came from.
import type { Limits, LoadBalancer, OutlierDetection, Permission, RouteTable } from "./http.js";

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/** Who this proxy is: the leaf it presents and the SPIFFE identity inside it. */
export interface Identity {
  readonly service: string;
  readonly namespace: string;
  readonly datacenter: string;
  readonly trustDomain: string;
  /** `spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>` */
  readonly spiffeId: string;
  /** Leaf first, then any intermediates, PEM. Presented whole. */
  readonly certChainPem: string;
  /** Never logged, never dumped. */
  readonly privateKeyPem: string;
  /** Colon-hex serial, Consul style. */
  readonly serial: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

export interface TrustBundle {
  readonly trustDomain: string;
  /** Every root listed is trusted (old roots stay listed during rotation). */
  readonly rootsPem: readonly string[];
}

export type Protocol = "tcp" | "http" | "http2" | "grpc";

/** Inbound: mTLS terminated here, authorized, then forwarded to the local app. */
export interface PublicListener {
  readonly bind: HostPort;
  readonly localApp: HostPort;
  readonly protocol: Protocol;
  readonly handshakeTimeoutMs: number;
  readonly localConnectTimeoutMs: number;
  readonly idleTimeoutMs: number;
  /** HTTP: how long the local app may take to answer one request. Default 15 s. */
  readonly requestTimeoutMs?: number;
}

/** Outbound: plain TCP from the local app, mTLS to an instance of `cluster`. */
export interface UpstreamListener {
  /** The destination service name the user wrote (`-upstream db:8181`). */
  readonly name: string;
  readonly bind: HostPort;
  readonly cluster: string;
  readonly protocol: Protocol;
  readonly connectTimeoutMs: number;
  readonly idleTimeoutMs: number;
  /** HTTP upstreams: where each request goes. Absent for tcp (all traffic to `cluster`). */
  readonly routes?: RouteTable;
  /**
   * The namespace and admin partition the upstream names its destination in (Consul's
   * DestinationNamespace and DestinationPartition, which default to the proxy's own): the
   * `consul_upstream_namespace|partition` of its listener's stats. Absent: the namespace of
   * `cluster`, and the default partition.
   */
  readonly namespace?: string;
  readonly partition?: string;
}

export interface Endpoint {
  readonly host: string;
  readonly port: number;
  readonly healthy: boolean;
  /** Stable id for logs and admin output, e.g. the catalog instance id. */
  readonly id: string;
  readonly meta: Readonly<Record<string, string>>;
}

/** One destination service (or subset) and how to reach it. */
export interface Cluster {
  readonly name: string;
  readonly service: string;
  readonly namespace: string;
  readonly datacenter: string;
  /** SNI sent in the ClientHello, e.g. `db.default.dc1.internal.<td>`. */
  readonly sni: string;
  /** The SPIFFE ID the server must present. */
  readonly expectedSpiffeId: string;
  readonly endpoints: readonly Endpoint[];
  /** Default round robin (Envoy's). */
  readonly lb?: LoadBalancer;
  /** Absent: no outlier detection. */
  readonly outlierDetection?: OutlierDetection;
  /** Default Envoy's circuit-breaker thresholds. */
  readonly limits?: Limits;
  readonly connectTimeoutMs?: number;
  /**
   * Clusters to use, in order, when this one has no healthy endpoint left (Consul resolver
   * failover; Envoy's lower priorities).
   */
  readonly failover?: readonly string[];
  /**
   * Set when the endpoints are mesh gateways rather than the service's instances: a target in
   * another datacenter reached in Consul's mesh gateway mode `local` (this datacenter's gateways)
   * or `remote` (the target datacenter's). The SNI and expected SPIFFE ID stay the target's.
   */
  readonly meshGateway?: { readonly mode: "local" | "remote"; readonly datacenter: string };
}

export type IntentionAction = "allow" | "deny";

export interface Intention {
  /** Source service name or `*`. */
  readonly source: string;
  /** Destination service name or `*`. */
  readonly destination: string;
  /**
   * The source's namespace, or `*` for every namespace. Absent: this proxy's own namespace
   * (Consul CE, where every intention's SourceNS is the destination's).
   */
  readonly sourceNamespace?: string;
  /** The source's admin partition (no wildcard, as Consul). Absent: this proxy's partition. */
  readonly sourcePartition?: string;
  /**
   * A cluster peer the source lives in (Consul's SourcePeer). Such an intention never matches
   * a caller of this mesh: callers are only ever identified by certificates from our own roots.
   */
  readonly sourcePeer?: string;
  readonly action: IntentionAction;
  readonly description?: string;
  /**
   * L7 intention: checked per HTTP request, first match wins; a request matching none gets
   * the default action. On a tcp service an L7 intention denies, as Consul's authorize does.
   */
  readonly permissions?: readonly Permission[];
}

export interface IntentionPolicy {
  /** What applies when no intention matches. Consul's dev default (ACLs off) is allow. */
  readonly defaultAction: IntentionAction;
  readonly intentions: readonly Intention[];
}

export interface Snapshot {
  /** Monotonic per control plane; used in logs and /config_dump. */
  readonly version: number;
  /** Which control plane produced it (`dev`, `static`, `consul`, ...). */
  readonly source: string;
  readonly identity: Identity;
  readonly trust: TrustBundle;
  readonly publicListener: PublicListener | null;
  readonly upstreams: readonly UpstreamListener[];
  readonly clusters: Readonly<Record<string, Cluster>>;
  readonly intentions: IntentionPolicy;
}

// The one table of defaults lives in defaults.ts; re-exported for the control planes and the CLI.
export { DEFAULTS } from "./defaults.js";
