// POST /splits/<service>?weights=v1:90,v2:10 — the live traffic page's weight control. The admin
// server has already refused what a cross-origin page could send (server.ts, browser-guard.ts);
// here the change itself is checked (a service this sidecar routes, weights summing to 100) and
// handed to the control plane the sidecar runs on, which checks the subsets against the resolver
// and stores the splitter. The new weights then arrive as any change does: a new Snapshot.
import type { Snapshot } from "../config/snapshot.js";
import { isValidServiceName } from "../config/validate.js";
import { parseSubsetWeights, SplitChangeError, type SplitChangeRefusal, type SplitWriter } from "../config/split-weights.js";

export type SplitResult = "stored" | SplitChangeRefusal | "no_snapshot" | "error";

export const SPLIT_RESULTS: readonly SplitResult[] = ["stored", "invalid", "not_found", "conflict", "unsupported", "unavailable", "no_snapshot", "error"];

const STATUS: Readonly<Record<SplitResult, number>> = {
  stored: 202,
  invalid: 400,
  not_found: 404,
  conflict: 409,
  unsupported: 501,
  unavailable: 502,
  no_snapshot: 503,
  error: 500,
};

export interface SplitTarget {
  /** What is read of the Snapshot: which control plane made it, and the upstreams it routes. */
  readonly snapshot: Pick<Snapshot, "source" | "upstreams"> | null;
  readonly splitWriter?: SplitWriter | null;
}

export interface SplitAnswer {
  readonly status: number;
  readonly result: SplitResult;
  readonly message: string;
  readonly weights?: Readonly<Record<string, number>>;
}

/** Why a control plane of this kind keeps its weights read-only, in words for the operator. */
function readOnlyReason(kind: string): string {
  if (kind === "static") {
    return "this sidecar runs from a static configuration file (-config-file), which is the source of truth for its configuration; change the file instead";
  }
  return `the "${kind}" control plane cannot write config entries; change the service-splitter where that control plane reads it`;
}

/** Whether the page can offer its weight control. */
export function writability(t: SplitTarget): { ok: true } | { ok: false; reason: string } {
  if (!t.snapshot) return { ok: false, reason: "no configuration yet" };
  return t.splitWriter ? { ok: true } : { ok: false, reason: readOnlyReason(t.snapshot.source) };
}

function answer(result: SplitResult, message: string): SplitAnswer {
  return { status: STATUS[result], result, message };
}

export async function changeSplit(t: SplitTarget, service: string, rawWeights: string | null): Promise<SplitAnswer> {
  const s = t.snapshot;
  if (!s) return answer("no_snapshot", "the sidecar has no configuration yet; try again once it is ready");
  if (!t.splitWriter) return answer("unsupported", readOnlyReason(s.source));
  if (!isValidServiceName(service)) return answer("invalid", `"${service.slice(0, 100)}" is not a service name: want POST /splits/<service>?weights=<subset>:<percent>,...`);
  const upstream = s.upstreams.find((u) => u.name === service);
  if (!upstream?.routes || upstream.routes.routes.length === 0) {
    const why = upstream ? `its protocol is ${upstream.protocol}: only http, http2 and grpc upstreams are split` : "it is not an upstream of this sidecar";
    return answer("not_found", `"${service}" is not a service this sidecar routes (${why}); GET /traffic.json lists the ones it does`);
  }
  try {
    const weights = parseSubsetWeights(rawWeights);
    await t.splitWriter.setSubsetWeights(service, weights);
    const shown = Object.fromEntries(weights.map((w) => [w.subset, w.weight / 100]));
    return {
      ...answer("stored", `service-splitter "${service}" stored in the ${s.source} control plane (${weights.map((w) => `${w.subset} ${w.weight / 100} %`).join(", ")}); it applies with the next configuration, within about a second`),
      weights: shown,
    };
  } catch (e) {
    if (e instanceof SplitChangeError) return answer(e.refusal, e.message);
    // The store itself failed (a state directory that cannot be written, its lock held too long).
    return answer("error", `storing the service-splitter "${service}" failed: ${e instanceof Error ? e.message : String(e)}`);
  }
}
