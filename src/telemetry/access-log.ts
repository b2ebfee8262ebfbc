// Access log: one JSON line per connection (L4) and per request (L7), with Envoy's response
// flags. Lines are batched and written on the next turn of the event loop; when the destination
// cannot keep up, lines are dropped and counted rather than queued without bound, so logging
// never slows the data path. A file is reopened on reopen() (SIGUSR1): after logrotate's
// `mv access.log access.log.1`, lines go to a new access.log, as Envoy's /reopen_logs.
import { createWriteStream, type WriteStream } from "node:fs";
import type { Counter } from "prom-client";

export interface L4Entry {
  readonly start_time: string;
  readonly duration_ms: number;
  readonly protocol: "tcp";
  readonly direction: "inbound" | "outbound";
  readonly listener: string;
  readonly upstream_cluster?: string;
  readonly upstream_host?: string;
  readonly source_identity?: string;
  readonly bytes_received: number;
  readonly bytes_sent: number;
  readonly response_flags: string;
  readonly error?: string;
}

export interface L7Entry {
  readonly start_time: string;
  readonly duration_ms: number;
  readonly protocol: string;
  readonly direction: "inbound" | "outbound";
  readonly method: string;
  readonly path: string;
  readonly authority?: string;
  readonly status: number;
  readonly response_flags: string;
  readonly upstream_cluster?: string;
  readonly upstream_host?: string;
  readonly attempts?: number;
  readonly source_identity?: string;
  readonly user_agent?: string;
  readonly request_id?: string;
  readonly trace_id?: string;
}

export type AccessLogTarget = "off" | "stdout" | "stderr" | { readonly file: string };

/** Parses `-access-log`: off, stdout, stderr, or a file path. */
export function parseAccessLogTarget(v: string): AccessLogTarget {
  if (v === "" || v === "off") return "off";
  if (v === "stdout" || v === "stderr") return v;
  return { file: v };
}

function fileStream(file: string): WriteStream {
  return createWriteStream(file, { flags: "a", mode: 0o640 });
}

const MAX_PENDING_BYTES = 4 * 1024 * 1024;

export class AccessLog {
  private out: NodeJS.WritableStream | null;
  private readonly file: string | null;
  private pending: string[] = [];
  private pendingBytes = 0;
  private scheduled = false;
  private blocked = false;

  constructor(
    target: AccessLogTarget,
    private readonly dropped: Counter<string> | null = null,
  ) {
    this.file = typeof target === "object" ? target.file : null;
    if (target === "off") this.out = null;
    else if (target === "stdout") this.out = process.stdout;
    else if (target === "stderr") this.out = process.stderr;
    else this.out = fileStream(target.file);
    if (this.out) this.watch(this.out);
  }

  /** Backpressure and failure of `out`, while it is the current stream (a reopened one replaces it). */
  private watch(out: NodeJS.WritableStream): void {
    out.on("drain", () => {
      if (this.out === out) this.blocked = false;
    });
    out.on("error", () => {
      if (this.out === out) this.blocked = true;
    });
  }

  /** The file lines are written to; null: off, stdout or stderr. */
  get path(): string | null {
    return this.file;
  }

  /**
   * Log rotation (SIGUSR1): lines logged so far go to the file as it was opened (renamed by
   * then), the file is closed, and the path is opened again, created if it is gone, so every line
   * logged from now on is in the new file. Resolves once it is open; rejects (and lines are
   * dropped and counted, as for a destination that cannot keep up) when it cannot be, until the
   * next reopen. Nothing to do for stdout, stderr or off.
   */
  reopen(): Promise<void> {
    if (this.file === null || this.out === null) return Promise.resolve();
    this.flush();
    this.out.end();
    const next = fileStream(this.file);
    this.out = next;
    this.blocked = false;
    this.watch(next);
    return new Promise<void>((resolve, reject) => {
      const onOpen = (): void => {
        next.off("error", onError);
        resolve();
      };
      const onError = (e: Error): void => {
        next.off("open", onOpen);
        reject(e);
      };
      next.once("open", onOpen);
      next.once("error", onError);
    });
  }

  get enabled(): boolean {
    return this.out !== null;
  }

  log(e: L4Entry | L7Entry): void {
    if (!this.out) return;
    const line = JSON.stringify(e) + "\n";
    if (this.blocked || this.pendingBytes + line.length > MAX_PENDING_BYTES) {
      this.dropped?.inc();
      return;
    }
    this.pending.push(line);
    this.pendingBytes += line.length;
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  private flush(): void {
    this.scheduled = false;
    if (!this.out || this.pending.length === 0) return;
    const chunk = this.pending.join("");
    this.pending = [];
    this.pendingBytes = 0;
    if (!this.out.write(chunk)) this.blocked = true;
  }

  close(): void {
    this.flush();
    if (this.out && this.out !== process.stdout && this.out !== process.stderr) this.out.end();
  }
}

/** The request-derived fields of an L7 entry, the same on both sides of the mesh. */
export function requestFields(
  req: { readonly method?: string | undefined; readonly url?: string | undefined; readonly httpVersion: string; readonly headers: Readonly<Record<string, string | string[] | undefined>> },
  startTime: number,
  start: number,
): Pick<L7Entry, "start_time" | "duration_ms" | "protocol" | "method" | "path" | "user_agent" | "request_id"> {
  const ua = req.headers["user-agent"];
  const rid = req.headers["x-request-id"];
  return {
    start_time: new Date(startTime).toISOString(),
    duration_ms: Math.round((performance.now() - start) * 1000) / 1000,
    protocol: `HTTP/${req.httpVersion}`,
    method: req.method ?? "GET",
    path: req.url ?? "/",
    ...(typeof ua === "string" ? { user_agent: ua } : {}),
    ...(typeof rid === "string" ? { request_id: rid } : {}),
  };
}
