// The rollout loop: set the canary's weight, watch one window of what the callers' sidecars saw
// of it, decide, and either move to the next step or write the split back to 100 % `from` at
// once. Every decision is one log line with the figures it was based on.
//
// The state is the splitter (see splitter.ts); before each action the loop reads it again and
// writes only with check-and-set on the version it read, so:
// - a -pause, -resume or -abort run from elsewhere is seen at the next decision;
// - a human edit of the weights (or a deleted splitter) stops the loop with a report, and the
//   loop never writes over it, not even to roll back;
// - a control plane that does not answer pauses the rollout (retried with backoff, logged) and
//   the step's window starts over once it answers, instead of failing it.
import type { Logger } from "../telemetry/log.js";
import { judge, errorRate, formatRate, formatMs, type Thresholds, type WindowFigures } from "./decision.js";
import { SubsetWindow, type SubsetReader } from "./observe.js";
import { ControlPlaneUnavailable, SplitterError, type SplitterRecord, type SplitterStore } from "./store.js";
import { viewSplitter, withWeights, type Rollout, type RolloutStatus } from "./splitter.js";

export interface CanaryPlan {
  readonly service: string;
  readonly from: string;
  readonly to: string;
  /** Percent of traffic to `to` at each step, increasing, the last 100. */
  readonly steps: readonly number[];
  readonly intervalMs: number;
  readonly thresholds: Thresholds;
  /** Start over even if the splitter records this rollout as rolled back or aborted. */
  readonly restart: boolean;
}

export interface ControllerDeps {
  readonly store: SplitterStore;
  readonly reader: SubsetReader;
  readonly log: Logger;
  /** Ends the loop where it is (SIGINT/SIGTERM): the state stays in the splitter for a restart. */
  readonly signal: AbortSignal;
  readonly now?: () => Date;
}

export type Outcome = "done" | "rolled-back" | "aborted" | "conflict" | "refused" | "interrupted";

export interface StepRecord {
  readonly weight: number;
  readonly windowMs: number;
  readonly figures: WindowFigures;
  readonly decision: "pass" | "fail" | "wait" | "paused" | "aborted" | "conflict" | "interrupted";
  readonly reason: string;
}

export interface RolloutResult {
  readonly outcome: Outcome;
  /** One line: what happened and what to do next. */
  readonly message: string;
  readonly steps: readonly StepRecord[];
}

class Stop extends Error {
  constructor(
    readonly outcome: Outcome,
    message: string,
  ) {
    super(message);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });
}

export class CanaryController {
  private readonly steps: StepRecord[] = [];
  private readonly now: () => Date;
  /** The version of the splitter this process last read or wrote, and the weight it holds. */
  private known: SplitterRecord | null = null;
  private readonly reported = new Set<string>();
  /** Set when a read had to wait for the control plane: the step's window then starts over. */
  private outage = false;

  constructor(
    private readonly plan: CanaryPlan,
    private readonly deps: ControllerDeps,
  ) {
    this.now = deps.now ?? (() => new Date());
  }

  async run(): Promise<RolloutResult> {
    try {
      return await this.rollout();
    } catch (e) {
      if (e instanceof Stop) return { outcome: e.outcome, message: e.message, steps: this.steps };
      // The control plane answered with something unusable (a malformed splitter, a refused
      // token or entry): nothing more is written, and the report says what.
      if (e instanceof SplitterError) return { outcome: "refused", message: `${e.message}; nothing more was written`, steps: this.steps };
      throw e;
    }
  }

  private get log(): Logger {
    return this.deps.log;
  }

  private rolloutRecord(status: RolloutStatus, reason: string): Rollout {
    const p = this.plan;
    return { status, from: p.from, to: p.to, steps: p.steps.join(","), reason, updated: this.now().toISOString() };
  }

  private checkInterrupted(): void {
    if (this.deps.signal.aborted) {
      throw new Stop("interrupted", `stopped by a signal; the rollout stays recorded in the splitter at its current step: run the same command to resume it, or -abort to roll back`);
    }
  }

