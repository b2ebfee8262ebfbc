// L4 intentions with Consul's precedence (shared/reference/consul-connect.md §2.9).
// Compiled once per Snapshot into a per-destination list; evaluated once per connection.
import type { Intention, IntentionAction, IntentionPolicy } from "../config/snapshot.js";

export interface Decision {
  readonly allowed: boolean;
  /** Human-readable, Consul style: `Matched L4 intention: web => db (deny)`. */
  readonly reason: string;
  readonly intention: Intention | null;
}

/**
 * Consul's precedence with namespaces fixed (CE): exact→exact 9, *→exact 8, exact→* 6, *→* 5.
 * The most specific matching intention is terminal.
 */
export function precedence(it: Pick<Intention, "source" | "destination">): number {
  const srcExact = it.source !== "*";
  if (it.destination !== "*") return srcExact ? 9 : 8;
  return srcExact ? 6 : 5;
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

/** Intentions that can apply to one destination, in evaluation order. */
export class CompiledIntentions {
  private readonly ordered: readonly Intention[];
  private readonly defaultAction: IntentionAction;
  private readonly cache = new Map<string, Decision>();

  constructor(policy: IntentionPolicy, destination: string) {
    this.defaultAction = policy.defaultAction;
    this.ordered = sortByPrecedence(policy.intentions.filter((it) => matches(it.destination, destination)));
  }

  /** Results are memoised per source: the set of sources is small and the policy is immutable. */
  authorize(source: string): Decision {
    const hit = this.cache.get(source);
    if (hit) return hit;
    const d = this.evaluate(source);
    if (this.cache.size < 10_000) this.cache.set(source, d);
    return d;
  }

  private evaluate(source: string): Decision {
    for (const it of this.ordered) {
      if (!matches(it.source, source)) continue;
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

export function authorize(policy: IntentionPolicy, source: string, destination: string): Decision {
  return new CompiledIntentions(policy, destination).authorize(source);
}
