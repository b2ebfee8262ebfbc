// The client side of the HTTP/1 core: keep-alive connections to one origin (the local app, or a
// peer sidecar over mTLS), each with its own llhttp response parser, one request at a time per
// connection. Responses are handed on as parsed: 1xx heads are dropped, bodies stream, HEAD/204/304
// and close-delimited bodies are framed as llhttp frames them. Nothing is written to a connection
// before it is up (for mTLS: handshake done and the peer's identity verified).
import { connect, type Socket } from "node:net";
import { Http1Parser, http1Core, type MessageEvents } from "./parser.js";
import { lowerName } from "./fields.js";
import { connectDeadline } from "../tcp/connect-deadline.js";
import { borrowsReadBuffer, readAcceptedInto, readsInto } from "../tcp/read-buffer.js";
import { holdWrite, joinHead, JOIN_MAX, parseEnded, parseStarted, type HeldWrite } from "./held-writes.js";

export interface ResponseEvents {
  /** The final head; the body follows unless the request was HEAD or the status has none. */
  head(status: number, statusText: string, rawHeaders: string[]): void;
  body(chunk: Buffer): void;
  end(): void;
  /**
   * Before the head (`answered` false) the caller may still answer the client itself; after it,
   * too, when the failure came in the parse that delivered the head and the head is still held
   * (server.ts `retractHead`).
   */
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

/** The peer's answer did not parse (Envoy's upstream protocol error). */
export class ResponseParseError extends Error {
  constructor(peer: string, reason: string, code: string) {
    super(`the response of ${peer} did not parse: ${reason} (${code})`);
    this.name = "ResponseParseError";
  }
}

export class BodyTimeoutError extends Error {
  readonly code = "UND_ERR_BODY_TIMEOUT";
  constructor(ms: number) {
    super(`no response body bytes for ${ms} ms`);
    this.name = "BodyTimeoutError";
  }
}

/** Opens one connection; `done` once it can carry a request (or why not). */
export type Dial = (done: (err: Error | null) => void) => Socket;

export interface OriginOptions {
  readonly host: string;
  readonly port: number;
  readonly connectTimeoutMs: number;
  /** How long an unused connection stays open (undici's keepAliveTimeout); a shorter `Keep-Alive: timeout=` from the peer wins. */
  readonly keepAliveTimeoutMs: number;
  /** How connections are made (the mTLS connector); a plain TCP connect to host:port when absent. */
  readonly dial?: Dial;
  /** At most this many connections; more requests wait for one (pool.full, pool.wait). */
  readonly maxConnections?: number;
  /** Who is at the other end, for error messages ("the local app", "upstream 10.0.0.5:21000"). */
  readonly peer?: string;
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

const KEEP_ALIVE_TIMEOUT = /(?:^|[,\s])timeout=(\d+)/i;

class OriginConnection implements MessageEvents, OriginRequest, HeldWrite {
  readonly socket: Socket;
  private readonly parser: Http1Parser;
  private events: ResponseEvents | null = null;
  private isHead = false;
  private interim = false;
  private answered = false;
  private bodySent = true;
  private keepAlive = false;
  private chunked = false;
  /** Whether any request was sent before: a reused connection the peer may have closed meanwhile. */
  used = false;
  private connected = false;
  /** What was written before the connection was up, in order; null once it is. */
  private queued: (string | Buffer)[] | null = [];
  private drainWaiters: (() => void)[] | null = null;
  private responseTimer: NodeJS.Timeout | null = null;
  private responseTimerMs = 0;
  private waitingHead = false;
  private bodyTimer: NodeJS.Timeout | null = null;
  private bodyTimerMs = 0;
  private bodyTimeoutMs = 0;
  private inBody = false;
  private inPool = false;
  private idleTimer: NodeJS.Timeout | null = null;
  private idleMs: number;
  private idleTimerMs = 0;
  /** The last Keep-Alive value read, so the same hint on every response is parsed once. */
  private hint = "";
  private dead = false;
  /** Reads stopped for the client's backpressure (pauseResponse), until resumeResponse or the answer's end. */
  private paused = false;
  /** The request in flight, when it may be sent again on a fresh connection (this one was stale). */
  private retry: ResendableRequest | null = null;
  /** The request head, held for the body's first bytes (or the end of the parse or tick). */
  private heldHead: string | null = null;

  private readonly onRead = (d: Buffer): boolean => {
    this.data(d);
    return true;
  };

