// `meshproxy canary`: runs a rollout (exit 0 when the canary takes 100 %, 1 when it did not:
// rolled back, aborted, stopped by a conflicting edit, interrupted), or acts on the one recorded
// in the splitter (-pause, -resume, -abort, -status). Flags are checked in canary-args.ts (2).
import { createLogger, type Logger } from "../telemetry/log.js";
import { openStateDir, StateError } from "../controlplane/dev/state.js";
import { UnsafeStateDirError } from "../controlplane/dev/permissions.js";
import { AgentClient } from "../controlplane/consul/client.js";
import { loadUndici } from "../http/undici.js";
import { CanaryController, summaryTable } from "../canary/controller.js";
import { SubsetReader, type TargetDirectory } from "../canary/observe.js";
import { ControlPlaneUnavailable, SplitterError, type SplitterStore } from "../canary/store.js";
import { DevSplitterStore, DevTargets } from "../canary/dev.js";
import { ConsulSplitterStore, ConsulTargets } from "../canary/consul.js";
import { viewSplitter, withStatus, withWeights, type RolloutStatus } from "../canary/splitter.js";
import { handleShutdownSignals } from "./signals.js";
import type { CanaryCommand } from "./canary-args.js";

function fail(message: string, code: number): number {
  process.stderr.write(`meshproxy: ${message}\n`);
  return code;
}

export async function runCanary(cmd: CanaryCommand, out = (s: string) => void process.stdout.write(s)): Promise<number> {
  const log = createLogger({ json: cmd.logJson }).child("canary");
  let client: AgentClient | null = null;
  try {
    await loadUndici();
    let store: SplitterStore;
    let targets: TargetDirectory;
    if (cmd.consul) {
      const c = cmd.consul;
      client = new AgentClient({ httpAddr: c.httpAddr, ...(c.token ? { token: c.token } : {}), ...(c.tokenSource ? { tokenSource: c.tokenSource } : {}), ...(c.datacenter ? { datacenter: c.datacenter } : {}), tls: c.tls });
      store = new ConsulSplitterStore(client, cmd.plan.service);
      targets = new ConsulTargets(client);
    } else {
      await openStateDir(cmd.dataDir);
      store = new DevSplitterStore(cmd.dataDir, cmd.plan.service);
      targets = new DevTargets(cmd.dataDir);
    }
    if (cmd.action !== "run") return await act(cmd, store, out);
    const problem = await checkSubsets(cmd, store, log);
    if (problem) return fail(problem, 2);
    const stop = new AbortController();
    const signals = handleShutdownSignals(log, () => stop.abort());
    try {
      const result = await new CanaryController(cmd.plan, { store, reader: new SubsetReader(targets, cmd.plan.service), log, signal: stop.signal }).run();
      out(summaryTable(cmd.plan, result));
      return result.outcome === "done" ? 0 : 1;
    } finally {
      signals.dispose();
    }
  } catch (e) {
    if (e instanceof UnsafeStateDirError) return fail(e.message, 2);
    if (e instanceof StateError || e instanceof SplitterError || e instanceof ControlPlaneUnavailable) return fail(e.message, 1);
    throw e;
  } finally {
    await client?.close();
  }
}

/** -from and -to must be subsets the resolver defines, as Consul requires of a splitter. Waits out an outage. */
async function checkSubsets(cmd: CanaryCommand, store: SplitterStore, log: Logger): Promise<string | null> {
  let delay = 500;
  for (;;) {
    try {
      const subsets = await store.subsets();
      const missing = [cmd.plan.from, cmd.plan.to].filter((s) => !subsets?.includes(s));
      if (missing.length === 0) return null;
      const defined = subsets === null ? `there is no service-resolver "${cmd.plan.service}"` : `its service-resolver defines ${subsets.length > 0 ? subsets.join(", ") : "no subsets"}`;
      return `-from/-to: ${missing.join(" and ")} ${missing.length > 1 ? "are not subsets" : "is not a subset"} of ${cmd.plan.service} (${defined}); write a service-resolver with Subsets for both first`;
    } catch (e) {
      if (!(e instanceof ControlPlaneUnavailable)) throw e;
      log.warn("control plane unavailable; waiting before starting the rollout", { where: store.where, error: e.message, retry_in_ms: delay });
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10_000);
    }
  }
}

/** -pause, -resume, -abort, -status: one CAS edit of the splitter, re-read and retried when another write lands first. */
async function act(cmd: CanaryCommand, store: SplitterStore, out: (s: string) => void): Promise<number> {
  const service = cmd.plan.service;
  for (let attempt = 1; attempt <= 5; attempt++) {
    const cur = await store.read();
    if (!cur) return fail(`there is no service-splitter "${service}" in ${store.where}, so no rollout to ${cmd.action}`, 1);
    const v = viewSplitter(cur.raw, service);
    const r = v.rollout;
    if (!r) return fail(`service-splitter "${service}" records no rollout (no meshproxy-canary-status in its Meta)`, 1);
    if (cmd.action === "status") {
      out(`${service}: ${r.from} → ${r.to} ${r.status}, ${r.to} at ${v.weights.get(r.to) ?? 0}% (steps ${r.steps}; updated ${r.updated}: ${r.reason})\n`);
      return 0;
    }
    const now = new Date();
    let next: Record<string, unknown>;
    let to: RolloutStatus;
    if (cmd.action === "abort") {
      if (r.status === "done" || r.status === "rolled-back" || r.status === "aborted") return fail(`the rollout ${r.from} → ${r.to} is already ${r.status}; nothing to abort`, 1);
      to = "aborted";
      next = withWeights(cur.raw, service, { ...r, status: to, reason: `aborted with -abort at ${now.toISOString()}`, updated: now.toISOString() }, 0);
    } else {
      const want: RolloutStatus = cmd.action === "pause" ? "running" : "paused";
      if (r.status !== want) return fail(`the rollout ${r.from} → ${r.to} is ${r.status}; -${cmd.action} acts on a ${want} one`, 1);
      to = cmd.action === "pause" ? "paused" : "running";
      next = withStatus(cur.raw, service, to, `${cmd.action === "pause" ? "paused with -pause" : "resumed with -resume"} at ${now.toISOString()}`, now);
    }
    if (await store.write(next, cur.version)) {
      out(`${service}: rollout ${r.from} → ${r.to} ${to}${to === "aborted" ? `; ${r.from} takes 100% again` : ""}\n`);
      return 0;
    }
  }
  return fail(`service-splitter "${service}" kept changing (CAS failed 5 times); try again`, 1);
}
