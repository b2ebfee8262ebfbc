// Node's own llhttp binding (`_http_common`'s HTTPParser, the parser node:http runs), driven
// directly: no IncomingMessage, no ServerResponse, no header objects unless someone asks. The API
// is undocumented, so it is loaded once, checked by a self-test against known messages, and when
// it is missing or behaves differently the HTTP/1 core is reported unavailable and callers keep
// using node:http (see README "HTTP/1 core").
import { createRequire } from "node:module";
import { maxHeaderSize as nodeMaxHeaderSize } from "node:http";

/** The binding's parser object, as node 20, 22 and 24 shape it. Callbacks live at numeric keys. */
export interface NativeParser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  /** Bytes parsed, or an Error carrying `code` (HPE_*), `reason` and `bytesParsed`. */
  execute(data: Buffer): unknown;
  /** Signals the end of input (close-delimited bodies end here); an Error when it was mid-message. */
  finish(): unknown;
  remove(): void;
  /** Only emits the async `destroy` hooks (node calls it on parsers it returns to its free list). */
  free(): void;
  /** Deletes the native parser and the strong handle it holds on this object. */
  close(): void;
  [callback: number]: unknown;
}

interface ParserClass {
  new (): NativeParser;
  readonly REQUEST: number;
  readonly RESPONSE: number;
  readonly kOnHeaders: number;
  readonly kOnHeadersComplete: number;
  readonly kOnBody: number;
  readonly kOnMessageComplete: number;
  readonly kOnMessageBegin: number;
  readonly kLenientNone: number;
}

interface HttpCommon {
  readonly HTTPParser: ParserClass;
  readonly methods: readonly string[];
}

function isHttpCommon(m: unknown): m is HttpCommon {
  if (typeof m !== "object" || m === null || !("HTTPParser" in m) || !("methods" in m)) return false;
  const p = m.HTTPParser;
  if (typeof p !== "function" || !Array.isArray(m.methods)) return false;
  for (const k of ["REQUEST", "RESPONSE", "kOnHeaders", "kOnHeadersComplete", "kOnBody", "kOnMessageComplete", "kOnMessageBegin", "kLenientNone"]) {
    const v: unknown = Reflect.get(p, k);
    if (typeof v !== "number") return false;
  }
  const proto: unknown = p.prototype;
  if (typeof proto !== "object" || proto === null) return false;
  for (const k of ["initialize", "execute", "finish", "remove", "close"]) {
    const f: unknown = Reflect.get(proto, k);
    if (typeof f !== "function") return false;
  }
  return true;
}

/** A parse error of the binding: its llhttp code (HPE_*) and reason. */
export interface ParseFailure {
  readonly code: string;
  readonly reason: string;
  readonly bytesParsed: number;
}

export function parseFailure(r: unknown): ParseFailure | null {
  if (!(r instanceof Error)) return null;
  const code = "code" in r && typeof r.code === "string" ? r.code : "HPE_UNKNOWN";
  const reason = "reason" in r && typeof r.reason === "string" ? r.reason : r.message;
  const bytesParsed = "bytesParsed" in r && typeof r.bytesParsed === "number" ? r.bytesParsed : 0;
  return { code, reason, bytesParsed };
}

/** What every message handler is told; the parser's own argument order is kept in one place. */
export interface MessageEvents {
  /** The head is complete. Return 1 to have the parser skip a body (a response to HEAD). */
  head(versionMajor: number, versionMinor: number, rawHeaders: string[], method: string, url: string, status: number, statusText: string, upgrade: boolean, keepAlive: boolean): number;
  body(chunk: Buffer): void;
  /** Chunked trailers (rarely used: neither direction forwards them to HTTP/1.1 peers). */
  trailers(rawTrailers: string[]): void;
  complete(): void;
  /** A new message starts (its first byte arrived). */
  begin(): void;
}

/** node:http's limit (`--max-http-header-size`, 16 KiB by default) for request and response heads. */
export const MAX_HEADER_SIZE = nodeMaxHeaderSize;

/**
 * One llhttp parser in strict mode (no lenient flags: CL with TE, bad chunk sizes, obs-fold,
 * bare LF and the like are errors). Heads longer than 32 fields arrive in pieces; they are
 * joined here so handlers always see one array.
 */
export class Http1Parser {
  private readonly native: NativeParser;
  private headers: string[] = [];
  private url = "";
  private inHead = true;

  constructor(
    private readonly lib: HttpCommon,
    type: "request" | "response",
    events: MessageEvents,
  ) {
    const P = lib.HTTPParser;
    const native = new P();
    this.native = native;
    native.initialize(type === "request" ? P.REQUEST : P.RESPONSE, {}, MAX_HEADER_SIZE, P.kLenientNone);
    native[P.kOnMessageBegin] = () => {
      this.inHead = true;
      events.begin();
    };
    native[P.kOnHeaders] = (headers: string[], url: string) => {
      if (this.inHead) {
        for (const h of headers) this.headers.push(h);
        this.url += url;
      } else {
        events.trailers(headers);
      }
    };
    native[P.kOnHeadersComplete] = (major: number, minor: number, headers: string[] | undefined, method: number | undefined, url: string | undefined, status: number | undefined, statusText: string | undefined, upgrade: boolean, keepAlive: boolean): number => {
      this.inHead = false;
      let h = headers;
      let u = url;
      if (h === undefined) {
        h = this.headers;
        this.headers = [];
      }
      if (u === undefined) {
        u = this.url;
        this.url = "";
      }
      return events.head(major, minor, h, method === undefined ? "" : (this.lib.methods[method] ?? ""), u, status ?? 0, statusText ?? "", upgrade, keepAlive);
    };
    native[P.kOnBody] = (chunk: Buffer) => events.body(chunk);
    native[P.kOnMessageComplete] = () => {
      if (this.headers.length > 0) {
        // trailers flushed at the end of a chunked body
        const t = this.headers;
        this.headers = [];
        events.trailers(t);
      }
      this.inHead = true;
      events.complete();
    };
  }