  constructor(private readonly pool: OriginPool) {
    const core = http1Core();
    if (!core.ok) throw new Error(`the HTTP/1 core is unavailable: ${core.reason}`);
    const o = pool.options;
    this.idleMs = o.keepAliveTimeoutMs;
    this.parser = new Http1Parser(core.lib, "response", this);
    if (o.dial) {
      // A dialled (mTLS) connection is TLS over a TCP socket of the dialler's own, which Node
      // never gives `onread`; it is switched to the shared read buffer the way accepted sockets
      // are (read-buffer.ts), or reads 'data' events where this Node does not allow it. (Session
      // 14 dropped onread here for a higher Node 24 peak; with the young generation bounded
      // since, the peak does not move: PERF-LOG, session 19.)
      const socket = o.dial((err) => (err ? this.failed(err) : this.up()));
      this.socket = socket;
      if (!readAcceptedInto(socket, this.onRead)) socket.on("data", this.onRead);
    } else {
      // Responses of the app are parsed straight from the shared read buffer: no Readable,
      // 'data' event or per-read allocation (pause() stops the reads, as on a Readable).
      this.socket = connect({ host: o.host, port: o.port, noDelay: true, onread: readsInto(this.onRead) });
      const socket = this.socket;
      const cancel = connectDeadline(o.connectTimeoutMs, () => socket.connecting, () => socket.destroy(new ConnectTimeoutError(`${o.host}:${o.port}`, o.connectTimeoutMs)));
      socket.once("connect", () => {
        cancel();
        this.up();
      });
      socket.once("close", cancel);
    }
    // With a dialler, how connecting failed is the dialler's to say (a ConnectFailure, which the
    // router retries as one); the socket's own events count once the connection is up.
    const dialled = o.dial !== undefined;
    this.socket.once("end", () => {
      if (this.connected || !dialled) this.fin();
    });
    this.socket.on("error", (e: Error) => {
      if (this.connected || !dialled) this.failed(e);
    });
    this.socket.once("close", () => {
      if (this.connected || !dialled) this.failed(new Error(this.connected ? `${pool.peer} closed the connection` : `the connection to ${pool.peer} closed`));
    });
  }

  /** The connection is usable: what was queued goes out, and writers waiting for room are told. */
  private up(): void {
    if (this.dead) return;
    this.connected = true;
    const q = this.queued;
    this.queued = null;
    let room = true;
    if (q) for (const d of q) room = typeof d === "string" ? this.socket.write(d, "latin1") : this.socket.write(d);
    const w = this.drainWaiters;
    this.drainWaiters = null;
    if (w) {
      if (room) for (const cb of w) cb();
      else for (const cb of w) this.socket.once("drain", cb);
    }
  }

  private put(d: string | Buffer): boolean {
    if (this.queued) {
      this.queued.push(d);
      return false;
    }
    return typeof d === "string" ? this.socket.write(d, "latin1") : this.socket.write(d);
  }

  send(head: string, isHead: boolean, hasBody: boolean, chunked: boolean, timeoutMs: number, bodyTimeoutMs: number, events: ResponseEvents, retry: ResendableRequest | null): void {
    this.inPool = false;
    this.events = events;
    this.isHead = isHead;
    this.answered = false;
    this.interim = false;
    this.inBody = false;
    this.bodySent = !hasBody;
    this.chunked = chunked;
    this.retry = retry;
    this.used = true;
    this.waitingHead = timeoutMs > 0;
    this.bodyTimeoutMs = bodyTimeoutMs;
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
    // A head with a Content-Length body waits for its first bytes (held-writes.ts): a small body
    // (the router buffers those for retries) leaves with it in one write.
    if (hasBody && !chunked) {
      this.heldHead = head;
      holdWrite(this);
    } else this.put(head);
  }

  flushHeld(): void {
    const head = this.heldHead;
    if (head === null) return;
    this.heldHead = null;
    if (!this.dead) this.put(head);
  }

  write(chunk: Buffer): boolean {
    if (this.dead || chunk.length === 0) return true;
    // As undici's headersTimeout: the peer's time to answer counts from the last body byte sent,
    // so a long upload is not cut at the request timeout.
    if (this.waitingHead) this.responseTimer?.refresh();
    const head = this.heldHead;
    if (head !== null) {
      this.heldHead = null;
      if (chunk.length <= JOIN_MAX) return this.put(joinHead(head, chunk));
      this.put(head);
    }
    if (!this.chunked) return this.put(chunk);
    this.put(`${chunk.length.toString(16)}\r\n`);
    this.put(chunk);
    return this.put("\r\n");
  }

  onDrain(cb: () => void): void {
    if (this.queued) (this.drainWaiters ??= []).push(cb);
    else this.socket.once("drain", cb);
  }

