// `meshproxy canary` flags → a validated CanaryCommand. Every mistake is a UsageError (exit 2)
// naming the flag and a good value.
import { readFileSync } from "node:fs";
import { UsageError } from "./args.js";
import { parseDurationMs } from "../config/duration.js";
import { isValidServiceName } from "../config/validate.js";
import type { CanaryPlan } from "../canary/controller.js";
import type { AgentTlsOptions } from "../controlplane/consul/client.js";
import { sslVerifyFromEnv, tokenSource } from "../controlplane/consul/env.js";

export type CanaryAction = "run" | "pause" | "resume" | "abort" | "status";

export interface CanaryCommand {
  readonly action: CanaryAction;
  readonly plan: CanaryPlan;
  readonly dataDir: string;
  readonly consul: { readonly httpAddr: string; readonly token: string | undefined; readonly tokenSource?: string | undefined; readonly datacenter: string | undefined; readonly tls: AgentTlsOptions } | null;
  readonly logJson: boolean;
}

export interface RawCanaryOptions {
  config?: string;
  service?: string;
  from?: string;
  to?: string;
  steps: string;
  interval: string;
  maxErrorRate: string;
  maxP99: string;
  minRequests: string;
  pause: boolean;
  resume: boolean;
  abort: boolean;
  status: boolean;
  restart: boolean;
  dataDir: string;
  httpAddr?: string;
  token?: string;
  tokenFile?: string;
  datacenter?: string;
  caFile?: string;
  caPath?: string;
  clientCert?: string;
  clientKey?: string;
  tlsServerName?: string;
  logJson: boolean;
}

export const CANARY_DEFAULTS = { steps: "5,25,50,100", interval: "30s", maxErrorRate: "0.01", maxP99: "500ms", minRequests: "50" } as const;

/** Percent steps: increasing, each above 0 and at most 100 with 0.01 resolution, the last 100. */
export function parseSteps(raw: string): number[] {
  const parts = raw.split(",").map((s) => s.trim());
  const steps = parts.map((s) => {
    if (!/^\d+(\.\d{1,2})?$/.test(s)) throw new UsageError(`-steps "${raw}": "${s}" is not a percentage (0.01 resolution), e.g. 5,25,50,100`);
    return Number(s);
  });
  steps.forEach((w, i) => {
    if (w <= 0 || w > 100) throw new UsageError(`-steps "${raw}": ${w} is not above 0 and at most 100`);
    if (i > 0 && w <= steps[i - 1]!) throw new UsageError(`-steps "${raw}": steps must increase (${steps[i - 1]} then ${w})`);
  });
  if (steps[steps.length - 1] !== 100) throw new UsageError(`-steps "${raw}": the last step must be 100 (the rollout is done when the canary takes all traffic)`);
  return steps;
}

/**
 * The config-entry form (`-config canary.json`): the same settings as the flags, in Consul's
 * CamelCase, e.g. {"Service": "api", "From": "v1", "To": "v2", "Steps": [5, 25, 50, 100],
 * "Interval": "30s", "MaxErrorRate": 0.01, "MaxP99": "250ms", "MinRequests": 50}. Flags given
 * on the command line win.
 */
