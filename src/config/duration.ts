// Durations as Consul writes them: Go duration strings ("72h", "1m30s", "250ms") or integer
// nanoseconds (how Go structs serialise time.Duration).

const UNIT_MS: Readonly<Record<string, number>> = { ns: 1e-6, us: 1e-3, "µs": 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const PART = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/y;

/** Milliseconds, or null when the value is not a duration. */
export function parseDurationMs(v: unknown): number | null {
  if (typeof v === "number") return Number.isFinite(v) && v >= 0 ? v / 1e6 : null;
  if (typeof v !== "string" || v.length === 0) return null;
  if (v === "0") return 0;
  PART.lastIndex = 0;
  let total = 0;
  let pos = 0;
  while (pos < v.length) {
    PART.lastIndex = pos;
    const m = PART.exec(v);
    if (!m) return null;
    total += Number(m[1]) * UNIT_MS[m[2]!]!;
    pos = PART.lastIndex;
  }
  return total;
}

export function formatDurationMs(ms: number): string {
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0 && ms > 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}
