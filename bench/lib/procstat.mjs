// CPU and memory of a process from /proc: utime+stime (CPU seconds), VmRSS (now) and VmHWM
// (peak since start or since the last resetPeak).
import { readFileSync, writeFileSync } from "node:fs";
import { readdir, readFile, readlink } from "node:fs/promises";
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

// TCP states (include/net/tcp_states.h) of a connection in use: set up, open, or closed by this
// side with the peer still to finish. CLOSE_WAIT (the peer closed, this side never did) and
// CLOSE are what a socket leak leaves behind; LISTEN sockets are few and constant.
const LIVE_TCP_STATES = new Set(["01", "02", "03", "04", "05"]);

/** Socket inode → TCP state (hex, as /proc/net/tcp has it), for every TCP socket on the host. */
export async function tcpSocketStates() {
  const states = new Map();
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text;
    try {
      text = await readFile(file, "latin1");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
      if (f.length > 9) states.set(f[9], f[3]);
    }
  }
  return states;
}

/** pid's open descriptors and the socket inodes among them, or null if pid is gone. */
export async function descriptors(pid) {
  let names;
  try {
    names = await readdir(`/proc/${pid}/fd`);
  } catch {
    return null;
  }
  const sockets = [];
  await Promise.all(
    names.map(async (n) => {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(await readlink(`/proc/${pid}/fd/${n}`));
        if (m) sockets.push(m[1]);
      } catch {
        /* closed meanwhile */
      }
    }),
  );
  return { fds: names.length, sockets };
}

/**
 * How many of `d`'s descriptors (from descriptors()) are not a live TCP connection (a socket in
 * CLOSE_WAIT or CLOSE, a file, a pipe, a listener): the count that grows when a proxy leaks
 * descriptors, however many connections its traffic holds open or its pools share. `states` is
 * read after the descriptors, so a connection opened in between is in it.
 */
export function notConnections(d, states) {
  let live = 0;
  for (const inode of d.sockets) if (LIVE_TCP_STATES.has(states.get(inode))) live++;
  return d.fds - live;
}
