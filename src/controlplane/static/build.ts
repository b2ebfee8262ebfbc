// StaticConfig + certificates → Snapshot. Pure: the same inputs give the same Snapshot, which
// is what lets the control plane tell a real change from a file that was merely touched.
import type { Cluster, Snapshot } from "../../config/snapshot.js";
import { serviceSni, serviceSpiffeId } from "../../identity/spiffe.js";
import type { StaticConfig } from "./config.js";
import type { Material } from "./material.js";

export function buildStaticSnapshot(cfg: StaticConfig, material: Material, version: number): Snapshot {
  const { identity, trust } = material;
  const { trustDomain, namespace } = identity;
  const clusters: Record<string, Cluster> = {};
  for (const u of cfg.upstreams) {
    clusters[u.name] = {
      name: u.name,
      service: u.name,
      namespace,
      datacenter: u.datacenter,
      sni: u.sni ?? serviceSni(u.name, namespace, u.datacenter, trustDomain),
      expectedSpiffeId: u.spiffeId ?? serviceSpiffeId({ trustDomain, namespace, datacenter: u.datacenter, service: u.name }),
      endpoints: u.endpoints,
    };
  }
  return {
    version,
    source: "static",
    identity,
    trust,
    publicListener: cfg.publicListener,
    upstreams: cfg.upstreams.map((u) => ({
      name: u.name,
      bind: u.bind,
      cluster: u.name,
      protocol: "tcp",
      connectTimeoutMs: u.connectTimeoutMs,
      idleTimeoutMs: u.idleTimeoutMs,
    })),
    clusters,
    intentions: cfg.intentions,
  };
}
