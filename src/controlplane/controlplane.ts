// The seam between a control plane and the data plane. A control plane turns what the operator
// asked for (a ProxyRequest) plus what it knows (CA, catalog, intentions) into Snapshots.
// It never touches a socket; the proxy never calls back into it except to announce where its
// public listener ended up (so the instance can be registered), to withdraw it, and, for the
// admin API's traffic page, to store new split weights (which come back as a Snapshot).
import type { HostPort, Protocol, Snapshot } from "../config/snapshot.js";
import type { MeshGatewayMode, UpstreamSettings } from "./chain/entries.js";
import type { SubsetWeight } from "../config/split-weights.js";

export interface UpstreamRequest {
  /** Destination service name. */
  readonly name: string;
  /**
   * The upstream listener's name when it is not `name`: a native app may call the same service
   * here and in another datacenter, and a Snapshot's upstreams are named uniquely.
   */
  readonly listenerName?: string;
  readonly bind: HostPort;
  /** The destination's datacenter; absent: the proxy's own. */
  readonly datacenter?: string;
  /** The destination's namespace and admin partition (Consul Enterprise); absent: the proxy's own. */
  readonly namespace?: string;
  readonly partition?: string;
  /** This upstream's MeshGateway.Mode; wins over every other level. */
  readonly meshGatewayMode?: MeshGatewayMode;
  readonly connectTimeoutMs?: number;
  /** Limits, outlier detection and connect timeout for this destination (Consul's upstream Config). */
  readonly settings?: UpstreamSettings;
}

/** What the operator asked for on the command line (Consul's "flags mode"). */
export interface ProxyRequest {
  readonly service: string;
  /** Instance id in the catalog; defaults to `<service>-sidecar-proxy-<pid>`. */
  readonly proxyId?: string;
  readonly publicListener?: {
    readonly bind: HostPort;
    readonly localApp: HostPort;
    readonly protocol?: Protocol;
  };
  readonly upstreams: readonly UpstreamRequest[];
  /** Service metadata registered with the instance (subset filters select on it). */
  readonly meta?: Readonly<Record<string, string>>;
  /** The proxy instance's MeshGateway.Mode (-mesh-gateway-mode); an upstream's own wins over it. */
  readonly meshGatewayMode?: MeshGatewayMode;
}

/** Where the proxy's public listener really is (port 0 resolved), for registration. */
export interface Announcement {
  readonly address: string;
  readonly port: number;
  readonly protocol: Protocol;
  /**
   * The listener is bound to every interface (`:port`, 0.0.0.0, ::); `address` is then loopback.
   * A catalog shared by several hosts registers no address instead, so its agent fills in the
   * node's (as Consul's built-in proxy registers `-listen :port`).
   */
  readonly wildcard?: boolean;
}

/** The Announcement of a public listener bound at `host`:`port` (the bound port, not 0). */
export function announcementOf(host: string, port: number, protocol: Protocol): Announcement {
  const wildcard = host === "0.0.0.0" || host === "::";
  return { address: wildcard ? "127.0.0.1" : host, port, protocol, ...(wildcard ? { wildcard } : {}) };
}

export class ControlPlaneError extends Error {
  constructor(
    /** Which watch or call failed, e.g. `intentions`, `ca-roots`, `leaf`. */
    readonly resource: string,
    message: string,
    /** Fatal errors stop startup; others are retried while the last good Snapshot serves. */
    readonly fatal = false,
  ) {
    super(`${resource}: ${message}`);
    this.name = "ControlPlaneError";
  }
}

export interface ControlPlaneHandlers {
  /** A new Snapshot. The proxy validates it and keeps the last good one if it is invalid. */
  snapshot(s: Snapshot): void;
  /** A failure to fetch or parse. Counted and logged; the last good Snapshot keeps serving. */
  error(e: ControlPlaneError): void;
}

export interface ControlPlane {
  /** `dev`, `static`, `consul`, or your own. */
  readonly kind: string;
  /** Starts watching. Resolves once the first Snapshot has been delivered, or rejects if it cannot be. */
  start(handlers: ControlPlaneHandlers): Promise<void>;
  /** Registers the instance in the catalog (where the control plane has one). */
  announce(a: Announcement): Promise<void>;
  /** Removes the instance from the catalog; called first on shutdown. */
  withdraw(): Promise<void>;
  /** Stops every watch and timer. */
  stop(): Promise<void>;
  /**
   * The admin API's POST /healthcheck/fail (true) and /healthcheck/ok (false): where the
   * instance's registration carries a health check this proxy keeps (Consul -register's TTL
   * check), it fails or passes it, so callers stop (or start again) sending traffic here while
   * the listeners stay open. Absent: nothing outside the proxy's /ready reflects it.
   */
  setHealthCheckFailed?(failed: boolean): Promise<void>;
  /**
   * Connect-native apps name the services they call as they call them, not up front: this adds
   * an upstream after start(), and the next Snapshots carry its listener and clusters (watched
   * like the request's own upstreams). Idempotent per name and datacenter. Absent: only the request's upstreams
   * are ever served (the static file is the whole configuration).
   */
  addUpstream?(u: UpstreamRequest): void;
  /**
   * Stores new weights for `service`'s service-splitter where this control plane keeps config
   * entries (the admin API's live traffic page); the change then arrives as a new Snapshot like
   * any other. Rejects with SplitChangeError. Absent: entries cannot be written here (a static
   * file is its own source of truth).
   */
  setSubsetWeights?(service: string, weights: readonly SubsetWeight[]): Promise<void>;
}
