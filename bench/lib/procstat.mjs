// CPU and memory of a process from /proc: utime+stime (CPU seconds), VmRSS (now) and VmHWM
// (peak since start or since the last resetPeak).
import { readFileSync, writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";

let clkTck = 100;
try {
  clkTck = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
} catch {
  /* Linux default */
}

/** CPU seconds used so far by pid, split into user and system (kernel) time, or null if it is gone. */
export function cpuTimes(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may contain spaces; fields after the closing paren are fixed.
    const rest = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return { user: Number(rest[11]) / clkTck, system: Number(rest[12]) / clkTck };
  } catch {
    return null;
  }
}

/** CPU seconds (user + system) used so far by pid, or null if it is gone. */
export function cpuSeconds(pid) {
  const t = cpuTimes(pid);
  return t ? t.user + t.system : null;
}

/** { rssKb, hwmKb, rssAnonKb } from /proc/<pid>/status, or null. */
export function memory(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/status`, "utf8");
    const rss = /^VmRSS:\s+(\d+) kB/m.exec(s);
    const hwm = /^VmHWM:\s+(\d+) kB/m.exec(s);
    const anon = /^RssAnon:\s+(\d+) kB/m.exec(s);
    return { rssKb: rss ? Number(rss[1]) : null, hwmKb: hwm ? Number(hwm[1]) : null, rssAnonKb: anon ? Number(anon[1]) : null };
  } catch {
    return null;
  }
}

/** Resets VmHWM to the current RSS (Linux ≥ 4.0: write 5 to clear_refs). Returns false if not allowed. */
export function resetPeak(pid) {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, "5");
    return true;
  } catch {
    return false;
  }
}

/** Samples CPU of several pids, returns a function giving the deltas since the sample. */
export function cpuMark(handles) {
  const start = new Map(handles.map((h) => [h.name, { pid: h.pid, cpu: cpuSeconds(h.pid) }]));
  return () => {
    const out = {};
    for (const [name, { pid, cpu }] of start) {
      const end = cpuSeconds(pid);
      out[name] = end !== null && cpu !== null ? end - cpu : null;
    }
    return out;
  };
}
