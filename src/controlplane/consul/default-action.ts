// What the agent does with a caller no intention matches: the Snapshot's default action must be
// exactly the answer of the agent's own authorization.
//
// The agent decides it in AgentConnectAuthorize (agent/agent_endpoint.go, Consul 1.x):
//   1. `default_intention_policy` in the agent's config, when set, wins ("Default intention policy");
//   2. otherwise the token's ACL authorizer: with ACLs disabled every token is allowed
//      everything, so allow; with ACLs enabled `acl.default_policy` (a policy can never change
//      IntentionDefaultAllow: acl/policy_authorizer.go always defers to the default).
// `X-Consul-Default-ACL-Policy` carries only `acl.default_policy`, and does so even when ACLs are
// disabled: it is wrong both ways, so it is not used.
//
// Two ways to learn it, the first authoritative:
//   - ask /v1/agent/connect/authorize about a caller that no intention matches: the answer is
//     the default, for this agent and this token (service:write on the service, which a sidecar
//     has: it needs it for its leaf);
//   - read /v1/agent/self's DebugConfig (DefaultIntentionPolicy, ACLResolverSettings), which
//     needs agent:read.
// If neither answers, the caller decides (deny).
import type { AgentClient } from "./client.js";
import type { WireIntention } from "./wire.js";
import { WireError } from "./wire.js";
import { serviceSpiffeId } from "../../identity/spiffe.js";

export type DefaultAction = "allow" | "deny";

export interface LearnedDefault {
  readonly action: DefaultAction;
  /** How it was learned, for the log: `authorize` or `agent-self`. */
  readonly from: "authorize" | "agent-self";
}

export interface ProbeContext {
  /** This proxy's service: the authorize Target. */
  readonly service: string;
  readonly trustDomain: string;
  readonly datacenter: string;
  readonly namespace: string;
  readonly partition: string;
  /** The intentions in force, to pick a probe caller none of them matches. */
  readonly intentions: readonly WireIntention[];
}

export class DefaultActionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DefaultActionError";
  }
}

/** A caller name no deployment uses; checked against the intentions in force all the same. */
const PROBE_SERVICE = "meshproxy-default-action-probe";
const PROBE_NAMESPACE = "meshproxy-default-action-probe";

function matchesProbe(it: WireIntention, caller: { service: string; namespace: string; partition: string }): boolean {
  if (it.sourcePeer !== "") return false;
  if (it.sourcePartition !== caller.partition) return false;
  if (it.sourceNamespace !== "*" && it.sourceNamespace !== caller.namespace) return false;
  return it.source === "*" || it.source === caller.service;
}

/**
 * A caller no intention matches: our own namespace first (exactly a local caller), then a
 * namespace no intention names. Null when wildcards cover every caller in the partition.
 */
export function probeCaller(ctx: ProbeContext): { service: string; namespace: string; partition: string } | null {
  for (const namespace of [ctx.namespace, PROBE_NAMESPACE]) {
    const caller = { service: PROBE_SERVICE, namespace, partition: ctx.partition };
    if (!ctx.intentions.some((it) => matchesProbe(it, caller))) return caller;
  }
  return null;
}

/** `{Authorized, Reason}`; anything else is a broken answer. */
export function parseAuthorize(body: unknown): { authorized: boolean; reason: string } {
  const ep = "/v1/agent/connect/authorize";
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw new WireError(ep, "$", "want a JSON object");
  const authorized: unknown = Reflect.get(body, "Authorized");
  const reason: unknown = Reflect.get(body, "Reason");
  if (typeof authorized !== "boolean") throw new WireError(ep, "$.Authorized", "want true or false");
  return { authorized, reason: typeof reason === "string" ? reason : "" };
}

function field(o: unknown, k: string): unknown {
  return typeof o === "object" && o !== null && !Array.isArray(o) ? Reflect.get(o, k) : undefined;
}

/** The agent's rule applied to its DebugConfig; throws when the config does not settle it. */
export function defaultFromAgentSelf(body: unknown): DefaultAction {
  const ep = "/v1/agent/self";
  const debug = field(body, "DebugConfig");
  if (typeof debug !== "object" || debug === null) throw new WireError(ep, "$.DebugConfig", "missing (an agent older than 1.4?)");
  const dip = field(debug, "DefaultIntentionPolicy");
  if (dip === "allow" || dip === "deny") return dip;
  if (dip !== undefined && dip !== null && dip !== "") throw new WireError(ep, "$.DebugConfig.DefaultIntentionPolicy", "want allow, deny or empty");
  // Consul 1.11+ nests the ACL settings; older agents had them at the top of DebugConfig.
  const acl = field(debug, "ACLResolverSettings") ?? debug;
  const enabled = field(acl, "ACLsEnabled");
  if (enabled === false) return "allow";
  if (enabled !== true) throw new WireError(ep, "$.DebugConfig.ACLResolverSettings.ACLsEnabled", "missing");
  const policy = field(acl, "ACLDefaultPolicy");
  if (policy === "allow" || policy === "deny") return policy;
  throw new WireError(ep, "$.DebugConfig.ACLResolverSettings.ACLDefaultPolicy", "want allow or deny");
}

async function fromAuthorize(client: AgentClient, ctx: ProbeContext, signal: AbortSignal): Promise<DefaultAction> {
  const caller = probeCaller(ctx);
  if (!caller) throw new DefaultActionError("wildcard intentions match every caller, so no probe caller gets the default");
  const uri = serviceSpiffeId({ trustDomain: ctx.trustDomain, partition: caller.partition, namespace: caller.namespace, datacenter: ctx.datacenter, service: caller.service });
  const res = await client.call("POST", "/v1/agent/connect/authorize", {
    body: { Target: ctx.service, ClientCertURI: uri, ClientCertSerial: "" },
    ...(ctx.namespace !== "default" || ctx.partition !== "default" ? { query: { ns: ctx.namespace, partition: ctx.partition } } : {}),
    signal,
  });
  const answer = parseAuthorize(res.body);
  // The agent's intentions may be newer than ours: if one matched the probe, this is not the default.
  if (answer.reason.startsWith("Matched ")) throw new DefaultActionError(`the probe caller matched an intention on the agent (${answer.reason})`);
  return answer.authorized ? "allow" : "deny";
}

async function fromAgentSelf(client: AgentClient, signal: AbortSignal): Promise<DefaultAction> {
  const res = await client.call("GET", "/v1/agent/self", { signal });
  return defaultFromAgentSelf(res.body);
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Throws DefaultActionError naming why each way failed. */
export async function learnDefaultAction(client: AgentClient, ctx: ProbeContext, stop: AbortSignal, timeoutMs = 10_000): Promise<LearnedDefault> {
  const reasons: string[] = [];
  try {
    return { action: await fromAuthorize(client, ctx, AbortSignal.any([stop, AbortSignal.timeout(timeoutMs)])), from: "authorize" };
  } catch (e) {
    reasons.push(`POST /v1/agent/connect/authorize: ${messageOf(e)}`);
  }
  try {
    return { action: await fromAgentSelf(client, AbortSignal.any([stop, AbortSignal.timeout(timeoutMs)])), from: "agent-self" };
  } catch (e) {
    reasons.push(`GET /v1/agent/self: ${messageOf(e)}`);
  }
  throw new DefaultActionError(`cannot learn the agent's default intention action (${reasons.join("; ")})`);
}
