// What one Snapshot says about inbound traffic, compiled: intentions (L4, and L7 for HTTP
// services, with every permission's matchers) and the local app's HTTP settings with their
// defaults. The public listener swaps this value in whole; new connections and requests see it.
import type { PublicListener as PublicListenerConfig, Snapshot } from "../config/snapshot.js";
import { DEFAULTS } from "../config/defaults.js";
import { SnapshotError, checkTimerMs } from "../config/validate.js";
import { CompiledIntentions, scopeOf } from "../authz/intentions.js";
import { CompiledL7Intentions, PermissionCompileError } from "../authz/l7.js";
import { MatchCompileError } from "../http/match.js";
import type { InboundHttpConfig } from "../inbound/http-inbound.js";

export interface InboundState {
  readonly config: PublicListenerConfig;
  readonly service: string;
  readonly trustDomain: string;
  /** The leaf's serial, for the log line of a rotation. */
  readonly serial: string;
  readonly intentions: CompiledIntentions;
  /** HTTP services: intentions are checked per request instead of per connection. */
  readonly l7: CompiledL7Intentions | null;
  readonly http: InboundHttpConfig | null;
}

/** ALPN is fixed per TLS server: HTTP/2 services offer h2, others no ALPN at all. */
export function alpnFor(p: PublicListenerConfig["protocol"]): "h2" | "none" {
  return p === "http2" || p === "grpc" ? "h2" : "none";
}

export function compileInbound(s: Snapshot, pl: PublicListenerConfig): InboundState {
  const http = pl.protocol !== "tcp";
  const local = scopeOf(s.identity);
  const requestTimeoutMs = pl.requestTimeoutMs ?? DEFAULTS.requestTimeoutMs;
  checkTimerMs("publicListener.requestTimeoutMs", requestTimeoutMs);
  let l7: CompiledL7Intentions | null = null;
  try {
    if (http) l7 = new CompiledL7Intentions(s.intentions, s.identity.service, local);
  } catch (e) {
    // The permission's field is relative to the policy: intentions[i].permissions[j]…
    if (e instanceof PermissionCompileError) throw new SnapshotError(`intentions.${e.field}`, e.reason);
    if (e instanceof MatchCompileError) throw new SnapshotError("intentions", e.message);
    throw e;
  }
  return {
    config: pl,
    service: s.identity.service,
    trustDomain: s.trust.trustDomain,
    serial: s.identity.serial,
    intentions: new CompiledIntentions(s.intentions, s.identity.service, local),
    l7,
    http: http
      ? {
          localApp: pl.localApp,
          requestTimeoutMs,
          localConnectTimeoutMs: pl.localConnectTimeoutMs,
          idleTimeoutMs: pl.idleTimeoutMs,
          spiffeId: s.identity.spiffeId,
          appHttp2: alpnFor(pl.protocol) === "h2",
        }
      : null,
  };
}
