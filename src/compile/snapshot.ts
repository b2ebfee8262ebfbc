// A Snapshot compiled once, before any of it is applied: validated, every default filled, the
// inbound intentions, each upstream's routes and each cluster's settings compiled. The result is
// a complete value the proxy commits (swaps listener states, updates cluster runtimes), a step
// that cannot fail for anything a Snapshot holds; a Snapshot that does not compile is refused
// whole with a SnapshotError naming the field, and nothing of it is applied.
import type { Protocol, Snapshot, UpstreamListener } from "../config/snapshot.js";
import { SnapshotError, validateSnapshot } from "../config/validate.js";
import { compileCluster, type CompiledCluster } from "./cluster.js";
import { compileInbound, type InboundState } from "./inbound.js";
import { compileRouteTable, type CompiledRouteTable } from "./routes.js";
import { buildTlsMaterial, materialKey, type TlsMaterial } from "../tls/contexts.js";

export { SnapshotError } from "../config/validate.js";

/** One upstream listener, compiled. */
export interface CompiledUpstream {
  readonly config: UpstreamListener;
  readonly name: string;
  /** The cluster plain TCP goes to (and the one HTTP falls back to): exists in the Snapshot. */
  readonly cluster: CompiledCluster;
  /** HTTP upstreams with routes: the compiled table. Null for tcp. */
  readonly routes: CompiledRouteTable | null;
}

export interface CompiledSnapshot {
  /** The Snapshot as the control plane delivered it (for /config_dump and logs). */
  readonly source: Snapshot;
  /** Secure contexts of the Snapshot's leaf and roots: the previous ones when those did not change. */
  readonly tls: TlsMaterial;
  readonly inbound: InboundState | null;
  readonly upstreams: readonly CompiledUpstream[];
  readonly clusters: ReadonlyMap<string, CompiledCluster>;
  /** Some listener speaks HTTP. */
  readonly speaksHttp: boolean;
  /** An HTTP/2 cluster or an h2c app: requests will go through undici's pools (http/undici.ts). */
  readonly speaksHttp2: boolean;
}

function isHttp2(p: Protocol): boolean {
  return p === "http2" || p === "grpc";
}

function hasRoutes(u: UpstreamListener): u is UpstreamListener & { routes: NonNullable<UpstreamListener["routes"]> } {
  return u.routes !== undefined && u.protocol !== "tcp";
}

/** Clusters reached from http2/grpc upstreams (their splits, and their failover clusters): their pools offer h2. */
function http2Clusters(s: Snapshot): Set<string> {
  const out = new Set<string>();
  for (const u of s.upstreams) {
    if (!isHttp2(u.protocol)) continue;
    const names = [u.cluster, ...(hasRoutes(u) ? u.routes.routes.flatMap((r) => r.action.splits.map((x) => x.cluster)) : [])];
    for (const n of names) {
      out.add(n);
      for (const f of s.clusters[n]?.failover ?? []) out.add(f);
    }
  }
  return out;
}

/** The leaf and roots as node's TLS will use them; building them is where OpenSSL may still object. */
function tlsMaterialOf(s: Snapshot, previous: TlsMaterial | null): TlsMaterial {
  if (previous !== null && previous.key === materialKey(s.identity, s.trust)) return previous;
  try {
    return buildTlsMaterial(s.identity, s.trust);
  } catch (e) {
    throw new SnapshotError("identity", `the leaf, its key and the roots do not make a TLS context: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/**
 * Throws SnapshotError naming the first field that is wrong; returns a value nothing needs to
 * check again. `previousTls`: the material in use, kept (with its TLS sessions) when unchanged.
 */
export function compileSnapshot(s: Snapshot, previousTls: TlsMaterial | null = null): CompiledSnapshot {
  validateSnapshot(s);
  const h2 = http2Clusters(s);
  const clusters = new Map<string, CompiledCluster>();
  for (const [key, c] of Object.entries(s.clusters)) {
    const compiled = compileCluster(c, h2.has(key));
    compiled.failover.forEach((name, i) => {
      const f = `clusters[${key}].failover[${i}]`;
      if (name === key) throw new SnapshotError(f, "a cluster cannot fail over to itself");
      if (s.clusters[name] === undefined) throw new SnapshotError(f, `"${name}" is not a cluster of this Snapshot`);
    });
    clusters.set(key, compiled);
  }
  const exists = (name: string): boolean => clusters.has(name);
  const upstreams = s.upstreams.map((u): CompiledUpstream => {
    const cluster = clusters.get(u.cluster);
    if (cluster === undefined) throw new SnapshotError(`upstreams[${u.name}].cluster`, `"${u.cluster}" is not a cluster of this Snapshot`);
    return { config: u, name: u.name, cluster, routes: hasRoutes(u) ? compileRouteTable(`upstreams[${u.name}].routes`, u.routes, exists) : null };
  });
  const inbound = s.publicListener === null ? null : compileInbound(s, s.publicListener);
  return {
    source: s,
    tls: tlsMaterialOf(s, previousTls),
    inbound,
    upstreams,
    clusters,
    speaksHttp: (s.publicListener !== null && s.publicListener.protocol !== "tcp") || s.upstreams.some((u) => u.protocol !== "tcp"),
    speaksHttp2: (s.publicListener !== null && isHttp2(s.publicListener.protocol)) || [...clusters.values()].some((c) => c.http2),
  };
}
