// The server side of the HTTP/1 core: requests parsed by llhttp straight off a socket, answered
// in order on the same socket. One request is served at a time; pipelined ones wait parsed in a
// queue (with the socket paused, so the queue holds at most what one read delivered), which
// keeps responses in request order without buffering a response. Timeouts are node:http's:
// 10 s for a request head, 60 s for an idle keep-alive connection, checked by one sweep a second.
import type { Socket } from "node:net";
import { STATUS_CODES } from "node:http";
import { Http1Parser, http1Core, type MessageEvents } from "./parser.js";
import { fieldValue, lowerName } from "./fields.js";
import { borrowsReadBuffer, readAcceptedInto, readsBackToStream } from "../tcp/read-buffer.js";
import { executeHolding, holdWrite, joinHead, JOIN_MAX, type HeldWrite } from "./held-writes.js";

export interface Http1ServerOptions {
  readonly headersTimeoutMs: number;
  readonly keepAliveTimeoutMs: number;
  /** node:http's maxHeadersCount; more fields than this are refused with 431 (node drops the rest silently). */
  readonly maxHeadersCount: number;
}

export const NODE_SERVER_DEFAULTS: Http1ServerOptions = { headersTimeoutMs: 10_000, keepAliveTimeoutMs: 60_000, maxHeadersCount: 2000 };

/** Why a connection was refused before a request was handed on: the status and the parser's code. */
export interface ClientFailure {
  readonly status: 400 | 408 | 431 | 505;
  readonly code: string;
  readonly reason: string;
}

export interface Http1Handler<C> {
  /** A complete request head, in order. Answer through the exchange; the body streams to its sink. */
  request(ex: Exchange<C>): void;
  /** An upgrade request (or CONNECT) reached the front: the socket is the handler's from now on, `head` the bytes read past the request head. */
  upgrade(ex: Exchange<C>, socket: Socket, head: Buffer): void;
  /** The client sent something the parser refused, or its head took too long: counted by the handler; the core answers and closes. */
  clientError(failure: ClientFailure, context: C): void;
}

/** Where a request body goes (the local app's connection). */
export interface BodySink {
  data(chunk: Buffer): void;
  end(): void;
}

const EMPTY = Buffer.alloc(0);

/** One request and its response. */
export class Exchange<C> implements HeldWrite {
  /** The request body was completely received. */
  bodyDone = false;
  headersSent = false;
  finished = false;
  /** Set when the client went away or its bytes stopped parsing mid-request; `aborted` is called once. */
  aborted = false;
  onAbort: (() => void) | null = null;
  private sink: BodySink | null = null;
  private pending: Buffer[] | null = null;
  private chunked = false;
  private closeAfter = false;
  private corked = false;
  /** The response head, written with the first body bytes or when the current parse ends (held-writes.ts). */
  private heldHead: string | null = null;

  constructor(
    private readonly conn: Http1Connection<C>,
    readonly method: string,
    readonly url: string,
    readonly versionMinor: number,
    readonly rawHeaders: string[],
    /** The client asked to keep the connection (HTTP/1.1 without `Connection: close`). */
    readonly keepAlive: boolean,
    readonly upgrade: boolean,
    readonly hasBody: boolean,
  ) {}

  get context(): C {
    return this.conn.context;
  }

  get httpVersion(): string {
    return this.versionMinor === 1 ? "1.1" : "1.0";
  }

  /** The first line of `name` (lower case) or the joined lines, as node:http's req.headers has it. */
  header(name: string): string | undefined {
    return fieldValue(this.rawHeaders, name);
  }

  /** Body chunks go to `sink` from now on (those that arrived earlier first). */
  setBodySink(sink: BodySink): void {
    this.sink = sink;
    const p = this.pending;
    this.pending = null;
    if (p) for (const c of p) sink.data(c);
    if (this.bodyDone) sink.end();
  }

  /** @internal */
  bodyChunk(chunk: Buffer): void {
    if (this.sink) this.sink.data(chunk);
    else (this.pending ??= []).push(chunk);
  }

