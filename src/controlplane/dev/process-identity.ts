// Whether the process that registered a dev catalog entry (or a sidecars/ record) is still the one
// running. The dev control plane has no agent doing health checks: an instance is healthy while
// its process lives, so a SIGKILLed instance turns critical at the next read of the catalog.
//
// A pid alone cannot say that. `kill(pid, 0)` also succeeds for a thread id (Linux accepts a tid
// there, and every Node process has a dozen threads), for a pid the kernel has since given to
// another process (pid_max is 32,768 on many hosts, so a busy machine reuses them within minutes),
// and for a zombie. The soak found the first: a killed instance read healthy for an hour because
// its pid was now a thread of another sidecar, and a third of its callers' requests went to a
// closed port. So an entry also records when its process started (the kernel's start time, in
// clock ticks since boot, field 22 of /proc/<pid>/stat): the pid must name a live process (not a
// thread, not a zombie) started at that moment. Where /proc is absent (not Linux) the pid check is
// all there is.
//
// A pid means something only in its own pid namespace: two containers sharing a state directory
// (README, "Two pods") each run meshproxy as pid 1. A registration also records its namespace
// (/proc/self/ns/pid), and one from another namespace cannot be judged from here: it reads alive,
// as `kill(1, 0)` did, and an intention lock held there goes stale by age alone. A process this
// reader may not see (hidepid, systemd's ProtectProc) reads alive as well: not knowing is not dead.
import { readFileSync, readlinkSync } from "node:fs";

interface ProcStat {
  /** The single-letter state: R, S, D, Z (zombie), X (dead), ... */
  readonly state: string;
  readonly startTime: number;
}

/** Fields 3 and 22 of a /proc/<pid>/stat, or null if it does not parse. */
function parseStat(text: string): ProcStat | null {
  // Field 2 is the command name in parentheses and may itself hold spaces and ')': the fields
  // that follow start after the last ')'.
  const close = text.lastIndexOf(")");
  if (close < 0) return null;
  const rest = text.slice(close + 2).split(" ");
  // rest[0] is field 3 (state); field 22 (starttime) is rest[19].
  const state = rest[0];
  const startTime = Number(rest[19]);
  if (state === undefined || !Number.isSafeInteger(startTime)) return null;
  return { state, startTime };
}

/** The thread group (process) a task id belongs to, or null if /proc/<id>/status cannot say. */
function threadGroupOf(id: number): number | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${id}/status`, "latin1");
  } catch {
    return null;
  }
  const m = /^Tgid:\s*(\d+)$/m.exec(text);
  return m ? Number(m[1]) : null;
}

function procStatOf(path: string): ProcStat | null {
  let text: string;
  try {
    text = readFileSync(path, "latin1");
  } catch {
    return null;
  }
  return parseStat(text);
}

const selfStat = procStatOf("/proc/self/stat");
const hasProc = selfStat !== null;

/** This process's start time as recorded in a registration, or undefined where /proc is absent. */
export function ownStartTime(): number | undefined {
  return selfStat?.startTime;
}

/** This process's pid namespace (`pid:[4026531836]`), or undefined where /proc cannot say. */
export function ownPidNamespace(): string | undefined {
  try {
    return readlinkSync("/proc/self/ns/pid");
  } catch {
    return undefined;
  }
}

const ownNamespace = ownPidNamespace();

/** Who registered: a pid, and where known when that process started and in which pid namespace. */
export interface ProcessRef {
  readonly pid: number;
  readonly startTime?: number;
  readonly pidNamespace?: string;
}

/**
 * Same machine, so a dead process means a dead instance (covers kill -9 and crashes). With a
 * recorded start time, a live pid must also be the same process, not a reused pid.
 */
export function processAlive(ref: ProcessRef): boolean {
  const { pid, startTime, pidNamespace } = ref;
  if (pidNamespace !== undefined && ownNamespace !== undefined && pidNamespace !== ownNamespace) return true;
  if (hasProc) {
    const stat = procStatOf(`/proc/${pid}/stat`);
    // Unreadable: no such task, or one this reader may not see; the signal below tells which.
    if (stat !== null) {
      // Z zombie, X (and x on older kernels) dead.
      if (stat.state === "Z" || stat.state === "X" || stat.state === "x") return false;
      // A thread id: /proc/<tid> answers though it is not listed, and its Tgid is another id.
      if (threadGroupOf(pid) !== pid) return false;
      if (startTime !== undefined && stat.startTime !== startTime) return false;
      return true;
    }
  }
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: it exists, as another user's process this reader may not signal (or see in /proc).
    return e instanceof Error && "code" in e && e.code === "EPERM";
  }
}

const thisProcess: ProcessRef = {
  pid: process.pid,
  ...(selfStat !== null ? { startTime: selfStat.startTime } : {}),
  ...(ownNamespace !== undefined ? { pidNamespace: ownNamespace } : {}),
};

/** This process as a registration records it: its pid, start time and pid namespace where known. */
export function ownProcess(): ProcessRef {
  return thisProcess;
}

/**
 * The optional startTime and pidNamespace of a registration read from a file (pid is the
 * caller's, with its own message); throws an Error naming the field that is wrong.
 */
export function parseProcessFields(o: object): { startTime?: number; pidNamespace?: string } {
  const startTime = "startTime" in o ? o.startTime : undefined;
  const pidNamespace = "pidNamespace" in o ? o.pidNamespace : undefined;
  if (startTime !== undefined && (typeof startTime !== "number" || !Number.isSafeInteger(startTime) || startTime < 0)) {
    throw new Error(`startTime must be a whole number of clock ticks since boot (or absent), got ${JSON.stringify(startTime)}`);
  }
  if (pidNamespace !== undefined && (typeof pidNamespace !== "string" || !/^pid:\[\d+\]$/.test(pidNamespace))) {
    throw new Error(`pidNamespace must look like "pid:[4026531836]" (or be absent), got ${JSON.stringify(pidNamespace)}`);
  }
  return { ...(startTime !== undefined ? { startTime } : {}), ...(pidNamespace !== undefined ? { pidNamespace } : {}) };
}
