// What a mesh gateway is told by its route source (the dev state directory, a Consul agent):
// plain data, so the gateway knows no control plane and a control plane knows no listener.
import type { Endpoint } from "./snapshot.js";

/** A local service or one of its subsets: its instances, and the resolver's connect timeout when it sets one. */
export interface GatewayService {
  readonly endpoints: readonly Endpoint[];
  readonly connectTimeoutMs?: number;
}

export interface GatewayRoutesConfig {
  readonly trustDomain: string;
  /** The gateway's own datacenter. */
  readonly datacenter: string;
  /** Local services and subsets by the SNI their clients send (`[<subset>.]<service>.default.<dc>.internal.<td>`). */
  readonly services: ReadonlyMap<string, GatewayService>;
  /** Other datacenters' mesh gateways (their WAN addresses), by datacenter. */
  readonly remoteGateways: ReadonlyMap<string, readonly Endpoint[]>;
}

/** Where the gateway registers itself: its LAN address, and the WAN address other datacenters dial when it differs. */
export interface GatewayRegistration {
  readonly lan: { readonly address: string; readonly port: number };
  readonly wan?: { readonly address: string; readonly port: number };
}

/**
 * A gateway's route source. It reports each new table (and each problem, once while it lasts);
 * a table it cannot read is a problem, never an empty table.
 */
export interface GatewayRouteSource {
  /** Reads the first table; rejects when none can be read. Then watches for changes. */
  start(onTable: (cfg: GatewayRoutesConfig) => void, onProblem: (message: string) => void): Promise<GatewayRoutesConfig>;
  /** Registers the gateway (Kind mesh-gateway) where its peers look for it. */
  register(at: GatewayRegistration): Promise<void>;
  /** Leaves the catalog; safe to call twice. */
  deregister(): Promise<void>;
  /** Stops watching; resolves once no read is in flight. */
  close(): Promise<void>;
}
