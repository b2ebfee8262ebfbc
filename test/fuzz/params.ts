// One knob for every property-based test: CI runs a fixed seed and a modest count so a failure
// reproduces; `npm run fuzz` raises the count (MESHPROXY_FUZZ_RUNS) and draws a fresh seed unless
// MESHPROXY_FUZZ_SEED pins one. fast-check prints the seed and the shrunk counterexample on failure.
import type { Parameters } from "fast-check";

const DEFAULT_RUNS = 1_000;
const DEFAULT_SEED = 20261201;

function intFromEnv(name: string): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return undefined;
  const n = Number(raw);
  if (!Number.isSafeInteger(n)) throw new Error(`${name}=${raw}: expected a whole number`);
  return n;
}

/** `scale` shrinks the count for properties whose single run is expensive (a child process, a socket). */
export function fuzzParams<T>(scale = 1): Parameters<T> {
  const runs = intFromEnv("MESHPROXY_FUZZ_RUNS") ?? DEFAULT_RUNS;
  const long = process.env.MESHPROXY_FUZZ_RUNS !== undefined;
  const seed = intFromEnv("MESHPROXY_FUZZ_SEED") ?? (long ? Math.floor(Math.random() * 2 ** 31) : DEFAULT_SEED);
  return { numRuns: Math.max(1, Math.round(runs * scale)), seed };
}