  /** Reads the splitter; while the control plane does not answer, waits with backoff (the rollout is paused). */
  private async read(interruptible = true): Promise<SplitterRecord | null> {
    let delay = 500;
    let failures = 0;
    for (;;) {
      if (interruptible) this.checkInterrupted();
      try {
        const r = await this.deps.store.read();
        if (failures > 0) this.outage = true;
        if (failures > 0) this.log.info("control plane answers again; the rollout resumes and this step's window starts over", { where: this.deps.store.where, failed_reads: failures });
        return r;
      } catch (e) {
        if (!(e instanceof ControlPlaneUnavailable)) throw e;
        failures++;
        this.log.warn("control plane unavailable; the rollout is paused (nothing is changed) until it answers", { where: this.deps.store.where, error: e.message, retry_in_ms: delay, attempt: failures });
        await sleep(delay, interruptible ? this.deps.signal : new AbortController().signal);
        delay = Math.min(delay * 2, Math.max(this.plan.intervalMs, 10_000));
      }
    }
  }

  /** A CAS write; an unavailable control plane is retried with backoff. False: someone else wrote first. */
  private async write(raw: Record<string, unknown>, version: string | null): Promise<boolean> {
    let delay = 500;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.deps.store.write(raw, version);
      } catch (e) {
        if (!(e instanceof ControlPlaneUnavailable)) throw e;
        this.log.warn("control plane unavailable; retrying the write", { where: this.deps.store.where, error: e.message, retry_in_ms: delay, attempt });
        // A rollback is retried even after a signal: leaving a bad canary in place is worse.
        await sleep(delay, new AbortController().signal);
        delay = Math.min(delay * 2, 10_000);
      }
    }
  }

  /**
   * Writes `weight` with the rollout's status, with CAS on the version just read and compared: a
   * -pause or -resume that lands in between makes the write fail and is then seen by compare();
   * a human edit stops the loop there. `duringPause` says what a paused rollout does: wait for
   * -resume (a step forward), or go ahead (a rollback, which always wins).
   */
  private async setWeight(weight: number, status: RolloutStatus, reason: string, duringPause: "wait" | "proceed"): Promise<void> {
    // A rollback goes through even after a signal: leaving a failing canary in place is worse.
    const interruptible = duringPause === "wait";
    for (let attempt = 1; attempt <= 5; attempt++) {
      const current = await this.read(interruptible);
      if (this.known !== null || current !== null) {
        const c = this.known === null ? "same" : this.compare(current);
        if (c === "paused" && duringPause === "wait") {
          await this.waitWhilePaused();
          continue;
        }
      }
      const raw = withWeights(current?.raw ?? null, this.plan.service, this.rolloutRecord(status, reason), weight);
      if (!(await this.write(raw, current?.version ?? null))) continue;
      // Read back for the new version (Consul's ModifyIndex is the server's), and check it is ours.
      const after = await this.read(interruptible);
      const v = after ? viewSplitter(after.raw, this.plan.service) : null;
      if (!after || v?.rollout?.status !== status || (v.weights.get(this.plan.to) ?? 0) !== weight) {
        throw new Stop("conflict", `service-splitter "${this.plan.service}" changed right after this process wrote ${this.plan.to}=${weight}%; stopping without writing again. Check the split, then -abort or start again`);
      }
      this.known = after;
      return;
    }
    throw new Stop("conflict", `service-splitter "${this.plan.service}" kept changing under this process (CAS on its ModifyIndex failed 5 times); nothing was overwritten. Check the split, then -abort or start again`);
  }

  private async rollout(): Promise<RolloutResult> {
    const p = this.plan;
    const first = await this.read();
    let startIndex = 0;
    const view = first ? viewSplitter(first.raw, p.service) : null;
    const mine = view?.rollout && view.rollout.from === p.from && view.rollout.to === p.to ? view.rollout : null;
    if (view?.rollout && !mine && (view.rollout.status === "running" || view.rollout.status === "paused")) {
      throw new Stop("refused", `service-splitter "${p.service}" records another rollout (${view.rollout.from} → ${view.rollout.to}, ${view.rollout.status}); finish or -abort it first`);
    }
    if (mine && !p.restart) {
      if (mine.status === "done") return { outcome: "done", message: `${p.to} already takes 100% of ${p.service} (rollout done at ${mine.updated})`, steps: this.steps };
      if (mine.status === "rolled-back" || mine.status === "aborted") {
        throw new Stop("refused", `this rollout was ${mine.status} at ${mine.updated} (${mine.reason}); to try ${p.to} again, run it with -restart`);
      }
    }
    if (view && view.foreign.length > 0) throw new Stop("refused", `service-splitter "${p.service}" also sends traffic elsewhere (${view.foreign.join(", ")}); a canary moves traffic between two subsets of one service only`);
    for (const [subset, w] of view?.weights ?? []) {
      if (w > 0 && subset !== p.from && subset !== p.to) throw new Stop("refused", `service-splitter "${p.service}" sends ${w}% to subset ${JSON.stringify(subset)}, neither -from nor -to; move it to ${p.from} first`);
    }
    this.known = first;
    if (mine && (mine.status === "running" || mine.status === "paused") && !p.restart) {
      const at = view!.weights.get(p.to) ?? 0;
      startIndex = Math.max(0, p.steps.findIndex((s) => s >= at));
      this.log.info("resuming the rollout recorded in the splitter", { service: p.service, from: p.from, to: p.to, weight: at, status: mine.status, step: startIndex + 1 });
      if (mine.status === "paused") await this.waitWhilePaused();
      if (p.steps[startIndex] !== at) await this.setWeight(p.steps[startIndex]!, "running", `step ${startIndex + 1}: ${p.to} at ${p.steps[startIndex]}%`, "wait");
    } else {
      this.log.info("starting the rollout", { service: p.service, from: p.from, to: p.to, steps: p.steps.join(","), interval_ms: p.intervalMs, max_error_rate: p.thresholds.maxErrorRate, max_p99_ms: p.thresholds.maxP99Ms, min_requests: p.thresholds.minRequests });
      // A new rollout takes over the splitter as it was read (a finished rollout's Meta included).
      this.known = null;
      await this.setWeight(p.steps[0]!, "running", `step 1: ${p.to} at ${p.steps[0]}%`, "wait");
    }
    for (let i = startIndex; i < p.steps.length; i++) {
      const weight = p.steps[i]!;
      if (i > startIndex) {
        await this.setWeight(weight, "running", `step ${i + 1}: ${p.to} at ${weight}%`, "wait");
        this.log.info("canary step", { step: i + 1, weight, from: p.from, to: p.to });
      }
      await this.watchStep(i, weight);
    }
    await this.setWeight(100, "done", `${p.to} at 100%: every step passed`, "wait");
    this.log.info("rollout done", { service: p.service, to: p.to, weight: 100 });
    return { outcome: "done", message: `${p.to} takes 100% of ${p.service}: every step passed`, steps: this.steps };
  }

  /** Watches one step until its window passes; a failing window rolls back and stops. */
  private async watchStep(i: number, weight: number): Promise<void> {
    const p = this.plan;
    this.outage = false;
    let window = new SubsetWindow(await this.sample());
    for (;;) {
      await sleep(p.intervalMs, this.deps.signal);
      this.checkInterrupted();
      window.add(await this.sample());
      const figures = window.figures(p.to);
      const windowMs = Date.now() - window.startedAt;
      const verdict = judge(figures, p.thresholds);
      const control = this.compare(await this.read());
      if (this.outage || control === "changed") {
        this.outage = false;
        window = new SubsetWindow(await this.sample());
        continue;
      }
      if (control === "paused") {
        this.record(weight, windowMs, figures, "paused", "paused with -pause; holding the split until -resume");
        await this.waitWhilePaused();
        window = new SubsetWindow(await this.sample());
        continue;
      }
      this.record(weight, windowMs, figures, verdict.kind, verdict.reason, i + 1);
      if (verdict.kind === "wait") continue;
      if (verdict.kind === "pass") return;
      await this.rollback(`step ${i + 1} (${weight}%): ${verdict.reason}`);
    }
  }

  private async sample() {
    const s = await this.deps.reader.sample();
    for (const problem of s.problems) {
      if (this.reported.has(problem)) continue;
      this.reported.add(problem);
      this.log.warn("sidecar figures unavailable", { problem });
    }
    if (s.read === 0 && !this.reported.has("no-sidecars")) {
      this.reported.add("no-sidecars");
      this.log.warn("no sidecar could be read; no verdict until one can", { service: this.plan.service });
    }
    return s;
  }

  /**
   * What changed in the splitter since this process last saw it. A change of the weights, of
   * the subsets or a deletion is a human's: stop. -pause and -resume change only the status;
   * -abort writes 100 % `from` with status aborted.
   */
  private compare(current: SplitterRecord | null): "same" | "paused" | "changed" {
    const p = this.plan;
    if (current === null) throw new Stop("conflict", `service-splitter "${p.service}" was deleted during the rollout; nothing was written (deleting it sends traffic to every instance). Write the split you want, then start again`);
    if (this.known && current.version === this.known.version) return "same";
    const v = viewSplitter(current.raw, p.service);
    const r = v.rollout;
    if (r && r.from === p.from && r.to === p.to && r.status === "aborted") {
      this.record(v.weights.get(p.to) ?? 0, 0, { requests: 0, errors: 0, p99Ms: null }, "aborted", r.reason);
      throw new Stop("aborted", `aborted with -abort: ${p.from} takes 100% again (${r.reason})`);
    }
    const was = this.known ? viewSplitter(this.known.raw, p.service) : null;
    const sameWeights = was !== null && [p.from, p.to].every((s) => (was.weights.get(s) ?? 0) === (v.weights.get(s) ?? 0)) && v.weights.size === was.weights.size;
    if (!r || r.from !== p.from || r.to !== p.to || !sameWeights || (r.status !== "running" && r.status !== "paused")) {
      throw new Stop("conflict", `service-splitter "${p.service}" was edited by someone else during the rollout (now ${[...v.weights].map(([s, w]) => `${s || p.service}=${w}%`).join(", ")}${r ? `, status ${r.status}` : ", no rollout recorded"}); stopping without writing. Check the split, then -abort or start again`);
    }
    this.known = current;
    return r.status === "paused" ? "paused" : "changed";
  }

  private async waitWhilePaused(): Promise<void> {
    this.log.info("rollout paused; holding the split until -resume (or -abort)", { service: this.plan.service, to: this.plan.to, weight: viewSplitter(this.known!.raw, this.plan.service).weights.get(this.plan.to) ?? 0 });
    for (;;) {
      await sleep(Math.min(this.plan.intervalMs, 1000), this.deps.signal);
      const c = this.compare(await this.read());
      if (c === "changed" || (c === "same" && viewSplitter(this.known!.raw, this.plan.service).rollout?.status === "running")) {
        this.log.info("rollout resumed; this step's window starts over", { service: this.plan.service });
        return;
      }
    }
  }

  private async rollback(reason: string): Promise<never> {
    const p = this.plan;
    this.log.warn("rolling back", { service: p.service, from: p.from, to: p.to, reason });
    await this.setWeight(0, "rolled-back", reason, "proceed").catch((e: unknown) => {
      if (e instanceof Stop) throw new Stop("conflict", `rollback not written: ${e.message}`);
      throw e;
    });
    this.log.info("rolled back", { service: p.service, weight_from: 100, weight_to: 0 });
    throw new Stop("rolled-back", `rolled back: ${p.from} takes 100% of ${p.service} again (${reason})`);
  }

  private record(weight: number, windowMs: number, figures: WindowFigures, decision: StepRecord["decision"], reason: string, step?: number): void {
    this.steps.push({ weight, windowMs, figures, decision, reason });
    if (decision === "paused" || decision === "aborted") return;
    this.log.info("canary decision", {
      ...(step !== undefined ? { step } : {}),
      weight,
      decision,
      requests: figures.requests,
      errors: figures.errors,
      error_rate: Number(errorRate(figures).toFixed(4)),
      p99_ms: figures.p99Ms === null ? null : Number(figures.p99Ms.toFixed(2)),
      window_ms: windowMs,
      max_error_rate: this.plan.thresholds.maxErrorRate,
      max_p99_ms: this.plan.thresholds.maxP99Ms,
      min_requests: this.plan.thresholds.minRequests,
      reason,
    });
  }
}

/** The final summary table. */
export function summaryTable(plan: CanaryPlan, r: RolloutResult): string {
  const rows = [["#", "weight", "window", "requests", "errors", "error rate", "p99", "decision"]];
  r.steps.forEach((s, i) => {
    rows.push([String(i + 1), `${s.weight}%`, `${(s.windowMs / 1000).toFixed(1)}s`, String(s.figures.requests), String(s.figures.errors), formatRate(errorRate(s.figures)), s.figures.p99Ms === null ? "-" : formatMs(s.figures.p99Ms), s.decision]);
  });
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  const lines = rows.map((row) => row.map((cell, c) => cell.padEnd(widths[c]!)).join("  ").trimEnd());
  return [
    `canary ${plan.service}: ${plan.from} → ${plan.to}, steps ${plan.steps.join(",")}%, interval ${plan.intervalMs / 1000}s, max error rate ${formatRate(plan.thresholds.maxErrorRate)}, max p99 ${formatMs(plan.thresholds.maxP99Ms)}, min requests ${plan.thresholds.minRequests}`,
    ...lines,
    `result: ${r.outcome}: ${r.message}`,
    "",
  ].join("\n");
}
