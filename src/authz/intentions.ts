// L4 intentions with Consul's precedence (shared/reference/consul-connect.md §2.9).
// Compiled once per Snapshot into a per-destination list; evaluated once per connection.
// A caller is its whole SPIFFE identity (partition, namespace, service), matched as Consul's
// agent matches intention sources (agent/connect/authz.go IntentionMatch): the peer must be
// equal (a local caller has none), the partition equal, the namespace equal or `*`, the
// name equal or `*`.
import type { Identity, Intention, IntentionAction, IntentionPolicy } from "../config/snapshot.js";
import { parseServiceSpiffeId } from "../identity/spiffe.js";

export interface Decision {
  readonly allowed: boolean;
  /** Human-readable, Consul style: `Matched L4 intention: web => db (deny)`. */
  readonly reason: string;
  readonly intention: Intention | null;
}

/**
 * Consul's precedence table (source namespace and name, then destination; E exact, W wildcard):
 * EE→E 9, EW→E 8, WW→E 7, EE→W 6, EW→W 5, WW→W 4. The most specific matching intention is
 * terminal.
 */
export function precedence(it: Pick<Intention, "source" | "destination" | "sourceNamespace">): number {
  // Source specificity: name exact 3, any name in one namespace 2, any namespace 1.
  const src = it.source !== "*" ? 3 : it.sourceNamespace !== "*" ? 2 : 1;
  return (it.destination !== "*" ? 6 : 3) + src;
}

export function sortByPrecedence(intentions: readonly Intention[]): Intention[] {
  // Stable sort: among equal precedence (only possible with duplicates), first written wins.
  return [...intentions].sort((a, b) => precedence(b) - precedence(a));
}

/** An intention with HTTP permissions is L7: only a listener that sees requests can enforce it. */
export function hasPermissions(it: Intention): boolean {
  return it.permissions !== undefined && it.permissions.length > 0;
}

function matches(pattern: string, name: string): boolean {
  return pattern === "*" || pattern === name;
}

/** Who is calling, from its verified certificate. A bare name is a caller in the local scope. */
export interface Caller {
  readonly service: string;
  readonly namespace: string;
  readonly partition: string;
}

/** This proxy's namespace and partition: what an intention without a source scope refers to. */
export interface LocalScope {
  readonly namespace: string;
  readonly partition: string;
}

export const DEFAULT_SCOPE: LocalScope = { namespace: "default", partition: "default" };

/** The scope of the proxy's own identity; its partition is read from its SPIFFE ID. */
export function scopeOf(identity: Pick<Identity, "namespace" | "spiffeId">): LocalScope {
  const id = parseServiceSpiffeId(identity.spiffeId);
  return { namespace: identity.namespace, partition: id?.partition ?? DEFAULT_SCOPE.partition };
}

/** Consul's source-side IntentionMatch. */
export function sourceMatches(it: Intention, caller: Caller, local: LocalScope): boolean {
  // Callers are identified by certificates from our own roots only: none is a peer's.
  if (it.sourcePeer) return false;
  if ((it.sourcePartition || local.partition) !== caller.partition) return false;
  const ns = it.sourceNamespace || local.namespace;
  if (ns !== "*" && ns !== caller.namespace) return false;
  return matches(it.source, caller.service);
}

/**
 * A bare name stands for a caller in the local scope. The cache key of a local caller is its
 * name (no allocation on the hot path); others carry their scope (`/` is not valid in names).
 */
export function callerOf(source: string | Caller, local: LocalScope): { readonly caller: Caller; readonly key: string } {
  if (typeof source === "string") return { caller: { service: source, namespace: local.namespace, partition: local.partition }, key: source };
  const isLocal = source.namespace === local.namespace && source.partition === local.partition;
  return { caller: source, key: isLocal ? source.service : `${source.partition}/${source.namespace}/${source.service}` };
}

/** Intentions that can apply to one destination, in evaluation order. */
export class CompiledIntentions {
  private readonly ordered: readonly Intention[];
  private readonly defaultAction: IntentionAction;
  private readonly cache = new Map<string, Decision>();

  constructor(
    policy: IntentionPolicy,
    destination: string,
    private readonly local: LocalScope = DEFAULT_SCOPE,
  ) {
    this.defaultAction = policy.defaultAction;
    this.ordered = sortByPrecedence(policy.intentions.filter((it) => matches(it.destination, destination)));
  }

  /** Results are memoised per caller: the set of callers is small and the policy is immutable. */
  authorize(source: string | Caller): Decision {
    const { caller, key } = callerOf(source, this.local);
    const hit = this.cache.get(key);
    if (hit) return hit;
    const d = this.evaluate(caller);
    if (this.cache.size < 10_000) this.cache.set(key, d);
    return d;
  }

  private evaluate(caller: Caller): Decision {
    for (const it of this.ordered) {
      if (!sourceMatches(it, caller, this.local)) continue;
      // As Consul's authorize endpoint: an L7 intention still decides (it is the most specific),
      // and a connection-level check cannot honour its permissions, so it denies.
      if (hasPermissions(it)) {
        return {
          allowed: false,
          reason: `Matched L7 intention: ${it.source} => ${it.destination} (L4 connections are denied; the service's protocol must be http)`,
          intention: it,
        };
      }
      return {
        allowed: it.action === "allow",
        reason: `Matched L4 intention: ${it.source} => ${it.destination} (${it.action})`,
        intention: it,
      };
    }
    return {
      allowed: this.defaultAction === "allow",
      reason: `No intention matched; default policy is ${this.defaultAction}`,
      intention: null,
    };
  }
}

export function authorize(policy: IntentionPolicy, source: string | Caller, destination: string, local: LocalScope = DEFAULT_SCOPE): Decision {
  return new CompiledIntentions(policy, destination, local).authorize(source);
}