  end(): void {
    if (this.dead) return;
    this.flushHeld();
    if (this.chunked) this.put("0\r\n\r\n");
    if (this.waitingHead) this.responseTimer?.refresh();
    this.bodySent = true;
    this.retry = null;
    if (this.events === null) this.releaseWhenParsed();
  }

  abort(): void {
    this.events = null;
    this.kill();
  }

  pauseResponse(): void {
    this.paused = true;
    this.socket.pause();
  }

  resumeResponse(): void {
    if (this.dead || !this.paused) return;
    this.paused = false;
    this.socket.resume();
  }

  begin(): void {
    // A message with no request outstanding: bytes the peer sent after its answer, in the same
    // read (later reads are caught in data()). Not an answer to anything, and were the connection
    // reused they would be read as the next request's answer: it is unusable.
    if (this.events === null) this.kill();
  }

  head(_major: number, _minor: number, raw: string[], _m: string, _u: string, status: number, text: string, upgrade: boolean, keepAlive: boolean): number {
    this.retry = null;
    if (status < 200) {
      // 100 Continue and friends are the sidecar's business; a 101 was never asked for.
      this.interim = true;
      if (status === 101 || upgrade) this.failed(new Error(`${this.pool.peer} switched protocols without being asked to`));
      return 0;
    }
    this.interim = false;
    this.answered = true;
    this.keepAlive = keepAlive;
    this.waitingHead = false;
    if (keepAlive) this.keepAliveHint(raw);
    if (this.bodyTimeoutMs > 0) {
      this.inBody = true;
      if (this.bodyTimer && this.bodyTimerMs === this.bodyTimeoutMs) this.bodyTimer.refresh();
      else {
        if (this.bodyTimer) clearTimeout(this.bodyTimer);
        const ms = (this.bodyTimerMs = this.bodyTimeoutMs);
        this.bodyTimer = setTimeout(() => this.bodyTimedOut(ms), ms).unref();
      }
    }
    this.events?.head(status, text, raw);
    return this.isHead ? 1 : 0;
  }

  /**
   * A peer that says how long it keeps an idle connection (`Keep-Alive: timeout=N`) closes it
   * then: this side lets it go a second earlier, so a request is never sent into that close
   * (undici does the same).
   */
  private keepAliveHint(raw: readonly string[]): void {
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const n = raw[i]!;
      if (n.length !== 10 || lowerName(n) !== "keep-alive") continue;
      const v = raw[i + 1]!;
      if (v === this.hint) return;
      this.hint = v;
      const m = KEEP_ALIVE_TIMEOUT.exec(v);
      if (m) this.idleMs = Math.max(0, Math.min(this.pool.options.keepAliveTimeoutMs, Number(m[1]) * 1000 - 1000));
      return;
    }
  }

  body(chunk: Buffer): void {
    if (this.inBody) this.bodyTimer?.refresh();
    // Node's parser hands the body over as a copy (Node 20-24); were it ever a view of the read,
    // the next read would overwrite it while a write still held it.
    this.events?.body(borrowsReadBuffer(chunk) ? Buffer.copyBytesFrom(chunk) : chunk);
  }

  trailers(): void {
    // HTTP/1.1 clients of the sidecar get no trailers (as with node:http before).
  }

  complete(): void {
    if (this.interim) {
      this.interim = false;
      return;
    }
    this.inBody = false;
    const ev = this.events;
    this.events = null;
    // The client's backpressure held this answer's reads: its end came in the read being parsed,
    // and what is read next is the next request's. A connection pooled paused would hold that
    // answer until the previous client drained (never, if it stalls): the next request times out.
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
    }
    ev?.end();
    // An answer complete before the request body was sent whole (an early 401 or 413): the
    // connection is mid-request and carries nothing more, as Envoy resets the upstream stream
    // then. Kept, it waited for the body's end, which never comes once the caller's client is
    // closed (server.ts closes it after such an answer): an app that waits for the rest held it
    // open for good. And the rest of the body, were it sent, is what an app that answered
    // without reading it would parse as the next request, then the connection would be reused.
    if (!this.keepAlive || !this.bodySent) this.kill();
    else this.releaseWhenParsed();
  }

  /**
   * Inside a parse, the rest of the read may still hold bytes after this answer (begin() kills
   * the connection for them): it goes back to the pool only once the whole read is parsed.
   */
  private releaseWhenParsed(): void {
    if (this.executing) this.releaseAfterParse = true;
    else this.release();
  }

