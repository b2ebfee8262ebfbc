// An HTTP client for the local Consul agent, configured the way Consul's own CLI is:
// -http-addr / CONSUL_HTTP_ADDR (host:port, http://, https://, unix://), token, TLS env vars.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import type { Dispatcher } from "undici";
import { loadUndici, undici } from "../../http/undici.js";
import { goBool } from "./env.js";

export interface AgentTlsOptions {
  readonly caFile?: string;
  readonly caPath?: string;
  readonly clientCert?: string;
  readonly clientKey?: string;
  readonly serverName?: string;
  readonly verify?: boolean;
}

export interface AgentClientOptions {
  readonly httpAddr: string;
  readonly token?: string;
  /** Where the token came from (see {@link tokenSource}), named when the agent answers 403. */
  readonly tokenSource?: string;
  readonly tls?: AgentTlsOptions;
  /** `dc` sent on every request, as Consul's -datacenter does. */
  readonly datacenter?: string;
  /** The largest answer read (bytes); a larger one is refused as bad input. Default MAX_AGENT_ANSWER_BYTES. */
  readonly maxAnswerBytes?: number;
}

/**
 * An agent's answer is held whole to be parsed, so one without a bound (a broken or hostile
 * agent, a proxy in front of it streaming forever) would grow the sidecar until the kernel ends
 * it. A catalog of tens of thousands of instances is a few MiB; 64 MiB is far past any real one.
 */
export const MAX_AGENT_ANSWER_BYTES = 64 * 1024 * 1024;

export interface AgentResponse {
  readonly status: number;
  /** Parsed JSON for 2xx responses; the raw text for errors. */
  readonly body: unknown;
  readonly text: string;
  readonly index: number | null;
  readonly contentHash: string | null;
}

/** The agent answered, but not with what we asked for. */
export class AgentError extends Error {
  constructor(
    readonly status: number,
    readonly path: string,
    message: string,
  ) {
    super(message);
    this.name = "AgentError";
  }
}

export interface ParsedAddr {
  readonly origin: string;
  readonly socketPath?: string;
  readonly pathPrefix: string;
}

/**
 * What a 403 means for the token sent: none (the agent used its default token), one the agent
 * does not know (Consul's `ACL not found`: deleted, expired, another cluster's), or one without
 * the permission the agent names.
 */
export function forbiddenHint(body: string, token: string | undefined, source: string | undefined): string {
  if (!token) return " (no ACL token was sent, so the agent used its default token: give -token, -token-file, CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE)";
  const from = source ?? "-token";
  if (!/Permission denied/i.test(body) && /ACL not found/i.test(body)) return ` (the agent does not know the ACL token from ${from}: deleted, expired or another cluster's; check that source)`;
  return ` (the ACL token from ${from} lacks the permission the agent names)`;
}

/** Reads CONSUL_HTTP_ADDR's forms; CONSUL_HTTP_SSL=true forces https for a bare host:port. */
export function parseAgentAddr(addr: string, forceSsl = false): ParsedAddr {
  if (addr.startsWith("unix://")) return { origin: "http://localhost", socketPath: addr.slice("unix://".length), pathPrefix: "" };
  const withScheme = /^https?:\/\//.test(addr) ? addr : `${forceSsl ? "https" : "http"}://${addr}`;
  let u: URL;
  try {
    u = new URL(withScheme);
  } catch {
    throw new Error(`-http-addr "${addr}": not an address; want host:port, http(s)://host:port or unix:///path`);
  }
  return { origin: `${u.protocol}//${u.host}`, pathPrefix: u.pathname.replace(/\/$/, "") };
}

function readCaPath(dir: string): string[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith(".pem") || f.endsWith(".crt"))
    .map((f) => readFileSync(join(dir, f), "utf8"));
}

export class AgentClient {
  private dispatcherP: Promise<Dispatcher> | null = null;
  private readonly addr: ParsedAddr;
  private readonly connectOptions: { socketPath?: string; ca?: string[]; cert?: string; key?: string; servername?: string; rejectUnauthorized: boolean };

