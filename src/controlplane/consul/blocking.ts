// One blocking-query watch on the Consul agent (shared/reference/consul-connect.md §2.0):
// index or hash mode, index reset when it goes backwards, never blocking on index 0, a token
// bucket so churn cannot turn it into a busy loop, and full-jitter backoff on errors. The
// handler fires only when the parsed value really changed.
import { AgentError, type AgentClient, type AgentResponse } from "./client.js";

export interface BlockingOptions<T> {
  readonly client: AgentClient;
  readonly path: string;
  readonly query?: Record<string, string>;
  readonly mode: "index" | "hash";
  /** Narrows the agent's JSON; throws with the field that is wrong. */
  readonly parse: (body: unknown, res: AgentResponse) => T;
  readonly onValue: (value: T) => void;
  readonly onError: (e: Error) => void;
  /**
   * Called once when a call that should answer at once (no index or hash: the first one, and
   * the first after an error) has had no answer for `slowMs`. The call goes on (an agent may hold
   * a first leaf while the servers sign it); this only says why nothing is happening, as the
   * deadline for it is that of a blocking call (minutes).
   */
  readonly onSlow?: (afterMs: number) => void;
  /** Default 10 s. */
  readonly slowMs?: number;
  /** The `wait` sent to the agent. Default 5 min (the agent's default). */
  readonly waitMs?: number;
  readonly backoff?: { readonly baseMs: number; readonly maxMs: number };
  /** Token bucket: burst and sustained calls per second. */
  readonly rate?: { readonly burst: number; readonly perSecond: number };
}

export const DEFAULT_BACKOFF = { baseMs: 1000, maxMs: 60_000 };
const DEFAULT_RATE = { burst: 5, perSecond: 1 };

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/** Full jitter: a uniform draw below the exponential cap, so many proxies don't retry in step. */
export function backoffMs(failures: number, b: { baseMs: number; maxMs: number }, rand = Math.random): number {
  const cap = Math.min(b.maxMs, b.baseMs * 2 ** Math.min(failures - 1, 20));
  return Math.max(b.baseMs / 4, cap * rand());
}

export class BlockingQuery<T> {
  private readonly abort = new AbortController();
  private index = 0;
  private hash = "";
  private last: string | null = null;
  private failures = 0;
  private tokens: number;
  private lastRefill = Date.now();
  private running: Promise<void> | null = null;
  /** Aborted by retryNow() to cut short the error backoff in progress (null: none). */
  private backoffWake: AbortController | null = null;

  constructor(private readonly o: BlockingOptions<T>) {
    this.tokens = (o.rate ?? DEFAULT_RATE).burst;
  }

  start(): void {
    this.running ??= this.loop();
  }

  /**
   * Cuts short the error backoff in progress, if any: the owner learned something that may make
   * the next answer acceptable (a parse that depends on other state). The token bucket still
   * paces the calls. A watch that is waiting on the agent, or healthy, is left alone.
   */
  retryNow(): void {
    this.backoffWake?.abort();
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.running;
  }

  private async takeToken(): Promise<void> {
    const r = this.o.rate ?? DEFAULT_RATE;
    for (;;) {
      const now = Date.now();
      this.tokens = Math.min(r.burst, this.tokens + ((now - this.lastRefill) / 1000) * r.perSecond);
      this.lastRefill = now;
      if (this.tokens >= 1) {
        this.tokens -= 1;
        return;
      }
      await sleep(((1 - this.tokens) / r.perSecond) * 1000, this.abort.signal);
      if (this.abort.signal.aborted) return;
    }
  }

  private async loop(): Promise<void> {
    const signal = this.abort.signal;
    const waitMs = this.o.waitMs ?? 300_000;
    while (!signal.aborted) {
      await this.takeToken();
      if (signal.aborted) return;
      const query: Record<string, string> = { ...this.o.query };
      if (this.o.mode === "index" && this.index > 0) Object.assign(query, { index: String(this.index), wait: `${waitMs}ms` });
      if (this.o.mode === "hash" && this.hash) Object.assign(query, { hash: this.hash, wait: `${waitMs}ms` });
      // The agent adds up to wait/16 of jitter; past that plus a margin the agent is stalled.
      // Whole milliseconds: AbortSignal.timeout throws a RangeError on a fraction (wait 200ms).
      const deadlineMs = Math.ceil(waitMs + waitMs / 16) + 5000;
      const deadline = AbortSignal.timeout(deadlineMs);
      const slowMs = this.o.slowMs ?? 10_000;
      const blocking = "index" in query || "hash" in query;
      const slow = blocking || !this.o.onSlow ? null : setTimeout(() => this.o.onSlow?.(slowMs), slowMs);
      slow?.unref();
      try {
        let res: AgentResponse;
        try {
          res = await this.o.client.call("GET", this.o.path, { query, signal: AbortSignal.any([signal, deadline]) });
        } finally {
          if (slow) clearTimeout(slow);
        }
        // Stopped while the answer was on its way: a stopped watch delivers nothing (its
        // owner may already have dropped the value it would overwrite).
        if (signal.aborted) return;
        const value = this.o.parse(res.body, res);
        this.advance(res);
        this.failures = 0;
        const key = JSON.stringify(value);
        if (key !== this.last) {
          this.last = key;
          this.o.onValue(value);
        }
      } catch (e) {
        if (signal.aborted) return;
        this.failures++;
        // A backwards index, a hash we cannot trust: start over without index on the next try.
        this.index = 0;
        this.hash = "";
        const err = e as Error;
        const msg = deadline.aborted ? `GET ${this.o.path}: no answer within ${Math.round(deadlineMs / 1000)} s (agent stalled?)` : err.message;
        this.o.onError(err instanceof AgentError ? err : new Error(msg));
        const wake = (this.backoffWake = new AbortController());
        await sleep(backoffMs(this.failures, this.o.backoff ?? DEFAULT_BACKOFF), AbortSignal.any([signal, wake.signal]));
        this.backoffWake = null;
      }
    }
  }

  private advance(res: AgentResponse): void {
    if (this.o.mode === "hash") {
      this.hash = res.contentHash ?? "";
      return;
    }
    const next = res.index;
    if (next === null) {
      this.index = 0;
      return;
    }
    // A buggy 0 is not a reset: block on 1 (§2.0), or every wait would cost an extra
    // non-blocking call. Snapshot restores move the index backwards: start over from 0.
    if (next === 0) this.index = 1;
    else if (next < this.index) this.index = 0;
    else this.index = next;
  }
}