  private data(d: Buffer): void {
    if (this.dead) return;
    if (this.events === null && !this.answered) {
      // Bytes from an idle connection: not an answer to anything (HTTP/1.1 §9.3.1); it is unusable.
      return this.kill();
    }
    this.executing = true;
    parseStarted();
    try {
      const r = this.parser.execute(d);
      this.executing = false;
      // Reported before the parse ends: a head this parse held for the client has not left yet,
      // and the client can still get a local reply instead of a cut-off answer.
      if (typeof r !== "number") this.failed(new ResponseParseError(this.pool.peer, r.reason, r.code));
    } finally {
      parseEnded();
    }
    if (this.dead) this.freeParser();
    else if (this.releaseAfterParse) {
      this.releaseAfterParse = false;
      this.release();
    }
  }

  /** The native parser is freed outside its own callbacks only. */
  private executing = false;
  /** An answer completed inside the current parse; the pool gets the connection when it ends. */
  private releaseAfterParse = false;
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
    if (f) this.failed(new Error(`${this.pool.peer} closed the connection mid-response: ${f.reason}`));
    else this.failed(new Error(`${this.pool.peer} closed the connection`));
  }

  private timedOut(ms: number): void {
    if (!this.waitingHead || this.answered || this.events === null) return;
    this.failed(new ResponseTimeoutError(ms));
  }

  private bodyTimedOut(ms: number): void {
    if (!this.inBody || this.events === null) return;
    this.failed(new BodyTimeoutError(ms));
  }

  private failed(e: Error): void {
    if (this.dead) return;
    const ev = this.events;
    const retry = this.retry;
    this.events = null;
    // A keep-alive connection the peer closed just as it was reused: one fresh try for an
    // idempotent request without a body, before any byte of an answer (pool.request decides).
    if (ev && retry && !this.answered && !(e instanceof ResponseTimeoutError)) {
      // The resend inherits this connection's slot. Were a waiting request woken into it first,
      // the resend would open a connection over maxConnections (Envoy's max_connections).
      this.kill(false);
      return retry.resend();
    }
    this.kill();
    ev?.error(e, this.answered);
  }

  private release(): void {
    if (this.dead) return;
    this.answered = false;
    this.inPool = true;
    if (this.idleTimer && this.idleTimerMs === this.idleMs) this.idleTimer.refresh();
    else {
      if (this.idleTimer) clearTimeout(this.idleTimer);
      this.idleTimerMs = this.idleMs;
      this.idleTimer = setTimeout(() => this.idleExpired(), this.idleMs).unref();
    }
    this.pool.released(this);
  }

  /** Unused for keepAliveTimeoutMs: closed. The timer is re-armed at each release, not cleared at each use. */
  private idleExpired(): void {
    if (this.inPool) this.kill();
  }

  /** `wake` false: the caller hands this connection's slot on itself (a resend), no waiting request gets it. */
  kill(wake = true): void {
    if (this.dead) return;
    this.dead = true;
    if (this.responseTimer) clearTimeout(this.responseTimer);
    if (this.bodyTimer) clearTimeout(this.bodyTimer);
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.queued = null;
    this.drainWaiters = null;
    this.socket.destroy();
    this.freeParser();
    this.pool.gone(this, wake);
  }

  get alive(): boolean {
    return !this.dead;
  }
}

/** Keep-alive connections to one origin; the most recently used idle one is taken first. */
export class OriginPool {
  private readonly idle: OriginConnection[] = [];
  private readonly all = new Set<OriginConnection>();
  /** Requests waiting for a connection (maxConnections reached), oldest first. */
  private readonly waiters: (() => void)[] = [];
  private closed = false;
  private retired = false;
  private readonly max: number;
  /** @internal who is at the other end, for error messages. */
  readonly peer: string;

  constructor(readonly options: OriginOptions) {
    this.max = options.maxConnections ?? Infinity;
    this.peer = options.peer ?? "the local app";
  }

  /** Every connection is busy and no new one may be opened: a request now would wait (see wait). */
  get full(): boolean {
    return this.idle.length === 0 && this.all.size >= this.max;
  }

  /** Calls `ready` once a connection is free (then call request); the returned function cancels the wait. */
  wait(ready: () => void): () => void {
    this.waiters.push(ready);
    return () => {
      const i = this.waiters.indexOf(ready);
      if (i >= 0) this.waiters.splice(i, 1);
    };
  }

