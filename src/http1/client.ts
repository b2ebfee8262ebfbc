// The client side of the HTTP/1 core: keep-alive connections to one origin (the local app),
// each with its own llhttp response parser, one request at a time per connection. Responses
// are handed on as parsed: 1xx heads are dropped, bodies stream, HEAD/204/304 and
// close-delimited bodies are framed as llhttp frames them.
import { connect, type Socket } from "node:net";
import { Http1Parser, http1Core, type MessageEvents } from "./parser.js";

export interface ResponseEvents {
  /** The final head; the body follows unless the request was HEAD or the status has none. */
  head(status: number, statusText: string, rawHeaders: string[]): void;
  body(chunk: Buffer): void;
  end(): void;
  /** Before the head (`answered` false) the caller may still answer the client itself. */
  error(error: Error, answered: boolean): void;
}

export class ResponseTimeoutError extends Error {
  readonly code = "UND_ERR_HEADERS_TIMEOUT";
  constructor(ms: number) {
    super(`no response head within ${ms} ms`);
    this.name = "ResponseTimeoutError";
  }
}

export class ConnectTimeoutError extends Error {
  constructor(address: string, ms: number) {
    super(`connect timeout (attempted address: ${address}, timeout: ${ms} ms)`);
    this.name = "ConnectTimeoutError";
  }
}

export interface OriginOptions {
  readonly host: string;
  readonly port: number;
  readonly connectTimeoutMs: number;
  /** How long an unused connection stays open (undici's keepAliveTimeout). */
  readonly keepAliveTimeoutMs: number;
}

/** One request in flight on a connection: the caller writes its body, or abandons it. */
export interface OriginRequest {
  /** False when the app is not reading fast enough: wait for onDrain. */
  write(chunk: Buffer): boolean;
  onDrain(cb: () => void): void;
  end(): void;
  abort(): void;
  /** Stops reading the response (the client is slower than the app) until resumeResponse. */
  pauseResponse(): void;
  resumeResponse(): void;
}

class OriginConnection implements MessageEvents, OriginRequest {
  readonly socket: Socket;
  private readonly parser: Http1Parser;
  private events: ResponseEvents | null = null;
  private isHead = false;
  private interim = false;
  private answered = false;
  private bodySent = true;
  private keepAlive = false;
  private chunked = false;
  /** Whether any request was sent before: a reused connection the app may have closed meanwhile. */
  used = false;
  private connected = false;
  private responseTimer: NodeJS.Timeout | null = null;
  private responseTimerMs = 0;
  private waitingHead = false;
  private inPool = false;
  private idleTimer: NodeJS.Timeout | null = null;
  private dead = false;
  /** Request and timeout of the one in flight, for a retry on a stale keep-alive connection. */
  private retry: (() => void) | null = null;

  constructor(private readonly pool: OriginPool) {
    const core = http1Core();
    if (!core.ok) throw new Error(`the HTTP/1 core is unavailable: ${core.reason}`);
    const o = pool.options;
    this.parser = new Http1Parser(core.lib, "response", this);
    this.socket = connect({ host: o.host, port: o.port, noDelay: true });
    const timer = setTimeout(() => this.socket.destroy(new ConnectTimeoutError(`${o.host}:${o.port}`, o.connectTimeoutMs)), o.connectTimeoutMs);
    this.socket.once("connect", () => {
      clearTimeout(timer);
      this.connected = true;
    });
    this.socket.on("data", (d: Buffer) => this.data(d));
    this.socket.once("end", () => this.fin());
    this.socket.on("error", (e: Error) => this.failed(e));
    this.socket.once("close", () => {
      clearTimeout(timer);
      this.failed(new Error(this.connected ? "the local app closed the connection" : "the connection to the local app closed"));
    });
  }

  send(head: string, isHead: boolean, hasBody: boolean, chunked: boolean, timeoutMs: number, events: ResponseEvents, retry: (() => void) | null): void {
    this.inPool = false;
    this.events = events;
    this.isHead = isHead;
    this.answered = false;
    this.interim = false;
    this.bodySent = !hasBody;
    this.chunked = chunked;
    this.retry = retry;
    this.used = true;
    this.waitingHead = timeoutMs > 0;
    // One timer per connection, re-armed per request (a cleared timer cannot be re-armed; an
    // expiry that finds the head already in is a no-op).
    if (timeoutMs > 0) {
      if (this.responseTimer && this.responseTimerMs === timeoutMs) this.responseTimer.refresh();
      else {
        if (this.responseTimer) clearTimeout(this.responseTimer);
        this.responseTimerMs = timeoutMs;
        this.responseTimer = setTimeout(() => this.timedOut(timeoutMs), timeoutMs).unref();
      }
    }
    this.socket.write(head, "latin1");
  }

  write(chunk: Buffer): boolean {
    if (this.dead || chunk.length === 0) return true;
    // As undici's headersTimeout: the app's time to answer counts from the last body byte sent,
    // so a long upload is not cut at the request timeout.
    if (this.waitingHead) this.responseTimer?.refresh();
    if (!this.chunked) return this.socket.write(chunk);
    this.socket.write(`${chunk.length.toString(16)}\r\n`, "latin1");
    this.socket.write(chunk);
    return this.socket.write("\r\n", "latin1");
  }

  onDrain(cb: () => void): void {
    this.socket.once("drain", cb);
  }

  end(): void {
    if (this.dead) return;
    if (this.chunked) this.socket.write("0\r\n\r\n", "latin1");
    if (this.waitingHead) this.responseTimer?.refresh();
    this.bodySent = true;
    this.retry = null;
    if (this.events === null) this.release();
  }

