// A change of a service-splitter's weights, as the admin API's live traffic page asks for it
// (`POST /splits/api?weights=v1:90,v2:10`). The syntax and the sum are checked here, before any
// control plane is asked; whether the subsets exist is the control plane's to say (only it knows
// the service-resolver). Weights are in 1/10000ths, as the Snapshot's splits are: Consul keeps
// two decimals of a percent.

export interface SubsetWeight {
  /** A subset the service's resolver defines. */
  readonly subset: string;
  /** 0–10000 (0.01 % resolution). */
  readonly weight: number;
}

/** Why a weight change was refused; the admin API maps each to an HTTP status. */
export type SplitChangeRefusal =
  /** The request itself is wrong: syntax, sum, an unknown subset (400). */
  | "invalid"
  /** The service is not routed by this sidecar (404). */
  | "not_found"
  /** The stored entries do not allow it, or changed under us (409). */
  | "conflict"
  /** This control plane cannot write config entries (501). */
  | "unsupported"
  /** The control plane could not be reached or refused the write (502). */
  | "unavailable";

export class SplitChangeError extends Error {
  constructor(
    readonly refusal: SplitChangeRefusal,
    message: string,
  ) {
    super(message);
    this.name = "SplitChangeError";
  }
}

/** A Consul subset name: what a resolver's `Subsets` key may be (DNS-label-like). */
const SUBSET_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i;
/** A percent with at most two decimals, as Consul stores weights. */
const PERCENT = /^(100(\.0{1,2})?|[0-9]{1,2}(\.[0-9]{1,2})?)$/;

/**
 * Parses `v1:90,v2:10` (percents, up to two decimals) into weights summing to exactly 100 %.
 * Every subset appears once; the list replaces the splitter's legs whole.
 */
export function parseSubsetWeights(raw: string | null): SubsetWeight[] {
  const example = "e.g. ?weights=v1:90,v2:10";
  if (raw === null || raw.trim() === "") throw new SplitChangeError("invalid", `no weights given: want ?weights=<subset>:<percent>,... summing to 100, ${example}`);
  const out: SubsetWeight[] = [];
  const seen = new Set<string>();
  for (const part of raw.split(",")) {
    const colon = part.indexOf(":");
    const subset = colon < 0 ? part.trim() : part.slice(0, colon).trim();
    const percent = colon < 0 ? "" : part.slice(colon + 1).trim();
    if (colon < 0 || !SUBSET_NAME.test(subset)) throw new SplitChangeError("invalid", `weights: "${part.slice(0, 80)}" is not <subset>:<percent> (${example})`);
    if (!PERCENT.test(percent)) throw new SplitChangeError("invalid", `weights: ${subset}: "${percent.slice(0, 20)}" is not a percent from 0 to 100 with at most two decimals`);
    if (seen.has(subset)) throw new SplitChangeError("invalid", `weights: subset "${subset}" is given twice`);
    seen.add(subset);
    // Integer hundredths of a percent: "12.5" → 1250, with no float rounding on the way.
    const [whole, frac = ""] = percent.split(".");
    out.push({ subset, weight: Number(whole) * 100 + Number(frac.padEnd(2, "0")) });
  }
  const total = out.reduce((s, w) => s + w.weight, 0);
  if (total !== 10_000) throw new SplitChangeError("invalid", `weights: they sum to ${total / 100}, not 100 (a service-splitter's weights must add up to exactly 100)`);
  return out;
}

/** Writes a service-splitter's weights through the control plane the proxy runs on. */
export interface SplitWriter {
  /** Replaces the legs of `service`'s splitter with these subsets and weights; resolves once stored. */
  setSubsetWeights(service: string, weights: readonly SubsetWeight[]): Promise<void>;
}
