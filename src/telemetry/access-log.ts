// Access log: one JSON line per connection (L4) and per request (L7), with Envoy's response
// flags. Lines are batched and written on the next turn of the event loop; when the destination
// cannot keep up, lines are dropped and counted rather than queued without bound, so logging
// never slows the data path.
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

function fileStream(file: string): NodeJS.WritableStream {
  const w: WriteStream = createWriteStream(file, { flags: "a", mode: 0o640 });
  return w;
}

const MAX_PENDING_BYTES = 4 * 1024 * 1024;

export class AccessLog {
  private readonly out: NodeJS.WritableStream | null;
  private pending: string[] = [];
  private pendingBytes = 0;
  private scheduled = false;
  private blocked = false;

  constructor(
    target: AccessLogTarget,
    private readonly dropped: Counter<string> | null = null,
  ) {
    if (target === "off") this.out = null;
    else if (target === "stdout") this.out = process.stdout;
    else if (target === "stderr") this.out = process.stderr;
    else this.out = fileStream(target.file);
    this.out?.on("drain", () => (this.blocked = false));
    this.out?.on("error", () => (this.blocked = true));
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