  abort(): void {
    this.events = null;
    this.kill();
  }

  pauseResponse(): void {
    this.socket.pause();
  }

  resumeResponse(): void {
    if (!this.dead) this.socket.resume();
  }

  begin(): void {}

  head(_major: number, _minor: number, raw: string[], _m: string, _u: string, status: number, text: string, upgrade: boolean, keepAlive: boolean): number {
    this.retry = null;
    if (status < 200) {
      // 100 Continue and friends are the sidecar's business; a 101 was never asked for.
      this.interim = true;
      if (status === 101 || upgrade) this.failed(new Error("the local app switched protocols without being asked to"));
      return 0;
    }
    this.interim = false;
    this.answered = true;
    this.keepAlive = keepAlive;
    this.waitingHead = false;
    this.events?.head(status, text, raw);
    return this.isHead ? 1 : 0;
  }

  body(chunk: Buffer): void {
    this.events?.body(chunk);
  }

  trailers(): void {
    // HTTP/1.1 clients of the sidecar get no trailers (as with node:http before).
  }

  complete(): void {
    if (this.interim) {
      this.interim = false;
      return;
    }
    const ev = this.events;
    this.events = null;
    ev?.end();
    if (!this.keepAlive) this.kill();
    else if (this.bodySent) this.release();
  }

  private data(d: Buffer): void {
    if (this.dead) return;
    if (this.events === null && !this.answered) {
      // Bytes from an idle connection: not an answer to anything (HTTP/1.1 §9.3.1); it is unusable.
      return this.kill();
    }
    this.executing = true;
    const r = this.parser.execute(d);
    this.executing = false;
    if (typeof r !== "number") this.failed(new Error(`the local app's response did not parse: ${r.reason} (${r.code})`));
    if (this.dead) this.freeParser();
  }

  /** The native parser is freed outside its own callbacks only. */
  private executing = false;
  private parserLive = true;

  private freeParser(): void {
    if (this.executing || !this.parserLive) return;
    this.parserLive = false;
    this.parser.free();
  }

  private fin(): void {
    // A close-delimited body ends here; anything else cut short is an error.
    if (this.dead) return;
    const f = this.parser.finish();
    if (f) this.failed(new Error(`the local app closed the connection mid-response: ${f.reason}`));
    else this.failed(new Error("the local app closed the connection"));
  }

  private timedOut(ms: number): void {
    if (!this.waitingHead || this.answered || this.events === null) return;
    this.failed(new ResponseTimeoutError(ms));
  }

  private failed(e: Error): void {
    if (this.dead) return;
    const ev = this.events;
    const retry = this.retry;
    this.events = null;
    this.kill();
    if (!ev) return;
    // A keep-alive connection the app closed just as it was reused: one fresh try for a request
    // without a body, before any byte of an answer (undici does the same for idempotent requests).
    if (retry && !this.answered && !(e instanceof ResponseTimeoutError)) return retry();
    ev.error(e, this.answered);
  }

  private release(): void {
    if (this.dead) return;
    this.answered = false;
    this.inPool = true;
    this.pool.idle.push(this);
    const ms = this.pool.options.keepAliveTimeoutMs;
    if (this.idleTimer) this.idleTimer.refresh();
    else this.idleTimer = setTimeout(() => this.idleExpired(), ms).unref();
  }

  /** Unused for keepAliveTimeoutMs: closed. The timer is re-armed at each release, not cleared at each use. */
  private idleExpired(): void {
    if (this.inPool) this.kill();
  }

  kill(): void {
    if (this.dead) return;
    this.dead = true;
    if (this.responseTimer) clearTimeout(this.responseTimer);
    if (this.idleTimer) clearTimeout(this.idleTimer);
    const i = this.pool.idle.indexOf(this);
    if (i >= 0) this.pool.idle.splice(i, 1);
    this.pool.all.delete(this);
    this.socket.destroy();
    this.freeParser();
  }

  get alive(): boolean {
    return !this.dead;
  }
}

/** Keep-alive connections to one origin; the most recently used idle one is taken first. */
export class OriginPool {
  /** @internal */
  readonly idle: OriginConnection[] = [];
  /** @internal */
  readonly all = new Set<OriginConnection>();
  private closed = false;

  constructor(readonly options: OriginOptions) {}

  /**
   * Sends a request head (`head` ends with the blank line). `hasBody`: the caller writes the body
   * through the returned handle, `chunked` if its length is unknown.
   */
  request(head: string, isHead: boolean, hasBody: boolean, chunked: boolean, timeoutMs: number, events: ResponseEvents): OriginRequest {
    if (this.closed) {
      events.error(new Error("the local-app pool is closed"), false);
      return NOOP;
    }
    let conn = this.idle.pop();
    while (conn && !conn.alive) conn = this.idle.pop();
    if (!conn) {
      conn = new OriginConnection(this);
      this.all.add(conn);
    }
    const reused = conn.used;
    const retry = reused && !hasBody ? () => void this.request(head, isHead, false, false, timeoutMs, events) : null;
    conn.send(head, isHead, hasBody, chunked, timeoutMs, events, retry);
    return conn;
  }

  close(): void {
    this.closed = true;
    for (const c of [...this.all]) c.kill();
  }
}

const NOOP: OriginRequest = { write: () => true, onDrain: () => {}, end: () => {}, abort: () => {}, pauseResponse: () => {}, resumeResponse: () => {} };