function fromConfig(file: string, o: RawCanaryOptions, given: ReadonlySet<string>): RawCanaryOptions {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new UsageError(`-config "${file}": ${e instanceof Error ? e.message : String(e)}`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new UsageError(`-config "${file}": want a JSON object like {"Service": "api", "From": "v1", "To": "v2"}`);
  const known: Record<string, keyof RawCanaryOptions> = { Service: "service", From: "from", To: "to", Steps: "steps", Interval: "interval", MaxErrorRate: "maxErrorRate", MaxP99: "maxP99", MinRequests: "minRequests" };
  const out: RawCanaryOptions = { ...o };
  for (const [k, val] of Object.entries(v)) {
    const key = known[k];
    if (!key) throw new UsageError(`-config "${file}": unknown key ${JSON.stringify(k)} (known: ${Object.keys(known).join(", ")})`);
    if (given.has(key)) continue;
    const text = Array.isArray(val) ? val.join(",") : typeof val === "number" || typeof val === "string" ? String(val) : null;
    if (text === null) throw new UsageError(`-config "${file}": ${k} must be a string, a number or (Steps) a list of numbers`);
    Object.assign(out, { [key]: text });
  }
  return out;
}

export function toCanaryCommand(raw: RawCanaryOptions, given: ReadonlySet<string>): CanaryCommand {
  const o = raw.config !== undefined ? fromConfig(raw.config, raw, given) : raw;
  const actions = (["pause", "resume", "abort", "status"] as const).filter((a) => o[a]);
  if (actions.length > 1) throw new UsageError(`-${actions.join(" and -")}: give one action at a time`);
  const action: CanaryAction = actions[0] ?? "run";
  if (!o.service || !isValidServiceName(o.service)) throw new UsageError(`-service "${o.service ?? ""}": want the service whose subsets the rollout moves between, e.g. -service api`);
  const needsSubsets = action === "run";
  for (const [flag, v] of [["-from", o.from], ["-to", o.to]] as const) {
    if (v === undefined) {
      if (needsSubsets) throw new UsageError(`${flag} is required: a subset of ${o.service}'s service-resolver, e.g. -from v1 -to v2`);
    } else if (!isValidServiceName(v)) throw new UsageError(`${flag} "${v}": not a subset name (letters, digits, - _)`);
  }
  if (needsSubsets && o.from === o.to) throw new UsageError(`-from and -to are both "${o.from}": a canary moves traffic between two subsets`);
  const intervalMs = parseDurationMs(o.interval);
  if (intervalMs === null || intervalMs < 100) throw new UsageError(`-interval "${o.interval}": want a duration of at least 100ms, e.g. 30s`);
  const maxErrorRate = Number(o.maxErrorRate);
  if (o.maxErrorRate.trim() === "" || !Number.isFinite(maxErrorRate) || maxErrorRate < 0 || maxErrorRate > 1) throw new UsageError(`-max-error-rate "${o.maxErrorRate}": want a share from 0 to 1, e.g. 0.01 for 1%`);
  const maxP99Ms = parseDurationMs(o.maxP99);
  if (maxP99Ms === null || maxP99Ms <= 0) throw new UsageError(`-max-p99 "${o.maxP99}": want a duration, e.g. 250ms`);
  const minRequests = Number(o.minRequests);
  if (!/^\d+$/.test(o.minRequests.trim()) || !Number.isSafeInteger(minRequests) || minRequests < 1) throw new UsageError(`-min-requests "${o.minRequests}": want a whole number of requests, at least 1`);
  let token = o.token;
  if (o.tokenFile) {
    try {
      token = readFileSync(o.tokenFile, "utf8").trim();
    } catch (e) {
      throw new UsageError(`-token-file "${o.tokenFile}": ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  return {
    action,
    plan: { service: o.service, from: o.from ?? "", to: o.to ?? "", steps: parseSteps(o.steps), intervalMs, thresholds: { maxErrorRate, maxP99Ms, minRequests }, restart: o.restart },
    dataDir: o.dataDir,
    consul: o.httpAddr
      ? {
          httpAddr: o.httpAddr,
          token,
          tokenSource: tokenSource(o),
          datacenter: o.datacenter,
          tls: {
            ...(o.caFile ? { caFile: o.caFile } : {}),
            ...(o.caPath ? { caPath: o.caPath } : {}),
            ...(o.clientCert ? { clientCert: o.clientCert } : {}),
            ...(o.clientKey ? { clientKey: o.clientKey } : {}),
            ...(o.tlsServerName ? { serverName: o.tlsServerName } : {}),
            verify: sslVerifyFromEnv(),
          },
        }
      : null,
    logJson: o.logJson,
  };
}