  /**
   * Sends a request head (`head` ends with the blank line). `hasBody`: the caller writes the body
   * through the returned handle, `chunked` if its length is unknown. `bodyTimeoutMs` (0: none)
   * is the longest silence allowed between response body bytes.
   */
  request(head: string, isHead: boolean, hasBody: boolean, chunked: boolean, timeoutMs: number, events: ResponseEvents, bodyTimeoutMs = 0): OriginRequest {
    if (this.closed) {
      events.error(new Error(`the pool for ${this.peer} is closed`), false);
      return NOOP;
    }
    let conn = this.idle.pop();
    while (conn && !conn.alive) conn = this.idle.pop();
    if (!conn) {
      conn = new OriginConnection(this);
      this.all.add(conn);
    }
    if (!conn.used || hasBody || !idempotent(head)) {
      conn.send(head, isHead, hasBody, chunked, timeoutMs, bodyTimeoutMs, events, null);
      return conn;
    }
    const resendable = new ResendableRequest(this, conn, head, isHead, timeoutMs, bodyTimeoutMs, events);
    conn.send(head, isHead, false, false, timeoutMs, bodyTimeoutMs, events, resendable);
    return resendable;
  }

  /** @internal a connection finished its exchange and can take the next. */
  released(c: OriginConnection): void {
    // A retired pool serves the requests already waiting on it, then lets its connections go.
    if (this.retired && this.waiters.length === 0) return c.kill();
    this.idle.push(c);
    this.wake();
  }

  /** @internal a connection closed: its slot is free for a waiting request, unless `wake` is false (see resent). */
  gone(c: OriginConnection, wake: boolean): void {
    const i = this.idle.indexOf(c);
    if (i >= 0) this.idle.splice(i, 1);
    this.all.delete(c);
    if (wake) this.wake();
  }

  /**
   * @internal a request was sent again in the slot of its closed connection (gone without
   * waking). Had it found an idle connection, that slot is still free: a waiting request gets it,
   * as gone() would have given it.
   */
  resent(): void {
    if (!this.full) this.wake();
  }

  private wake(): void {
    if (this.closed) return;
    const w = this.waiters.shift();
    if (w) w();
  }

  /** Connections open now (for tests and the admin view). */
  get size(): number {
    return this.all.size;
  }

  /** No longer handed out (its endpoint left the Snapshot): idle connections close now, busy ones after their exchange. */
  closeWhenIdle(): void {
    this.retired = true;
    for (const c of this.idle.splice(0)) c.kill();
  }

  close(): void {
    this.closed = true;
    for (const c of [...this.all]) c.kill();
    // Requests still waiting for a connection are told the pool is gone (request() refuses them).
    for (const w of this.waiters.splice(0)) w();
  }
}

/**
 * RFC 9110 §9.2.2's idempotent methods, read from the head this pool was given (`METHOD target
 * HTTP/1.1`). A connection that closes unanswered may have carried the request to a peer that
 * acted on it before closing (a crash, a restart): RFC 9112 §9.3.1 forbids a proxy to send a
 * non-idempotent request again by itself, so a bodiless POST or PATCH fails to the caller instead.
 */
function idempotent(head: string): boolean {
  // Prefix tests, not a slice of the method: this runs for every request on a reused connection.
  return head.startsWith("GET ") || head.startsWith("HEAD ") || head.startsWith("PUT ") || head.startsWith("DELETE ") || head.startsWith("OPTIONS ") || head.startsWith("TRACE ");
}

/**
 * A request without a body and with an idempotent method on a reused keep-alive connection, which
 * the peer may have closed just as it was reused: sent again once on a fresh connection. The caller's handle follows the request
 * there, so its abort, pause and resume reach the connection that carries it.
 */
class ResendableRequest implements OriginRequest {
  constructor(
    private readonly pool: OriginPool,
    private current: OriginRequest,
    private readonly head: string,
    private readonly isHead: boolean,
    private readonly timeoutMs: number,
    private readonly bodyTimeoutMs: number,
    private readonly events: ResponseEvents,
  ) {}

  resend(): void {
    this.current = this.pool.request(this.head, this.isHead, false, false, this.timeoutMs, this.events, this.bodyTimeoutMs);
    this.pool.resent();
  }

  write(chunk: Buffer): boolean {
    return this.current.write(chunk);
  }

  onDrain(cb: () => void): void {
    this.current.onDrain(cb);
  }

  end(): void {
    this.current.end();
  }

  abort(): void {
    this.current.abort();
  }

  pauseResponse(): void {
    this.current.pauseResponse();
  }

  resumeResponse(): void {
    this.current.resumeResponse();
  }
}

const NOOP: OriginRequest = { write: () => true, onDrain: () => {}, end: () => {}, abort: () => {}, pauseResponse: () => {}, resumeResponse: () => {} };
