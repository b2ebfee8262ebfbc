// A new service-splitter for a weight change from the admin API, computed from the entry as stored
// (Consul's JSON, either key style) and the service's resolver. The same rules for every control
// plane that can write entries: subsets must be ones the resolver defines, the legs given replace
// the old ones whole, and a leg's header mutations carry over to the new leg of the same subset.
// Anything the page cannot express (a leg to another service) is refused rather than dropped.
import { SplitChangeError, type SubsetWeight } from "../../config/split-weights.js";
import { EntryError, parseEntry, type ServiceResolver, type ServiceSplitter } from "./entries.js";

type Json = Record<string, unknown>;

function isObj(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The field names a leg's weight, service and subset may be written with (Consul takes both styles). */
const LEG_TARGET_KEYS = new Set(["Weight", "weight", "Service", "service", "ServiceSubset", "service_subset", "serviceSubset"]);
const SPLITS_KEYS = ["Splits", "splits"];
/** Raft bookkeeping Consul returns with an entry; a write carries its index as ?cas= instead. */
const SERVER_KEYS = new Set(["CreateIndex", "ModifyIndex", "Hash"]);

/** The subsets a weight change may name: the resolver's, checked for being splittable at all. */
function subsetsOf(service: string, resolver: ServiceResolver | null): ReadonlySet<string> {
  if (resolver?.redirect) {
    throw new SplitChangeError("conflict", `service-resolver "${service}" redirects the service elsewhere: its own subsets get no traffic to split; change the resolver with meshproxy config write`);
  }
  const names = Object.keys(resolver?.subsets ?? {});
  if (names.length === 0) {
    throw new SplitChangeError("conflict", `"${service}" has no service-resolver with Subsets: there is nothing to split between; write one first (meshproxy config write, see examples/canary/)`);
  }
  return new Set(names);
}

/**
 * The splitter to store: `current` is the stored entry as read (null when there is none), with
 * `parsed` its parsed form. Throws SplitChangeError for what cannot be done.
 */
export function splitterWithWeights(
  service: string,
  current: { readonly raw: unknown; readonly parsed: ServiceSplitter } | null,
  resolver: ServiceResolver | null,
  weights: readonly SubsetWeight[],
): Json {
  const subsets = subsetsOf(service, resolver);
  for (const w of weights) {
    if (!subsets.has(w.subset)) {
      throw new SplitChangeError("invalid", `subset "${w.subset}" is not defined by service-resolver "${service}" (it defines ${[...subsets].sort().join(", ")})`);
    }
  }
  // Extra fields of an old leg (its RequestHeaders, ResponseHeaders), by the subset it sent to.
  const carried = new Map<string, Json>();
  const base: Json = {};
  if (current) {
    const rawLegs = legsOf(current.raw);
    current.parsed.splits.forEach((leg, i) => {
      if (leg.service !== undefined && leg.service !== service) {
        throw new SplitChangeError("conflict", `the service-splitter "${service}" also sends traffic to service "${leg.service}", which this control cannot express; edit the entry with meshproxy config write`);
      }
      const subset = leg.serviceSubset ?? resolver?.defaultSubset;
      if (subset === undefined) return;
      const extra: Json = {};
      for (const [k, v] of Object.entries(rawLegs[i] ?? {})) if (!LEG_TARGET_KEYS.has(k)) extra[k] = v;
      carried.set(subset, extra);
    });
    if (isObj(current.raw)) {
      for (const [k, v] of Object.entries(current.raw)) if (!SPLITS_KEYS.includes(k) && !SERVER_KEYS.has(k)) base[k] = v;
    }
  }
  const next: Json = {
    Kind: "service-splitter",
    Name: service,
    ...base,
    Splits: weights.map((w) => ({ ...carried.get(w.subset), Weight: w.weight / 100, ServiceSubset: w.subset })),
  };
  // The result must be an entry every reader accepts; a failure here is a bug, said as such.
  try {
    parseEntry(next, `service-splitter "${service}"`);
  } catch (e) {
    if (e instanceof EntryError) throw new SplitChangeError("invalid", `the new splitter would not be valid: ${e.message}`);
    throw e;
  }
  return next;
}

function legsOf(raw: unknown): Json[] {
  if (!isObj(raw)) return [];
  for (const k of SPLITS_KEYS) {
    const v = raw[k];
    if (Array.isArray(v)) return v.map((leg) => (isObj(leg) ? leg : {}));
  }
  return [];
}

function parseStored(raw: unknown, kind: string, service: string, where: string): ReturnType<typeof parseEntry> {
  try {
    return parseEntry(raw, where);
  } catch (err) {
    if (err instanceof EntryError) throw new SplitChangeError("conflict", `the stored ${kind} "${service}" cannot be read (${err.message}); fix it first`);
    throw err;
  }
}

/** The stored splitter, or an error saying the stored one is broken. */
export function storedSplitter(raw: unknown, service: string, where: string): ServiceSplitter {
  const e = parseStored(raw, "service-splitter", service, where);
  if (e.kind !== "service-splitter") throw new SplitChangeError("conflict", `${where} holds a ${e.kind}, not a service-splitter`);
  return e;
}

/** The stored resolver, or an error saying the stored one is broken. */
export function storedResolver(raw: unknown, service: string, where: string): ServiceResolver {
  const e = parseStored(raw, "service-resolver", service, where);
  if (e.kind !== "service-resolver") throw new SplitChangeError("conflict", `${where} holds a ${e.kind}, not a service-resolver`);
  return e;
}