  /** @internal */
  bodyEnd(): void {
    this.bodyDone = true;
    this.sink?.end();
  }

  /** @internal */
  abort(): void {
    if (this.aborted || this.finished) return;
    this.aborted = true;
    this.onAbort?.();
  }

  /** Stops reading the client until resumeBody (the app is not taking the body as fast). */
  pauseBody(): void {
    this.conn.pauseFor("body");
  }

  resumeBody(): void {
    this.conn.resumeFor("body");
  }

  /** `100 Continue` (the sidecar answers Expect itself, once the request is authorized). */
  writeContinue(): void {
    if (!this.headersSent) this.conn.socket.write("HTTP/1.1 100 Continue\r\n\r\n");
  }

  /**
   * Writes the response head. `fields` is `name: value\r\n` lines without framing or connection
   * fields; `length` is the body's length when known. Without a length the body is chunked
   * (HTTP/1.1) or delimited by closing the connection (HTTP/1.0). `noBody`: HEAD, 204, 304.
   */
  writeHead(status: number, statusText: string, fields: string, length: number | null, noBody: boolean): void {
    if (this.headersSent || this.aborted) return;
    this.headersSent = true;
    // HTTP/1.0 clients get one answer per connection (and close-delimited bodies need the close);
    // an answer that starts before the request body was read to its end closes it too: what
    // follows that body cannot be told apart from a smuggled request.
    this.closeAfter = !this.keepAlive || this.versionMinor === 0 || this.conn.draining || !this.bodyDone;
    this.chunked = !noBody && length === null && this.versionMinor === 1;
    let head = `HTTP/1.1 ${status} ${statusText || STATUS_CODES[status] || "Unknown"}\r\n${fields}`;
    if (length !== null) head += `content-length: ${length}\r\n`;
    else if (this.chunked) head += "transfer-encoding: chunked\r\n";
    head += this.closeAfter ? "connection: close\r\n\r\n" : "connection: keep-alive\r\nkeep-alive: timeout=60\r\n\r\n";
    // Head and the first body bytes (usually parsed from the same read) leave as one write.
    this.heldHead = head;
    holdWrite(this);
  }

  /** @internal Writes the held head and what was corked behind it. */
  flushHeld(): void {
    const head = this.heldHead;
    if (head !== null) {
      this.heldHead = null;
      if (!this.aborted && !this.conn.socket.destroyed) this.conn.socket.write(head, "latin1");
    }
    if (this.corked) {
      this.corked = false;
      this.conn.socket.uncork();
    }
  }

  /** The held head goes out ahead of more writes, corked with them until the flush or the end. */
  private corkHead(head: string): void {
    this.heldHead = null;
    const s = this.conn.socket;
    s.cork();
    this.corked = true;
    s.write(head, "latin1");
  }

  /** A body chunk; false when the client is not reading fast enough (wait for onDrain). */
  write(chunk: Buffer): boolean {
    if (chunk.length === 0 || this.aborted) return true;
    const s = this.conn.socket;
    const head = this.heldHead;
    if (head !== null) {
      if (!this.chunked && chunk.length <= JOIN_MAX) {
        this.heldHead = null;
        return s.write(joinHead(head, chunk));
      }
      this.corkHead(head);
    }
    if (!this.chunked) return s.write(chunk);
    s.write(`${chunk.length.toString(16)}\r\n`, "latin1");
    s.write(chunk);
    return s.write("\r\n", "latin1");
  }

  /** Called once the client has taken what was written. */
  onDrain(cb: () => void): void {
    this.conn.socket.once("drain", cb);
  }

  end(body?: string): void {
    if (this.finished || this.aborted) return;
    this.finished = true;
    const s = this.conn.socket;
    const hasBody = body !== undefined && body.length > 0;
    const head = this.heldHead;
    if (head !== null) {
      if (hasBody || this.chunked) this.corkHead(head);
      else {
        this.heldHead = null;
        s.write(head, "latin1");
      }
    }
    if (hasBody) s.write(body);
    if (this.chunked) s.write("0\r\n\r\n", "latin1");
    this.flushHeld();
    this.conn.exchangeDone(this, this.closeAfter || !this.bodyDone);
  }

