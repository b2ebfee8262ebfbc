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

/** pid's children (Linux's /proc/<pid>/task/<pid>/children), or none. */
function childrenOf(pid) {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** pid and every live descendant: a meshproxy at -concurrency N is a primary and N workers. */
function tree(pid) {
  const all = [pid];
  for (let i = 0; i < all.length; i++) all.push(...childrenOf(all[i]));
  return all;
}

/**
 * CPU seconds used so far by pid and its live descendants, split into user and system (kernel)
 * time, or null if pid is gone.
 */
export function cpuTimes(pid) {
  const own = ownCpuTimes(pid);
  if (!own) return null;
  for (const child of tree(pid).slice(1)) {
    const t = ownCpuTimes(child);
    if (t) {
      own.user += t.user;
      own.system += t.system;
    }
  }
  return own;
}

function ownCpuTimes(pid) {
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

/**
 * { rssKb, hwmKb, rssAnonKb } from /proc/<pid>/status, summed over pid and its live descendants
 * (the peak is the sum of each process's peak: an upper bound of the tree's), or null.
 */
export function memory(pid) {
  const own = ownMemory(pid);
  if (!own) return null;
  for (const child of tree(pid).slice(1)) {
    const m = ownMemory(child);
    if (!m) continue;
    for (const k of ["rssKb", "hwmKb", "rssAnonKb"]) if (own[k] !== null && m[k] !== null) own[k] += m[k];
  }
  return own;
}

function ownMemory(pid) {
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

/** Resets VmHWM to the current RSS (Linux ≥ 4.0: write 5 to clear_refs) of pid and its descendants. Returns false if not allowed. */
export function resetPeak(pid) {
  try {
    for (const p of tree(pid)) writeFileSync(`/proc/${p}/clear_refs`, "5");
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
