// What an upstream's chain needs from the agent to reach targets in other datacenters: each
// target's instances in its own datacenter, and the mesh gateways of the datacenters its mode
// dials (this one for local, the target's for remote). Keys use "" for the agent's own
// datacenter, which is what a query without `dc` reads.
import type { CompiledChain } from "../chain/compile.js";
import type { MeshGatewayMode } from "../chain/entries.js";
import type { ServiceInstance } from "../chain/upstream.js";
import type { GatewayEndpoint } from "./wire.js";

/**
 * The proxy's override on the agent's compiled chain (Consul's OverrideMeshGateway, which a plain
 * GET of the chain does not apply): every target takes it when set.
 */
export function withMeshGatewayMode(chain: CompiledChain, override: MeshGatewayMode | undefined): CompiledChain {
  if (override === undefined || Object.values(chain.targets).every((t) => t.meshGatewayMode === override)) return chain;
  const targets = Object.fromEntries(Object.entries(chain.targets).map(([id, t]) => [id, { ...t, meshGatewayMode: override }]));
  return { ...chain, targets };
}

/** The `dc` query value for a datacenter: "" for the proxy's own (the agent's default). */
export function dcParam(datacenter: string, local: string): string {
  return datacenter === local ? "" : datacenter;
}

/** Each target's service and the `dc` its instances are read from. */
export function targetInstances(chain: CompiledChain, local: string, fallback: string): Array<{ service: string; dc: string }> {
  const seen = new Map<string, { service: string; dc: string }>();
  for (const t of Object.values(chain.targets)) {
    const dc = t.datacenter ? dcParam(t.datacenter, local) : fallback;
    seen.set(`${t.service}|${dc}`, { service: t.service, dc });
  }
  return [...seen.values()];
}

/** The `dc` values whose mesh gateways the chain's targets dial; empty when none goes through one. */
export function gatewayDatacenters(chain: CompiledChain, local: string): string[] {
  const out = new Set<string>();
  for (const t of Object.values(chain.targets)) {
    if (!t.datacenter || t.datacenter === local || t.meshGatewayMode === "none") continue;
    out.add(t.meshGatewayMode === "local" ? "" : t.datacenter);
  }
  return [...out];
}

/**
 * Gateways as catalog instances for the Snapshot builder. Another datacenter's gateways are
 * dialled at their WAN address, this datacenter's at their LAN address, as Consul does.
 */
export function gatewayInstances(list: readonly GatewayEndpoint[], name: string, datacenter: string, remote: boolean): ServiceInstance[] {
  return list.map((g) => {
    const at = remote ? g.wan : g.lan;
    return {
      id: g.id,
      service: name,
      address: at.address,
      port: at.port,
      status: g.status,
      meta: g.meta,
      tags: [],
      node: { name: g.node, datacenter: g.datacenter || datacenter, meta: {} },
    };
  });
}