  /**
   * Takes back a head that is still held: no byte of the answer has left, so the client can be
   * answered instead (the upstream's answer failed in the same parse as its head; Envoy answers
   * such a response with a local reply too). False once any of the answer is out.
   */
  retractHead(): boolean {
    if (this.heldHead === null) return false;
    this.heldHead = null;
    this.headersSent = false;
    return true;
  }

  /** The answer cannot be completed (the app failed mid-body): the client's connection goes. */
  destroy(): void {
    this.finished = true;
    this.heldHead = null;
    this.flushHeld();
    this.conn.socket.destroy();
  }
}

export class Http1Connection<C> implements MessageEvents {
  draining = false;
  private readonly parser: Http1Parser;
  /** Requests parsed and not yet answered; the first is being served. */
  private readonly queue: Exchange<C>[] = [];
  private started: Exchange<C> | null = null;
  /** The one whose body the parser is reading. */
  private reading: Exchange<C> | null = null;
  /** A request head is partly received (or none yet on a new connection) since `headSince`. */
  private inHead = true;
  private headSince = performance.now();
  private idleSince = 0;
  private pausedFor = 0;
  /** The parser stopped at an upgrade head: the bytes after it, for the hand-over. */
  private rest: Buffer | null = null;
  private failed: ClientFailure | null = null;
  /** No more requests are read from this connection (ending, failed, handed over). */
  private closed = false;
  private clientEnded = false;
  private parserLive = true;
  private readonly onData = (d: Buffer) => this.data(d, false);
  /** Reads into the shared buffer (read-buffer.ts); pauses go through socket.pause(). */
  private readonly onRead = (d: Buffer, borrowed: boolean): boolean => {
    this.data(d, borrowed);
    return true;
  };

  constructor(
    readonly socket: Socket,
    readonly context: C,
    private readonly server: Http1Server<C>,
  ) {
    const core = http1Core();
    if (!core.ok) throw new Error(`the HTTP/1 core is unavailable: ${core.reason}`);
    this.parser = new Http1Parser(core.lib, "request", this);
  }

  /**
   * Starts reading, once the server tracks this connection: what the socket already holds (a
   * sniffer's first bytes) is parsed at once, and may hand the socket on (an upgrade).
   */
  start(): void {
    const socket = this.socket;
    socket.once("end", () => this.ended());
    socket.once("close", () => this.teardown());
    if (!readAcceptedInto(socket, this.onRead)) socket.on("data", this.onData);
    // The caller may have paused it (a sniffer, pauseOnConnect); not once it is handed on or paused here.
    if (!this.closed && this.pausedFor === 0) socket.resume();
  }

  begin(): void {
    if (!this.inHead) {
      this.inHead = true;
      this.headSince = performance.now();
    }
  }

  head(major: number, minor: number, raw: string[], method: string, url: string, _s: number, _t: string, upgrade: boolean, keepAlive: boolean): number {
    this.inHead = false;
    if (this.failed) return -1;
    if (raw.length / 2 > this.server.options.maxHeadersCount) {
      this.fail({ status: 431, code: "HPE_HEADER_OVERFLOW", reason: `more than ${this.server.options.maxHeadersCount} header fields` });
      return -1;
    }
    if (major !== 1) {
      this.fail({ status: 505, code: "HPE_INVALID_VERSION", reason: `HTTP/${major}.${minor} is not supported` });
      return -1;
    }
    // node:http's requireHostHeader: an HTTP/1.1 request without Host is refused with 400.
    if (minor === 1 && fieldValue(raw, "host") === undefined) {
      this.fail({ status: 400, code: "ERR_HTTP_REQUEST_MISSING_HOST", reason: "an HTTP/1.1 request must carry a Host header" });
      return -1;
    }
    let hasBody = false;
    for (let i = 0; i < raw.length; i += 2) {
      const n = raw[i]!;
      if (n.length === 14 && lowerName(n) === "content-length") hasBody = raw[i + 1] !== "0";
      else if (n.length === 17 && lowerName(n) === "transfer-encoding") hasBody = true;
    }
    const ex = new Exchange(this, method, url, minor, raw, keepAlive, upgrade, hasBody);
    this.reading = ex;
    this.queue.push(ex);
    // 2: llhttp stops right after an upgrade head; what follows belongs to the new protocol (node:http does the same).
    return upgrade ? 2 : 0;
  }

