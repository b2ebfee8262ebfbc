// A lock file for read-modify-write edits of the state directory, so that two `meshproxy
// intention create` commands started at once both land instead of the second overwriting the
// first with what it read before the first wrote.
//
// The lock is `<file>.lock`, created whole with link(2) (which fails if it exists), holding the
// holder's pid, its start time, host and a random token. A lock whose holder is gone (same host,
// process not alive: a command killed mid-edit, its pid perhaps another process's by now; see
// process-identity.ts) or that is older than STALE_MS (a holder in another pid namespace, or hung)
// is stale and broken. Breaking is itself guarded by `<file>.lock.break`, so two
// processes that both find the same stale lock cannot remove a lock a third one has just taken.
import { link, readFile, stat, unlink, writeFile } from "node:fs/promises";
import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { ownProcess, parseProcessFields, processAlive, type ProcessRef } from "./process-identity.js";

/** An edit holds the lock for milliseconds; one older than this is not coming back. */
export const STALE_MS = 10_000;
/** Longer than STALE_MS, so a waiter outlasts a dead holder in another pid namespace. */
const WAIT_MS = 15_000;

export class LockError extends Error {
  constructor(
    readonly lockFile: string,
    message: string,
  ) {
    super(`${lockFile}: ${message}`);
    this.name = "LockError";
  }
}

interface Holder extends ProcessRef {
  readonly host: string;
  readonly token: string;
}

function parseHolder(text: string): Holder | null {
  try {
    const v: unknown = JSON.parse(text);
    if (typeof v !== "object" || v === null || !("pid" in v) || !("host" in v) || !("token" in v)) return null;
    const { pid, host, token } = v;
    if (typeof pid !== "number" || typeof host !== "string" || typeof token !== "string") return null;
    return { pid, host, token, ...parseProcessFields(v) };
  } catch {
    return null;
  }
}

function errno(e: unknown): string | undefined {
  return e instanceof Error && "code" in e && typeof e.code === "string" ? e.code : undefined;
}

function alive(h: Holder): boolean {
  if (!Number.isSafeInteger(h.pid) || h.pid <= 0) return false;
  return processAlive(h);
}

/** Removes a file; already gone is fine (another process cleaned up, or broke it as stale). */
async function removeIfPresent(file: string): Promise<void> {
  try {
    await unlink(file);
  } catch (e) {
    if (errno(e) !== "ENOENT") throw new LockError(file, `cannot remove (${e instanceof Error ? e.message : String(e)})`);
  }
}

/** Creates `file` with `body`, whole, only if it does not exist yet. False when it exists. */
async function createExclusive(file: string, body: string): Promise<boolean> {
  const tmp = `${file}.${process.pid}.${randomUUID().slice(0, 8)}.tmp`;
  await writeFile(tmp, body, { mode: 0o600 });
  try {
    await link(tmp, file);
    return true;
  } catch (e) {
    if (errno(e) === "EEXIST") return false;
    throw new LockError(file, `cannot create (${e instanceof Error ? e.message : String(e)})`);
  } finally {
    await removeIfPresent(tmp);
  }
}

async function readHolder(file: string): Promise<{ holder: Holder | null; ageMs: number } | null> {
  try {
    const [text, st] = await Promise.all([readFile(file, "utf8"), stat(file)]);
    return { holder: parseHolder(text), ageMs: Date.now() - st.mtimeMs };
  } catch (e) {
    if (errno(e) === "ENOENT") return null;
    throw new LockError(file, `cannot read (${e instanceof Error ? e.message : String(e)})`);
  }
}

function isStale(h: { holder: Holder | null; ageMs: number }): boolean {
  if (h.ageMs > STALE_MS) return true;
  return h.holder !== null && h.holder.host === hostname() && !alive(h.holder);
}

/** Removes `lock` if it is stale; true when the caller should try to take it again at once. */
async function breakIfStale(lock: string): Promise<boolean> {
  const seen = await readHolder(lock);
  if (seen === null) return true;
  if (!isStale(seen)) return false;
  const breaker = `${lock}.break`;
  if (!(await createExclusive(breaker, JSON.stringify({ ...ownProcess(), host: hostname(), token: randomUUID() })))) {
    // Another process is breaking it; a breaker left by a crash in that microsecond is old.
    const b = await readHolder(breaker);
    if (b !== null && b.ageMs > STALE_MS) await removeIfPresent(breaker);
    return false;
  }
  try {
    // Under the breaker nobody else removes the lock, and nobody can create one while it
    // exists: if it still holds what was judged stale, it is safe to remove.
    const now = await readHolder(lock);
    if (now === null) return true;
    if (now.holder?.token !== seen.holder?.token || !isStale(now)) return false;
    await removeIfPresent(lock);
    return true;
  } finally {
    await removeIfPresent(breaker);
  }
}

/**
 * Runs `edit` holding `<file>.lock`. Waits (with jittered retries) while another process holds
 * it, breaks it when stale, and gives up after WAIT_MS with a LockError saying who holds it.
 */
export async function withLock<T>(file: string, edit: () => Promise<T>): Promise<T> {
  const lock = `${file}.lock`;
  const me: Holder = { ...ownProcess(), host: hostname(), token: randomUUID() };
  const deadline = Date.now() + WAIT_MS;
  let delay = 2;
  for (;;) {
    if (await createExclusive(lock, JSON.stringify(me))) break;
    if (await breakIfStale(lock)) continue;
    if (Date.now() > deadline) {
      const h = await readHolder(lock);
      const who = h?.holder ? `process ${h.holder.pid} on ${h.holder.host}` : "another process";
      throw new LockError(lock, `held by ${who} for ${Math.round((h?.ageMs ?? 0) / 1000)} s; if no meshproxy command is editing this directory, remove the lock file and retry`);
    }
    await sleep(delay + Math.random() * delay);
    delay = Math.min(delay * 2, 50);
  }
  try {
    return await edit();
  } finally {
    // Only our own lock: if it was broken as stale (a holder slower than STALE_MS) and taken
    // by another process, removing it would let a third one in beside that one.
    const h = await readHolder(lock);
    if (h?.holder?.token === me.token) await removeIfPresent(lock);
  }
}
