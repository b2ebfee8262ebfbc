// Every process the harness starts goes through here: spawned, its PID recorded (in memory and
// in a live PID file), its output split into lines, and stopped by PID — at the end, on error,
// and on Ctrl-C. Nothing is ever killed by name.
import { spawn } from "node:child_process";
import { writeFileSync, rmSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";

const now = () => performance.now();

export class Procs {
  /** @param {{ pidFile?: string, quiet?: boolean }} opts */
  constructor(opts = {}) {
    this.pidFile = opts.pidFile ?? null;
    /** Every process ever started: { name, role, pid, cmd, startedAt, exitedAt, exitCode, signal }. */
    this.records = [];
    /** pid → handle, for the ones still running. */
    this.live = new Map();
    this.t0 = Date.now();
  }

  /**
   * Starts a process. Returns a handle with pid, line waiters, an `exited` promise and `spawnedAt`
   * (performance.now() just before spawn, for startup timing).
   */
  spawn(name, cmd, args, { role = "other", env, cwd, stdin = "ignore" } = {}) {
    const spawnedAt = now();
    const child = spawn(cmd, args, { env: env ?? process.env, cwd, stdio: [stdin, "pipe", "pipe"] });
    if (child.pid === undefined) {
      // spawn failed synchronously-ish (ENOENT is reported via 'error'); make the failure clear.
      const err = new Promise((_, reject) => child.once("error", (e) => reject(new Error(`cannot start ${name} (${cmd}): ${e.message}`))));
      err.catch(() => {});
      throw new Error(`cannot start ${name} (${cmd})`);
    }
    const rec = { name, role, pid: child.pid, cmd: [cmd, ...args].join(" "), startedAt: new Date().toISOString(), exitedAt: null, exitCode: null, signal: null };
    this.records.push(rec);
    const lines = [];
    const waiters = [];
    let stdoutText = "";
    let stderrText = "";
    const feed = (stream, which) => {
      let partial = "";
      stream.setEncoding("utf8");
      stream.on("data", (d) => {
        if (which === "stdout") stdoutText = keepTail(stdoutText + d);
        else stderrText = keepTail(stderrText + d);
        partial += d;
        let nl;
        while ((nl = partial.indexOf("\n")) >= 0) {
          const line = partial.slice(0, nl);
          partial = partial.slice(nl + 1);
          const entry = { stream: which, line, at: now() };
          if (lines.length < 2000) lines.push(entry);
          for (const w of [...waiters]) {
            if (w.pred(entry)) {
              waiters.splice(waiters.indexOf(w), 1);
              w.resolve(entry);
            }
          }
        }
      });
    };
    feed(child.stdout, "stdout");
    feed(child.stderr, "stderr");
    const exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        rec.exitedAt = new Date().toISOString();
        rec.exitCode = code;
        rec.signal = signal;
        this.live.delete(rec.pid);
        this.writePidFile();
        for (const w of waiters.splice(0)) w.reject(new Error(`${name} (pid ${rec.pid}) exited (code ${code}, signal ${signal}) before the awaited output.\nstderr:\n${stderrText.slice(-3000)}\nstdout:\n${stdoutText.slice(-1000)}`));
        resolve({ code, signal });
      });
      child.once("error", (e) => {
        rec.exitedAt = new Date().toISOString();
        this.live.delete(rec.pid);
        for (const w of waiters.splice(0)) w.reject(new Error(`${name}: ${e.message}`));
        resolve({ code: null, signal: null, error: e });
      });
    });
    const handle = {
      name,
      role,
      pid: child.pid,
      child,
      spawnedAt,
      exited,
      record: rec,
      stdout: () => stdoutText,
      stderr: () => stderrText,
      get running() {
        return rec.exitedAt === null;
      },
      /** Resolves with the first line (past or future) matching pred({stream,line,at}). */
      waitForLine(pred, timeoutMs = 20_000) {
        const hit = lines.find(pred);
        if (hit) return Promise.resolve(hit);
        if (rec.exitedAt !== null) return Promise.reject(new Error(`${name} (pid ${rec.pid}) already exited.\nstderr:\n${stderrText.slice(-3000)}`));
        return new Promise((resolve, reject) => {
          const timer = setTimeout(() => {
            const i = waiters.indexOf(w);
            if (i >= 0) waiters.splice(i, 1);
            reject(new Error(`timed out after ${timeoutMs} ms waiting for output from ${name} (pid ${rec.pid}).\nstderr:\n${stderrText.slice(-3000)}\nstdout:\n${stdoutText.slice(-1000)}`));
          }, timeoutMs);
          const w = {
            pred,
            resolve: (e) => {
              clearTimeout(timer);
              resolve(e);
            },
            reject: (e) => {
              clearTimeout(timer);
              reject(e);
            },
          };
          waiters.push(w);
        });
      },
    };
    this.live.set(child.pid, handle);
    this.writePidFile();
    return handle;
  }

  /** SIGTERM (or `signal`) by PID, then SIGKILL by PID after graceMs. Resolves when it exited. */
  async stop(handle, { signal = "SIGTERM", graceMs = 3000 } = {}) {
    if (!handle || !handle.running) return handle?.exited;
    killPid(handle.pid, signal);
    const timer = setTimeout(() => killPid(handle.pid, "SIGKILL"), graceMs);
    const r = await handle.exited;
    clearTimeout(timer);
    return r;
  }

  /** Stops every process still running, in reverse start order. */
  async stopAll({ graceMs = 3000 } = {}) {
    const handles = [...this.live.values()].reverse();
    await Promise.all(handles.map((h) => this.stop(h, { graceMs })));
  }

  /** Last resort (process 'exit' handler, synchronous): SIGKILL every PID still recorded live. */
  killAllSync() {
    for (const pid of this.live.keys()) killPid(pid, "SIGKILL");
  }

  writePidFile() {
    if (!this.pidFile) return;
    try {
      if (this.live.size === 0) {
        rmSync(this.pidFile, { force: true });
        return;
      }
      mkdirSync(dirname(this.pidFile), { recursive: true });
      const text = [...this.live.values()].map((h) => `${h.pid}\t${h.name}`).join("\n") + "\n";
      writeFileSync(this.pidFile, text);
    } catch {
      /* best effort */
    }
  }
}

function killPid(pid, signal) {
  try {
    process.kill(pid, signal);
  } catch {
    /* already gone */
  }
}

/** Keeps the last few MB of a stream's text (a tool's JSON result line can be a few hundred KB). */
function keepTail(s) {
  return s.length > 16_000_000 ? s.slice(-8_000_000) : s;
}

/** Is a PID alive? (signal 0) */
export function pidAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === "EPERM";
  }
}