  body(chunk: Buffer): void {
    // Node's parser hands out copies (Node 20 to 24); should one ever be a view of the input, it would be of the shared read buffer.
    this.reading?.bodyChunk(borrowsReadBuffer(chunk) ? Buffer.copyBytesFrom(chunk) : chunk);
  }

  trailers(): void {
    // Request trailers are not forwarded (node:http's IncomingMessage did not pass them on either).
  }

  complete(): void {
    const ex = this.reading;
    this.reading = null;
    ex?.bodyEnd();
  }

  /**
   * `borrowed`: `d` is a view of the shared read buffer, which the next read overwrites. The
   * parser copies what it keeps (field strings, body chunks); only the bytes after an upgrade
   * head are kept here, and those are copied.
   */
  private data(d: Buffer, borrowed: boolean): void {
    if (this.closed || this.failed) return;
    if (this.rest) {
      this.rest = Buffer.concat([this.rest, d]);
      return;
    }
    this.executing = true;
    const r = executeHolding(this.parser, d);
    this.executing = false;
    if (typeof r !== "number") {
      this.fail({ status: r.code === "HPE_HEADER_OVERFLOW" ? 431 : 400, code: r.code, reason: r.reason });
    } else if (this.queue.at(-1)?.upgrade) {
      this.rest = r >= d.length ? EMPTY : borrowed ? Buffer.copyBytesFrom(d, r) : d.subarray(r);
      this.reading = null;
    }
    if (this.queue.length > 1 || this.rest) this.pauseFor("queue");
    this.pump();
    if (this.closed && this.parserLive && this.queue.length === 0) this.freeParser();
  }

  /** Starts the request at the front when nothing is being answered. */
  private pump(): void {
    if (this.closed) return;
    const ex = this.queue[0];
    if (!ex) {
      if (this.failed) this.answerFailure();
      else if (this.clientEnded) this.endSocket();
      return;
    }
    if (this.started === ex) return;
    this.started = ex;
    if (ex.upgrade) {
      this.detach();
      this.server.handler.upgrade(ex, this.socket, this.rest ?? EMPTY);
      return;
    }
    this.server.handler.request(ex);
  }

  /** @internal the exchange wrote its last byte. */
  exchangeDone(ex: Exchange<C>, close: boolean): void {
    if (this.queue[0] !== ex) return;
    this.queue.shift();
    if (close || this.draining) return this.endSocket();
    this.resumeFor("body");
    if (this.queue.length <= 1) this.resumeFor("queue");
    if (this.queue.length === 0) this.idleSince = performance.now();
    this.pump();
  }

  private fail(f: ClientFailure): void {
    if (this.failed) return;
    this.failed = f;
    this.server.handler.clientError(f, this.context);
    // A request whose body stopped parsing cannot be completed: its forwarding is abandoned.
    const r = this.reading;
    this.reading = null;
    if (r) {
      if (r.headersSent) return void this.socket.destroy();
      r.abort();
      const i = this.queue.indexOf(r);
      if (i >= 0) this.queue.splice(i, 1);
      if (this.started === r) this.started = null;
    }
    this.pump();
  }