  /** Bytes consumed (all of them unless an upgrade stopped the parser), or the failure. */
  execute(data: Buffer): number | ParseFailure {
    const r = this.native.execute(data);
    if (typeof r === "number") return r;
    return parseFailure(r) ?? { code: "HPE_UNKNOWN", reason: `unexpected parser result ${String(r)}`, bytesParsed: 0 };
  }

  /** The peer closed: ends a close-delimited message; a failure if it was mid-message. */
  finish(): ParseFailure | null {
    return parseFailure(this.native.finish());
  }

  /**
   * Frees the native parser; the object is unusable afterwards. Not from inside its own
   * callbacks. The binding's free() alone keeps the C++ parser and its strong handle (node's
   * free list reuses such parsers): each connection would keep its parser, socket and callbacks
   * — and through them its pool and that pool's TLS secure context — for good. close() deletes
   * it, as node's own freeParser does for parsers it does not reuse: on the next turn, once the
   * stack has unwound, since a connection may be freed from inside a callback of its parser
   * (finish() completing a close-delimited body) and deleting it there crashes the process.
   */
  free(): void {
    const native = this.native;
    native.remove();
    setImmediate(() => native.close());
  }
}

export type CoreStatus = { readonly ok: true; readonly lib: HttpCommon } | { readonly ok: false; readonly reason: string };

let status: CoreStatus | null = null;

/** Loads `_http_common` and self-tests it once; later calls return the same answer. */
export function http1Core(): CoreStatus {
  status ??= load();
  return status;
}

function load(): CoreStatus {
  let mod: unknown;
  try {
    mod = createRequire(import.meta.url)("_http_common");
  } catch (e) {
    return { ok: false, reason: `node ${process.version} has no _http_common module (${e instanceof Error ? e.message : String(e)})` };
  }
  if (!isHttpCommon(mod)) return { ok: false, reason: `node ${process.version}'s _http_common.HTTPParser has an unexpected shape` };
  try {
    const failure = selfTest(mod);
    return failure === null ? { ok: true, lib: mod } : { ok: false, reason: `node ${process.version}'s HTTPParser failed the self-test: ${failure}` };
  } catch (e) {
    return { ok: false, reason: `node ${process.version}'s HTTPParser threw in the self-test: ${e instanceof Error ? e.message : String(e)}` };
  }
}

/** Known messages with known parses: argument order, header splitting, chunked bodies, strictness. */
function selfTest(lib: HttpCommon): string | null {
  const seen: string[] = [];
  const events = (tag: string): MessageEvents => ({
    begin: () => {},
    head: (major, minor, raw, method, url, st, text, upgrade, keepAlive) => {
      seen.push(`${tag} head ${major}.${minor} ${method} ${url} ${st} ${text} ${upgrade} ${keepAlive} ${raw.length / 2} ${raw[0]}=${raw[1]} ${raw.at(-2)}=${raw.at(-1)}`);
      return 0;
    },
    body: (b) => seen.push(`${tag} body ${b.toString("latin1")}`),
    trailers: (t) => seen.push(`${tag} trailers ${t.join("=")}`),
    complete: () => seen.push(`${tag} complete`),
  });
  const many = Array.from({ length: 40 }, (_, i) => `X-H${i}: v${i}\r\n`).join("");
  const req = new Http1Parser(lib, "request", events("req"));
  try {
    const input = Buffer.from(`POST /a?b HTTP/1.1\r\nHost: h\r\n${many}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n`);
    if (req.execute(input) !== input.length) return "a valid chunked request was not consumed";
  } finally {
    req.free();
  }
  const want = ["req head 1.1 POST /a?b 0  false true 42 Host=h Transfer-Encoding=chunked", "req body abc", "req trailers T=1", "req complete"];
  if (seen.join("|") !== want.join("|")) return `parsed ${JSON.stringify(seen)}, expected ${JSON.stringify(want)}`;
  seen.length = 0;
  const res = new Http1Parser(lib, "response", events("res"));
  try {
    const input = Buffer.from("HTTP/1.1 204 No Content\r\nA: b\r\n\r\n");
    if (res.execute(input) !== input.length) return "a valid response was not consumed";
  } finally {
    res.free();
  }
  if (seen.join("|") !== "res head 1.1   204 No Content false true 1 A=b A=b|res complete") return `parsed a response as ${JSON.stringify(seen)}`;
  const strict = new Http1Parser(lib, "request", events("strict"));
  try {
    const r = strict.execute(Buffer.from("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"));
    if (typeof r === "number") return "a request with both Content-Length and Transfer-Encoding was accepted (lenient parser?)";
  } finally {
    strict.free();
  }
  return null;
}
