// V8 grows the young generation whenever a scavenge finds most of it still alive, and an idle
// proxy's scavenges are exactly that (its start's modules, catalog and certificates, then the few
// long-lived objects its timers make): left alone, the new space reaches 4 MB per semi-space in the
// first seconds and stays committed, largely resident, while nothing is being proxied. Holding
// V8's growth factor at 1 while the event loop is idle keeps it at its start size: 2 MB less RSS
// at idle on Node 20 and 3.5 MB on Node 24 (bench/PERF-LOG.md, session 13). After a busy second
// (the start's own aside) the default factor (2) is back and load grows the space exactly as
// before; after a quiet spell V8's memory reducer shrinks it and the hold keeps it there. V8 reads
// the factor each time it grows the space; test/cli/startup-heap.test.ts checks that on the Node
// under test.
//
// Under load the same hold bounds the space: V8's own maximum is 2 × 16 MB on Node 20 and over
// 128 MB on Node 24, committed and (with the llhttp core's reads making no garbage of their own)
// largely touched between scavenges, so an HTTP sidecar on Node 24 peaked at 240 MB. Once a GC
// leaves the new space at BOUND_SEMI_SPACE_MB per semi-space the factor is held at 1 again: a
// soft form of `--max-semi-space-size=4` (the image's NODE_OPTIONS), which can pass the size by
// the growth of a GC that ran before the observer (PERF-LOG, session 16). An operator's own
// --max-semi-space-size stands.
import { getHeapSpaceStatistics, setFlagsFromString } from "node:v8";
import { performance, PerformanceObserver, type EventLoopUtilization } from "node:perf_hooks";

const FLAG = "--semi-space-growth-factor";
const DEFAULT_FACTOR = 2;
/** Event-loop utilization over a second at or above which the proxy is serving. */
const BUSY = 0.02;
/** Seconds below BUSY before growth is held again. */
const QUIET_SECONDS = 30;

/** The old generation's growing factor, 1 + this / 100 (V8's --heap-growing-percent). */
export const OLD_GENERATION_GROWING_PERCENT = 50;

/** MB per semi-space at which the new space stops growing under load. */
export const BOUND_SEMI_SPACE_MB = 4;

function nodeFlags(): string {
  return [...process.execArgv, process.env["NODE_OPTIONS"] ?? ""].join(" ");
}

/** Set by whoever runs node: their growth factor stands, and frozen flags must not be written. */
function operatorChose(): boolean {
  return /semi[-_]space[-_]growth[-_]factor|freeze[-_]flags[-_]after[-_]init/.test(nodeFlags());
}

/** The operator sized the young generation themselves. */
function operatorSized(): boolean {
  return /semi[-_]space[-_]size|max[-_]young/.test(nodeFlags());
}

/** The new space (both semi-spaces) in bytes. */
function newSpaceBytes(): number {
  for (const s of getHeapSpaceStatistics()) if (s.space_name === "new_space") return s.space_size;
  return 0;
}

/** Both semi-spaces at the bound (V8 rounds the space up a little: 8.4 MB for 2 × 4 MB). */
const BOUND_BYTES = 2 * BOUND_SEMI_SPACE_MB * 1024 * 1024;

let held = false;
let governed = false;

/** From now on the young generation does not grow, until released or governed. */
export function holdYoungGeneration(): void {
  if (held || operatorChose()) return;
  held = true;
  setFlagsFromString(`${FLAG}=1`);
}

/** Not a proxy (a CLI command): V8 grows the young generation as it would. */
export function releaseYoungGeneration(): void {
  if (!held) return;
  held = false;
  setFlagsFromString(`${FLAG}=${DEFAULT_FACTOR}`);
}

/**
 * The old generation: what the client sidecar promotes (~0.8 KB per HTTP request) is garbage that
 * waits for a mark-compact, and V8 sets the next one at the live size times a factor of its own
 * (~3.7 here): 40–51 MB of old space at the L7 peak against 10 MB live. A factor of 1.5 cut that
 * peak by 20–34 MB at no CPU cost the benchmark could separate (PERF-LOG, session 16). V8 reads
 * it each time it sets the limit; an operator's own --heap-growing-percent stands.
 */
function slowOldGenerationGrowth(): void {
  if (/heap[-_]growing[-_]percent/.test(nodeFlags())) return;
  setFlagsFromString(`--heap-growing-percent=${OLD_GENERATION_GROWING_PERCENT}`);
}

/**
 * A proxy: growth follows the event loop from now on, released after a busy second (the first
 * second, the start, aside) and held again after QUIET_SECONDS of idling. One unref'd timer, nothing per request.
 */
export function governYoungGeneration(): void {
  if (governed || operatorChose()) return;
  governed = true;
  slowOldGenerationGrowth();
  const bounded = !operatorSized();
  if (bounded) {
    // After each GC: V8 grows the space at the end of one, and the observer runs before the
    // next in all but the heaviest bursts (one more doubling, then held).
    new PerformanceObserver(() => {
      if (!held && newSpaceBytes() >= BOUND_BYTES) holdYoungGeneration();
    }).observe({ entryTypes: ["gc"] });
  }
  let last: EventLoopUtilization = performance.eventLoopUtilization();
  // The first second is the start itself (busy by nature): it is not judged.
  let judged = false;
  let quiet = 0;
  setInterval(() => {
    const now = performance.eventLoopUtilization();
    const serving = performance.eventLoopUtilization(now, last).utilization >= BUSY;
    last = now;
    if (!judged) {
      judged = true;
    } else if (serving) {
      quiet = 0;
      if (!bounded || newSpaceBytes() < BOUND_BYTES) releaseYoungGeneration();
    } else if (++quiet >= QUIET_SECONDS) {
      holdYoungGeneration();
    }
  }, 1_000).unref();
}
