// Cost of synchronous work as the CPU time this process spent on it, not wall time. On a loaded
// machine (CI runs test files side by side on two cores) a run longer than a scheduler slice is
// stretched by the time the process waits for a core, and a short one often is not: wall-clock
// ratios between a small and a large input then measure the load, and a linear parser fails a
// linearity check. User plus system time of every thread (GC included) is the work done.

/** CPU milliseconds spent in `run`. */
export function cpuMs(run: () => void): number {
  const start = process.cpuUsage();
  run();
  const spent = process.cpuUsage(start);
  return (spent.user + spent.system) / 1000;
}

/** The least CPU time of `times` runs, in ms: the least disturbed by a collection or a cold cache. */
export function fastestCpuMs(run: () => void, times = 5): number {
  let best = Infinity;
  for (let i = 0; i < times; i++) best = Math.min(best, cpuMs(run));
  return best;
}
