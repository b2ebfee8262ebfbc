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
import { readFileSync } from "node:fs";

interface ProcStat {
  /** The single-letter state: R, S, D, Z (zombie), X (dead), ... */
  readonly state: string;
  readonly startTime: number;
}

/** Fields 3 and 22 of /proc/<pid>/stat, or null if it cannot be read or parsed. */
function procStat(pid: number): ProcStat | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "latin1");
  } catch {
    return null;
  }
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

const hasProc = (() => {
  try {
    readFileSync("/proc/self/stat");
    return true;
  } catch {
    return false;
  }
})();

/** This process's start time as recorded in a registration, or undefined where /proc is absent. */
export function ownStartTime(): number | undefined {
  if (!hasProc) return undefined;
  return procStat(process.pid)?.startTime;
}

/**
 * Same machine, so a dead process means a dead instance (covers kill -9 and crashes). With a
 * recorded start time, a live pid must also be the same process, not a reused pid.
 */
export function processAlive(pid: number, startTime?: number): boolean {
  if (hasProc) {
    const stat = procStat(pid);
    // /proc/<pid> is gone: no such task, or one this reader cannot see; the signal below tells.
    if (stat !== null) {
      if (stat.state === "Z" || stat.state === "X") return false;
      // A thread id: /proc/<tid> answers though it is not listed, and its Tgid is another id.
      if (threadGroupOf(pid) !== pid) return false;
      if (startTime !== undefined && stat.startTime !== startTime) return false;
      return true;
    }
  }
  try {
    process.kill(pid, 0);
    // Alive, but /proc could not confirm its identity: only trust that where there is no /proc.
    return !hasProc || startTime === undefined;
  } catch (e) {
    return e instanceof Error && "code" in e && e.code === "EPERM" && (!hasProc || startTime === undefined);
  }
}

/** `{ startTime }` of this process for a registration, or nothing where it is unknown. */
export function startTimeField(): { startTime?: number } {
  const startTime = ownStartTime();
  return startTime === undefined ? {} : { startTime };
}
