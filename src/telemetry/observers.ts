// What the data path reports each connection and request to, besides metrics.
import type { Tracing } from "./tracing.js";
import type { AccessLog } from "./access-log.js";

export interface Observers {
  /** Null while tracing is off: nothing is extracted, injected or recorded. */
  readonly tracing: Tracing | null;
  readonly accessLog: AccessLog;
}