  /** Answers the refusal once every earlier request was answered, then closes. */
  private answerFailure(): void {
    const f = this.failed;
    if (!f || this.closed) return;
    const text = `${f.status} ${STATUS_CODES[f.status] ?? "Bad Request"}`;
    this.socket.write(`HTTP/1.1 ${text}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
    this.endSocket();
  }

  /** @internal the timeout sweep. */
  sweep(now: number): void {
    if (this.closed) return;
    const o = this.server.options;
    if (this.inHead && !this.failed && now - this.headSince > o.headersTimeoutMs) {
      this.fail({ status: 408, code: "ERR_HTTP_REQUEST_TIMEOUT", reason: `no complete request head within ${o.headersTimeoutMs} ms` });
    } else if (!this.inHead && this.queue.length === 0 && this.reading === null && now - this.idleSince > o.keepAliveTimeoutMs) {
      this.endSocket();
    }
  }

  pauseFor(why: "queue" | "body"): void {
    const bit = why === "queue" ? 1 : 2;
    if (this.pausedFor === 0) this.socket.pause();
    this.pausedFor |= bit;
  }

  resumeFor(why: "queue" | "body"): void {
    const bit = why === "queue" ? 1 : 2;
    if ((this.pausedFor & bit) === 0) return;
    this.pausedFor &= ~bit;
    if (this.pausedFor === 0 && !this.closed) this.socket.resume();
  }

  /** The client will send nothing more: a request cut short is abandoned; answers already due still go out. */
  private ended(): void {
    this.clientEnded = true;
    const r = this.reading;
    if (r && !this.closed) {
      this.reading = null;
      if (r.headersSent) return void this.socket.destroy();
      r.abort();
      const i = this.queue.indexOf(r);
      if (i >= 0) this.queue.splice(i, 1);
      if (this.started === r) this.started = null;
    }
    this.pump();
  }

  /**
   * Stops reading requests and half-closes; what the client still sends is read and dropped, so
   * the close is a FIN the client sees after the answer, not a reset that could destroy it.
   */
  private endSocket(): void {
    if (this.closed) return;
    this.closed = true;
    this.server.forget(this);
    if (this.pausedFor !== 0) {
      this.pausedFor = 0;
      this.socket.resume();
    }
    this.socket.end();
    if (this.clientEnded) this.socket.destroySoon();
    else setTimeout(() => this.socket.destroy(), 5_000).unref();
  }

  /** Drain: idle connections close now, busy ones after their answer. */
  closeIfIdle(): void {
    this.draining = true;
    if (this.queue.length === 0 && this.reading === null) this.endSocket();
  }

  /** Hands the socket over (upgrade): no more parsing, the reader is paused until the new owner reads. */
  private detach(): void {
    this.closed = true;
    this.server.forget(this);
    this.socket.pause();
    this.socket.off("data", this.onData);
    readsBackToStream(this.socket);
    // As node:http's own upgrade hand-over does: the next 'data' listener starts the flow again.
    Reflect.set(this.socket, "readableFlowing", null);
    this.freeParser();
  }

  private executing = false;

  /** The native parser is freed outside its own callbacks only. */
  private freeParser(): void {
    if (this.executing || !this.parserLive) return;
    this.parserLive = false;
    this.parser.free();
  }

  private teardown(): void {
    for (const ex of this.queue) ex.abort();
    this.reading?.abort();
    this.queue.length = 0;
    this.reading = null;
    if (!this.closed) {
      this.closed = true;
      this.server.forget(this);
    }
    this.freeParser();
  }
}

/** The set of HTTP/1 connections of one listener, their sweep and their drain. */
export class Http1Server<C> {
  private readonly conns = new Set<Http1Connection<C>>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    readonly handler: Http1Handler<C>,
    readonly options: Http1ServerOptions = NODE_SERVER_DEFAULTS,
  ) {}

  accept(socket: Socket, context: C): Http1Connection<C> {
    const c = new Http1Connection(socket, context, this);
    this.conns.add(c);
    this.timer ??= setInterval(() => this.sweep(), 1_000).unref();
    c.start();
    return c;
  }

  /** @internal */
  forget(c: Http1Connection<C>): void {
    this.conns.delete(c);
    if (this.conns.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }

  private sweep(): void {
    const now = performance.now();
    for (const c of this.conns) c.sweep(now);
  }

  closeIdle(): void {
    for (const c of [...this.conns]) c.closeIfIdle();
  }

  destroyAll(): void {
    for (const c of [...this.conns]) c.socket.destroy();
  }
}