  constructor(private readonly opts: AgentClientOptions) {
    this.addr = parseAgentAddr(opts.httpAddr, goBool(process.env["CONSUL_HTTP_SSL"]) === true);
    const t = opts.tls ?? {};
    const ca = [...(t.caFile ? [readFileSync(t.caFile, "utf8")] : []), ...(t.caPath ? readCaPath(t.caPath) : [])];
    // Files are read (and their errors reported) here; the HTTP client itself is made on first use.
    this.connectOptions = {
      ...(this.addr.socketPath ? { socketPath: this.addr.socketPath } : {}),
      ...(ca.length > 0 ? { ca } : {}),
      ...(t.clientCert ? { cert: readFileSync(t.clientCert, "utf8") } : {}),
      ...(t.clientKey ? { key: readFileSync(t.clientKey, "utf8") } : {}),
      ...(t.serverName ? { servername: t.serverName } : {}),
      rejectUnauthorized: t.verify !== false,
    };
  }

  private dispatcher(): Promise<Dispatcher> {
    this.dispatcherP ??= loadUndici().then((u) => new u.Agent({
      // Blocking queries hold a request for up to `wait`; the watch sets its own deadline.
      headersTimeout: 0,
      bodyTimeout: 0,
      keepAliveTimeout: 30_000,
      connect: this.connectOptions,
    }));
    return this.dispatcherP;
  }

  get address(): string {
    return this.opts.httpAddr;
  }

  async call(method: "GET" | "PUT" | "POST", path: string, opts: { query?: Record<string, string>; body?: unknown; signal?: AbortSignal } = {}): Promise<AgentResponse> {
    const q = new URLSearchParams(opts.query);
    if (this.opts.datacenter && !q.has("dc")) q.set("dc", this.opts.datacenter);
    const qs = q.toString();
    const url = `${this.addr.origin}${this.addr.pathPrefix}${path}${qs ? `?${qs}` : ""}`;
    const headers: Record<string, string> = {};
    if (this.opts.token) headers["x-consul-token"] = this.opts.token;
    if (opts.body !== undefined) headers["content-type"] = "application/json";
    const dispatcher = await this.dispatcher();
    const res = await undici().request(url, {
      method,
      headers,
      dispatcher,
      ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    const text = await readBounded(res.body, this.opts.maxAnswerBytes ?? MAX_AGENT_ANSWER_BYTES, res.statusCode, method, path);
    const header = (name: string): string | null => {
      const v = res.headers[name];
      return typeof v === "string" ? v : null;
    };
    const rawIndex = header("x-consul-index");
    const index = rawIndex !== null && /^\d+$/.test(rawIndex) ? Number(rawIndex) : null;
    const base: Omit<AgentResponse, "body"> = {
      status: res.statusCode,
      text,
      index,
      contentHash: header("x-consul-contenthash"),
    };
    if (res.statusCode < 200 || res.statusCode > 299) {
      const hint = res.statusCode === 403 ? forbiddenHint(text, this.opts.token, this.opts.tokenSource) : "";
      throw new AgentError(res.statusCode, path, `${method} ${path}: HTTP ${res.statusCode}: ${text.trim().slice(0, 200)}${hint}`);
    }
    if (text.length === 0) return { ...base, body: null };
    try {
      return { ...base, body: JSON.parse(text) as unknown };
    } catch (e) {
      throw new AgentError(res.statusCode, path, `${method} ${path}: malformed JSON from the agent (${(e as Error).message})`);
    }
  }

  async close(): Promise<void> {
    if (this.dispatcherP) await (await this.dispatcherP).destroy();
  }
}

/** The answer's text, refused once it passes `max` bytes (the rest is not read: the request is dropped). */
async function readBounded(body: Dispatcher.ResponseData["body"], max: number, status: number, method: string, path: string): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    const b = Buffer.isBuffer(chunk) ? chunk : Buffer.from(String(chunk));
    size += b.length;
    if (size > max) {
      body.destroy();
      throw new AgentError(status, path, `${method} ${path}: the agent's answer is larger than ${max} bytes; refused as bad input (the last good configuration stays in force)`);
    }
    chunks.push(b);
  }
  return Buffer.concat(chunks, size).toString("utf8");
}
