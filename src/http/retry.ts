// Retry decisions with Envoy's semantics (shared/reference/data-plane-anchors.md §3).
import type { RetryPolicy } from "../config/http.js";

/** Why a connection could not be made: refused or reset, too slow, or the peer is not who it should be. */
export type ConnectFailureReason = "connect" | "timeout" | "identity";

/** How one attempt ended, as far as retrying is concerned. */
export type AttemptOutcome =
  | { readonly kind: "response"; readonly status: number }
  /** TCP or TLS never came up: no request byte left. */
  | { readonly kind: "connect-failure"; readonly reason: ConnectFailureReason }
  /**
   * The connection broke before response headers, or the answer did not parse before any of it
   * reached the client (`protocolError`: what failed; Envoy's reset reason protocol_error, retried
   * as a reset and answered 502 UPE).
   */
  | { readonly kind: "reset"; readonly protocolError?: string }
  /**
   * The upstream reset the HTTP/2 stream with REFUSED_STREAM: it did not process the request
   * (RFC 9113 §8.7), so a retry is always safe.
   */
  | { readonly kind: "refused-stream" }
  | { readonly kind: "per-try-timeout" };

/** Compiled once per route: a Set instead of scanning lists per attempt. */
export class CompiledRetry {
  private readonly on: ReadonlySet<string>;
  private readonly codes: ReadonlySet<number>;

  constructor(readonly policy: RetryPolicy) {
    this.on = new Set(policy.retryOn);
    this.codes = new Set(policy.retriableStatusCodes);
  }

  get numRetries(): number {
    return this.policy.numRetries;
  }

  /** Whether this outcome may be retried under the policy (budget and count checked elsewhere). */
  retriable(o: AttemptOutcome): boolean {
    const on = this.on;
    switch (o.kind) {
      case "connect-failure":
        // 5xx and gateway-error cover connect failures in Envoy.
        return on.has("connect-failure") || on.has("5xx") || on.has("gateway-error") || on.has("reset");
      case "reset":
        return on.has("reset") || on.has("5xx");
      case "refused-stream":
        // Envoy: refused-stream asks for exactly this; a refused stream is also a reset, which
        // reset and 5xx cover.
        return on.has("refused-stream") || on.has("reset") || on.has("5xx");
      case "per-try-timeout":
        return on.has("5xx") || on.has("gateway-error") || on.has("reset");
      case "response": {
        const s = o.status;
        if (on.has("5xx") && s >= 500) return true;
        if (on.has("gateway-error") && (s === 502 || s === 503 || s === 504)) return true;
        if (on.has("retriable-4xx") && s === 409) return true;
        if (on.has("retriable-status-codes") && this.codes.has(s)) return true;
        return false;
      }
    }
  }

  /** Fully jittered exponential backoff before retry `n` (1-based): [0, min(cap, (2^n − 1) × base)). */
  backoffMs(n: number, rand: () => number = Math.random): number {
    const { backoffBaseMs: base, backoffMaxMs: cap } = this.policy;
    return Math.floor(rand() * Math.min(cap, (2 ** n - 1) * base));
  }
}

/**
 * Whether an upstream error is a REFUSED_STREAM reset: node:http2's stream error
 * (ERR_HTTP2_STREAM_ERROR, "…NGHTTP2_REFUSED_STREAM"), or undici's own report of one
 * (UND_ERR_INFO, `HTTP/2: "stream error" received - code 7`).
 */
export function isRefusedStream(e: unknown): boolean {
  if (!(e instanceof Error) || !("code" in e)) return false;
  if (e.code === "ERR_HTTP2_STREAM_ERROR") return e.message.endsWith("NGHTTP2_REFUSED_STREAM");
  return e.code === "UND_ERR_INFO" && e.message === UNDICI_REFUSED_STREAM;
}

/** NGHTTP2_REFUSED_STREAM is error code 7 (RFC 9113 §7). */
const UNDICI_REFUSED_STREAM = 'HTTP/2: "stream error" received - code 7';
