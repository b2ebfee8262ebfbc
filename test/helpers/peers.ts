// Helpers for tests that involve more than meshproxy itself: other programs (psql, curl,
// openssl, PostgreSQL), the admin metrics endpoint, and polling the mesh with real connections.
import { spawn } from "node:child_process";
import { createServer, type AddressInfo, type Server } from "node:net";
import { existsSync } from "node:fs";
import { chown, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { once } from "node:events";
import { roundTrip, type LogLine, type MeshProcess, type Teardown } from "./mesh.js";
import { ignoreRejection } from "./ignore.js";

export interface CommandResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs a program to completion and returns its output. `input` is written to stdin (then
 * closed). Killed at teardown if still running, so a hung peer never outlives its test.
 */
export function runCommand(
  t: Teardown,
  cmd: string,
  args: readonly string[],
  opts: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<CommandResult> {
  const child = spawn(cmd, [...args], { env: { ...process.env, ...opts.env }, stdio: ["pipe", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  child.stdin.on("error", () => {}); // the program may exit without reading its input
  child.stdin.end(opts.input ?? "");
  const done = new Promise<CommandResult>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${cmd} ${args.join(" ")} did not finish in ${opts.timeoutMs ?? 30_000} ms; stdout:\n${stdout}\nstderr:\n${stderr}`));
    }, opts.timeoutMs ?? 30_000);
    child.once("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${cmd}: ${e.message}`));
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await done.catch(ignoreRejection("killed at teardown: the test did not wait for its outcome, which no longer matters"));
    }
  });
  return done;
}

/** A port that was free a moment ago (bind 0, read it, close): for programs that need a number. */
export async function freePort(): Promise<number> {
  const s = createServer();
  s.listen(0, "127.0.0.1");
  await once(s, "listening");
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** Holds a loopback port for the rest of the test, so something else finds it taken. */
export async function occupyPort(t: Teardown): Promise<{ server: Server; address: string }> {
  const s = createServer((c) => c.destroy());
  s.listen({ host: "127.0.0.1", port: 0, exclusive: true });
  await once(s, "listening");
  t.teardown(() => new Promise<void>((r) => s.close(() => r())));
  const { port } = s.address() as AddressInfo;
  return { server: s, address: `127.0.0.1:${port}` };
}

// ---- metrics ----

export async function scrape(adminAddr: string): Promise<string> {
  const res = await fetch(`http://${adminAddr}/stats/prometheus`);
  if (res.status !== 200) throw new Error(`GET /stats/prometheus on ${adminAddr}: ${res.status}`);
  return res.text();
}

/**
 * The value of one sample in Prometheus text: `name` with at least the given labels. Null when
 * no such sample exists (a missing series is not the same as zero).
 */
export function sample(text: string, name: string, labels: Readonly<Record<string, string>> = {}): number | null {
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = new Map<string, string>();
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) have.set(l[1]!, l[2]!);
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) return Number(m[3]);
  }
  return null;
}

export async function metric(adminAddr: string, name: string, labels: Readonly<Record<string, string>> = {}): Promise<number | null> {
  return sample(await scrape(adminAddr), name, labels);
}

// ---- logs ----

