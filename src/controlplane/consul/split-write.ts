// The admin API's weight change against Consul: read the service-splitter and service-resolver
// from /v1/config, compute the new splitter (chain/split-edit.ts) and write it back with
// `PUT /v1/config?cas=<ModifyIndex>` (cas=0 when there was none), so a change made by someone
// else in between (`consul config write`, a canary rollout) is never overwritten: Consul answers
// false, and the caller is told to look again.
import { SplitChangeError, type SubsetWeight } from "../../config/split-weights.js";
import { splitterWithWeights, storedResolver, storedSplitter } from "../chain/split-edit.js";
import { AgentError, type AgentClient } from "./client.js";

function modifyIndex(raw: unknown): number {
  const v = typeof raw === "object" && raw !== null && "ModifyIndex" in raw ? raw.ModifyIndex : undefined;
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) throw new SplitChangeError("unavailable", `Consul returned the service-splitter without a ModifyIndex; cannot write it back safely`);
  return v;
}

/** GET /v1/config/<kind>/<name>: the entry, or null when Consul has none (404). */
async function readEntry(client: AgentClient, kind: string, service: string): Promise<unknown> {
  try {
    return (await client.call("GET", `/v1/config/${kind}/${encodeURIComponent(service)}`)).body;
  } catch (e) {
    if (e instanceof AgentError && e.status === 404) return null;
    throw unavailable(e);
  }
}

function unavailable(e: unknown): SplitChangeError {
  const why = e instanceof Error ? e.message : String(e);
  return new SplitChangeError("unavailable", `Consul: ${why}`);
}

export async function writeSubsetWeightsToConsul(client: AgentClient, service: string, weights: readonly SubsetWeight[]): Promise<void> {
  const where = (kind: string) => `Consul's ${kind} "${service}"`;
  const rawResolver = await readEntry(client, "service-resolver", service);
  const rawSplitter = await readEntry(client, "service-splitter", service);
  const resolver = rawResolver === null ? null : storedResolver(rawResolver, service, where("service-resolver"));
  const current = rawSplitter === null ? null : { raw: rawSplitter, parsed: storedSplitter(rawSplitter, service, where("service-splitter")) };
  const cas = rawSplitter === null ? 0 : modifyIndex(rawSplitter);
  const next = splitterWithWeights(service, current, resolver, weights);
  let written: unknown;
  try {
    written = (await client.call("PUT", "/v1/config", { query: { cas: String(cas) }, body: next })).body;
  } catch (e) {
    throw unavailable(e);
  }
  if (written !== true) {
    throw new SplitChangeError("conflict", `the service-splitter "${service}" changed in Consul since it was read (check-and-set index ${cas}); reload the page and try again`);
  }
}
