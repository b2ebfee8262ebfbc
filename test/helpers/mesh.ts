// Test helpers: real `meshproxy` processes, echo apps, temp state directories.
// Everything waits on events (log lines, sockets), never on sleeps, and registers its cleanup.
import { spawn, type ChildProcess } from "node:child_process";
import { createServer, connect, type Server, type Socket, type AddressInfo } from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { once } from "node:events";
import { ignoreRejection } from "./ignore.js";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const BIN = join(ROOT, "dist", "cli", "main.js");

/** The bit of tap's Test we use, so helpers work in any subtest. */
export interface Teardown {
  teardown(fn: () => unknown): void;
}

export async function tempDir(t: Teardown, prefix = "meshproxy-test-"): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

export type LogLine = Record<string, unknown> & { "@message": string; "@level": string };

export interface MeshProcess {
  readonly child: ChildProcess;
  /** Every JSON log line so far. */
  readonly logs: LogLine[];
  /** Raw stderr text that was not JSON (usage errors, crashes). */
  readonly stderrText: () => string;
  readonly stdoutText: () => string;
  /** Resolves with the first log line (past or future) matching. */
  waitForLog(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** Resolves with the exit code. */
  readonly exited: Promise<number | null>;
  /** SIGTERM and wait for exit. */
  stop(): Promise<number | null>;
}

/** Runs the meshproxy binary with JSON logs. Killed at teardown if still running. */
export function runMeshproxy(t: Teardown, args: string[], env: NodeJS.ProcessEnv = {}): MeshProcess {
  const child = spawn(process.execPath, [BIN, ...args], {
    env: { ...process.env, CONSUL_HTTP_ADDR: "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: LogLine[] = [];
  let stderr = "";
  let stdout = "";
  let partial = "";
  const waiters: Array<{ pred: (l: LogLine) => boolean; resolve: (l: LogLine) => void }> = [];
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => {
    partial += d;
    let nl: number;
    while ((nl = partial.indexOf("\n")) >= 0) {
      const line = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      let parsed: LogLine | null = null;
      try {
        const v: unknown = JSON.parse(line);
        if (v && typeof v === "object" && "@message" in v) parsed = v as LogLine;
      } catch {
        /* not JSON */
      }
      if (!parsed) {
        stderr += line + "\n";
        continue;
      }
      logs.push(parsed);
      for (const w of [...waiters]) {
        if (w.pred(parsed)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(parsed);
        }
      }
    }
  });
  // "close", not "exit": by then stdout and stderr are fully read, so a test that awaits
  // `exited` sees the last line the process wrote.
  const exited = new Promise<number | null>((resolve) => child.once("close", (code) => resolve(code)));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await exited;
    }
  });
  const mp: MeshProcess = {
    child,
    logs,
    stderrText: () => stderr,
    stdoutText: () => stdout,
    exited,
    waitForLog(pred, timeoutMs = 15_000) {
      const hit = logs.find(pred);
      if (hit) return Promise.resolve(hit);
      return new Promise<LogLine>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for a log line; stderr:\n${stderr}\nlogs:\n${logs.map((l) => JSON.stringify(l)).join("\n")}`)), timeoutMs);
        const w = {
          pred,
          resolve: (l: LogLine) => {
            clearTimeout(timer);
            resolve(l);
          },
        };
        waiters.push(w);
        exited.then(
          (code) => {
            if (waiters.includes(w)) {
              clearTimeout(timer);
              reject(new Error(`meshproxy exited (${code}) before the awaited log line; stderr:\n${stderr}\nlogs:\n${logs.map((l) => JSON.stringify(l)).join("\n")}`));
            }
          },
          ignoreRejection("`exited` only ever resolves (on the child's close event)"),
        );
      });
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      return exited;
    },
  };
  return mp;
}

export interface Sidecar extends MeshProcess {
  /** `host:port` of the public listener, if any. */
  readonly publicAddr: string | null;
  /** upstream name → `host:port`. */
  readonly upstreams: Record<string, string>;
  readonly adminAddr: string;
}

export interface SidecarOptions {
  /** -concurrency N: a primary and N workers; 1 (the default) is one process. */
  readonly concurrency?: number;
}

/**
 * Starts a sidecar with port-0 listeners and waits until it is ready.
 * `args` are extra flags, e.g. ["-service", "web", "-upstream", "db:0"].
 */
export async function startSidecar(t: Teardown, dataDir: string, args: string[], env: NodeJS.ProcessEnv = {}, opts: SidecarOptions = {}): Promise<Sidecar> {
  const workers = opts.concurrency ?? 1;
  const concurrency = workers > 1 ? ["-concurrency", String(workers)] : [];
  const p = runMeshproxy(t, ["-data-dir", dataDir, "-log-json", "-admin-addr", "127.0.0.1:0", ...concurrency, ...args], env);
  // Under -concurrency every worker logs its own "proxy ready"; the sidecar is ready when the
  // primary's (which counts the workers) says all of them serve. Starting N+1 processes on a
  // loaded machine takes longer than one.
  const isReady = (l: LogLine) => l["@message"] === "proxy ready" && (workers === 1 || l["workers"] === workers);
  const ready = await p.waitForLog(isReady, workers > 1 ? 30_000 : undefined);
  const admin = await p.waitForLog((l) => l["@message"] === "admin API listening");
  const upstreams: Record<string, string> = {};
  for (const [k, v] of Object.entries(ready)) if (k.startsWith("upstream.")) upstreams[k.slice(9)] = String(v);
  return Object.assign(p, {
    publicAddr: typeof ready["public"] === "string" ? ready["public"] : null,
    upstreams,
    adminAddr: String(admin["address"]),
  });
}

export function hostPort(addr: string): { host: string; port: number } {
  const i = addr.lastIndexOf(":");
  return { host: addr.slice(0, i), port: Number(addr.slice(i + 1)) };
}

/**
 * A TCP app on 127.0.0.1:0 with allowHalfOpen; `handle` decides what it does per connection.
 * net.Server has no closeAllConnections (that is http.Server), so its sockets are tracked and
 * destroyed at teardown.
 */
export async function tcpApp(t: Teardown, handle: (s: Socket) => void): Promise<{ server: Server; port: number }> {
  const open = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (s) => {
    open.add(s);
    s.once("close", () => open.delete(s));
    s.on("error", () => s.destroy());
    handle(s);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(
    () =>
      new Promise<void>((r) => {
        server.close(() => r());
        for (const s of open) s.destroy();
      }),
  );
  return { server, port: (server.address() as AddressInfo).port };
}

/** A TCP echo server that supports half-close (echoes, then ends after the client ends). */
export async function echoServer(t: Teardown): Promise<{ server: Server; port: number; connections: () => number }> {
  let n = 0;
  const app = await tcpApp(t, (s) => {
    n++;
    s.pipe(s);
  });
  return { ...app, connections: () => n };
}

/** Connects, sends `data`, half-closes, and collects everything until the other side ends. */
export async function roundTrip(addr: string, data: Buffer | string, timeoutMs = 30_000): Promise<Buffer> {
  const { host, port } = hostPort(addr);
  const s: Socket = connect({ host, port, allowHalfOpen: true });
  const chunks: Buffer[] = [];
  return new Promise<Buffer>((resolve, reject) => {
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`roundTrip to ${addr} timed out after ${timeoutMs} ms (got ${Buffer.concat(chunks).length} bytes)`));
    }, timeoutMs);
    s.on("data", (d: Buffer) => chunks.push(d));
    s.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    s.on("close", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
    s.on("connect", () => s.end(data));
  });
}