/** The first log line matching `pred` written after this call (earlier ones do not count). */
export function nextLog(p: MeshProcess, pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine> {
  const from = p.logs.length;
  return p.waitForLog((l) => p.logs.indexOf(l) >= from && pred(l), timeoutMs);
}

// ---- the mesh, by connection ----

/** True when `payload` comes back from an echo app through `addr`; false when the mesh refuses. */
export async function echoes(addr: string, payload = "ping\n", timeoutMs = 2000): Promise<boolean> {
  try {
    return (await roundTrip(addr, payload, timeoutMs)).toString() === payload;
  } catch {
    return false;
  }
}

/**
 * Calls `check` back to back (each call is a real connection, so this waits on sockets, not on
 * timers) until it returns true; resolves with the milliseconds that took, or null if it never did.
 */
export async function pollUntil(check: () => Promise<boolean>, timeoutMs: number, since = performance.now()): Promise<number | null> {
  const deadline = since + timeoutMs;
  while (performance.now() < deadline) {
    if (await check()) return performance.now() - since;
  }
  return null;
}

// ---- PostgreSQL ----

export const PG_BIN = "/usr/lib/postgresql/15/bin";

/** Runs a PostgreSQL tool as the `postgres` user when we are root (initdb and postgres refuse root). */
function pgCommand(tool: string, args: string[]): [string, string[]] {
  const bin = join(PG_BIN, tool);
  return process.getuid?.() === 0 ? ["runuser", ["-u", "postgres", "--", bin, ...args]] : [bin, args];
}

async function postgresIds(t: Teardown): Promise<{ uid: number; gid: number }> {
  const [u, g] = await Promise.all([runCommand(t, "id", ["-u", "postgres"]), runCommand(t, "id", ["-g", "postgres"])]);
  if (u.code !== 0 || g.code !== 0) throw new Error(`no "postgres" user to run PostgreSQL as (id: ${u.stderr}${g.stderr}); install the Debian package postgresql-15`);
  return { uid: Number(u.stdout.trim()), gid: Number(g.stdout.trim()) };
}

/**
 * A throwaway PostgreSQL 15 server on 127.0.0.1 with trust authentication. Its directory and
 * process are removed at teardown (stop first, then the directory its pid file is in).
 */
export async function startPostgres(t: Teardown): Promise<{ port: number; dir: string }> {
  for (const tool of ["initdb", "pg_ctl", "postgres"]) {
    if (!existsSync(join(PG_BIN, tool))) {
      throw new Error(`PostgreSQL 15 is not installed: ${join(PG_BIN, tool)} is missing. Install the Debian package postgresql-15 (.ci/run does).`);
    }
  }
  const dir = await mkdtemp(join(tmpdir(), "meshproxy-pg-"));
  const data = join(dir, "data");
  let started = false;
  t.teardown(async () => {
    if (started) {
      const [cmd, args] = pgCommand("pg_ctl", ["-D", data, "stop", "-m", "immediate", "-w"]);
      await new Promise<void>((resolve) => spawn(cmd, args, { stdio: "ignore" }).once("close", () => resolve()));
    }
    await rm(dir, { recursive: true, force: true });
  });
  if (process.getuid?.() === 0) {
    const { uid, gid } = await postgresIds(t);
    await chown(dir, uid, gid);
  }
  const run = async (tool: string, args: string[]) => {
    const [cmd, full] = pgCommand(tool, args);
    const r = await runCommand(t, cmd, full, { timeoutMs: 60_000 });
    if (r.code !== 0) throw new Error(`${tool} failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  };
  await run("initdb", ["-A", "trust", "-U", "postgres", "-N", "-D", data]);
  const port = await freePort();
  started = true; // from here a server may be running, even if pg_ctl reports a failure
  // -l: the server writes to a file, not to pg_ctl's pipes (which would otherwise stay open).
  await run("pg_ctl", ["-D", data, "-l", join(dir, "server.log"), "-o", `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`, "-w", "-t", "30", "start"]);
  return { port, dir };
}

/**
 * The cluster an upstream listener sends to, as the proxy's /config_dump reports it: metrics are
 * labelled by cluster name, and that name is the control plane's to choose (e.g. "db" or
 * Consul's "db.default.dc1.internal.<trust domain>").
 */
export async function upstreamCluster(adminAddr: string, upstream: string): Promise<string> {
  const res = await fetch(`http://${adminAddr}/config_dump`);
  const dump: unknown = await res.json();
  const ups = typeof dump === "object" && dump !== null && "upstreams" in dump ? dump.upstreams : undefined;
  const list: unknown[] = Array.isArray(ups) ? ups : [];
  for (const u of list) {
    if (typeof u === "object" && u !== null && "name" in u && u.name === upstream && "cluster" in u && typeof u.cluster === "string") return u.cluster;
  }
  throw new Error(`no upstream "${upstream}" in ${adminAddr}/config_dump`);
}
