// The SNI (and ALPN list) of a TLS connection read from its first bytes, without terminating
// TLS: what a mesh gateway routes on while the two mesh endpoints keep their mTLS end to end
// (Envoy's tls_inspector listener filter does the same job).
//
// The parser is strict where OpenSSL (the TLS stack behind every Node backend) is strict, so a
// gateway never routes on a reading of the ClientHello that the backend would not share: exactly
// one host_name entry in server_name, no duplicate extensions, lengths that add up exactly.
// Everything else is a refusal naming what was wrong; nothing here throws or reads past a buffer.
import type { Readable } from "node:stream";

const RECORD_HEADER = 5;
/** RFC 8446 §5.1: a TLSPlaintext fragment MUST NOT exceed 2^14 bytes. */
const MAX_RECORD_PAYLOAD = 16_384;
const CONTENT_HANDSHAKE = 0x16;
const HANDSHAKE_CLIENT_HELLO = 0x01;
const EXT_SERVER_NAME = 0x0000;
const EXT_ALPN = 0x0010;

/** One full record plus the start of a second: a ClientHello may span two records. */
export const DEFAULT_MAX_HELLO_BYTES = 2 * (RECORD_HEADER + MAX_RECORD_PAYLOAD);
/** Envoy's listener_filters_timeout: how long a connection may take to send its ClientHello. */
export const DEFAULT_HELLO_TIMEOUT_MS = 15_000;

export type HelloRefusalReason =
  /** The first bytes are not a TLS handshake record (plain text, HTTP, another protocol). */
  | "not_tls"
  /** An SSLv2-format ClientHello: no extensions, so no SNI; never spoken by a mesh peer. */
  | "sslv2"
  /** A TLS ClientHello whose lengths or structure are wrong. */
  | "malformed"
  /** A well-formed ClientHello without a server_name: nothing to route on. */
  | "no_sni"
  /** A server_name that is not a DNS host name. */
  | "invalid_sni"
  /** The connection closed or failed before the ClientHello was complete. */
  | "truncated"
  /**
   * The connection closed before sending a byte: a TCP health check or a port scan more often
   * than an attack (Envoy's tls_inspector counts it apart too, as connection_closed).
   */
  | "connection_closed"
  /** The ClientHello is (or says it will be) larger than the peek may buffer. */
  | "too_large"
  /** The ClientHello did not arrive within the deadline. */
  | "timeout";

export type HelloParse =
  | { readonly status: "complete"; readonly sni: string; readonly alpn: readonly string[]; readonly length: number }
  | { readonly status: "incomplete"; readonly needed: number }
  | { readonly status: "refused"; readonly reason: HelloRefusalReason; readonly message: string };

function refused(reason: HelloRefusalReason, message: string): HelloParse {
  return { status: "refused", reason, message };
}

function hex(n: number, digits = 2): string {
  return `0x${n.toString(16).padStart(digits, "0")}`;
}

/**
 * Parses the ClientHello at the start of `buf`. `complete` carries the SNI (lowercased: DNS names
 * are case-insensitive) and the ALPN protocols offered, and `length`, the bytes of the records
 * that hold the ClientHello. `incomplete` says how many bytes, at least, must be buffered before
 * another attempt can get further (a lower bound, so a hello dribbled in byte by byte is parsed
 * a bounded number of times, not once per byte). `maxBytes` bounds the records the ClientHello
 * may occupy; a length field that points past it is refused at once rather than waited for.
 */
export function parseClientHello(buf: Uint8Array, maxBytes = DEFAULT_MAX_HELLO_BYTES): HelloParse {
  if (buf.length === 0) return { status: "incomplete", needed: 1 };
  const first = buf[0]!;
  if (first !== CONTENT_HANDSHAKE) {
    // SSLv2's two-byte header has the high bit set, followed by message type 1 (ClientHello).
    if ((first & 0x80) !== 0) {
      if (buf.length < 3) return { status: "incomplete", needed: 3 };
      if (buf[2] === HANDSHAKE_CLIENT_HELLO) return refused("sslv2", "an SSLv2-format ClientHello: SSLv2 carries no SNI; the client must speak TLS 1.2 or 1.3");
    }
    return refused("not_tls", `first byte ${hex(first)} is not a TLS handshake record (${hex(CONTENT_HANDSHAKE)}): the client is not speaking TLS`);
  }

  // Walk the handshake records, noting where each fragment of the handshake message lies,
  // until the message (whose length its own 4-byte header gives) is whole.
  const starts: number[] = [];
  const lengths: number[] = [];
  let have = 0;
  let messageLength = -1;
  let pos = 0;
  for (;;) {
    const remaining = messageLength < 0 ? 1 : messageLength - have;
    if (pos + RECORD_HEADER > buf.length) return needMore(pos + RECORD_HEADER + remaining, maxBytes);
    const type = buf[pos]!;
    const record = starts.length + 1;
    if (type !== CONTENT_HANDSHAKE) return refused("malformed", `record ${record} has content type ${hex(type)} before the ClientHello was complete`);
    const major = buf[pos + 1]!;
    const minor = buf[pos + 2]!;
    if (major !== 3) return refused(record === 1 ? "not_tls" : "malformed", `record ${record} has version ${hex(major)}.${hex(minor)}, not TLS (3.x)`);
    const length = (buf[pos + 3]! << 8) | buf[pos + 4]!;
    if (length === 0) return refused("malformed", `record ${record} is an empty handshake fragment (RFC 8446 §5.1 forbids them)`);
    if (length > MAX_RECORD_PAYLOAD) return refused("malformed", `record ${record} is ${length} bytes, over TLS's ${MAX_RECORD_PAYLOAD}-byte limit`);
    const end = pos + RECORD_HEADER + length;
    // The handshake header usually arrives with the first record's header: a message that cannot
    // fit is refused now, not after the peer has been allowed to send up to the limit.
    if (messageLength < 0 && starts.length === 0 && length >= 4 && buf.length >= pos + RECORD_HEADER + 4) {
      const header = pos + RECORD_HEADER;
      if (buf[header] !== HANDSHAKE_CLIENT_HELLO) return refused("malformed", `the first handshake message has type ${hex(buf[header]!)}, not ClientHello (${hex(HANDSHAKE_CLIENT_HELLO)})`);
      messageLength = 4 + ((buf[header + 1]! << 16) | (buf[header + 2]! << 8) | buf[header + 3]!);
      const least = messageLength + RECORD_HEADER * Math.ceil(messageLength / MAX_RECORD_PAYLOAD);
      if (least > maxBytes) return refused("too_large", `the ClientHello says it is ${messageLength - 4} bytes, over the ${maxBytes}-byte limit`);
    }
    if (end > maxBytes) return refused("too_large", `the ClientHello's records run to ${end} bytes, over the ${maxBytes}-byte limit`);
    if (end > buf.length) {
      const after = messageLength < 0 ? 0 : messageLength - have - length;
      return needMore(after > 0 ? end + RECORD_HEADER + after : end, maxBytes);
    }
    starts.push(pos + RECORD_HEADER);
    lengths.push(length);
    have += length;
    pos = end;
    if (messageLength < 0 && have >= 4) {
      const type = byteAt(buf, starts, lengths, 0);
      if (type !== HANDSHAKE_CLIENT_HELLO) return refused("malformed", `the first handshake message has type ${hex(type)}, not ClientHello (${hex(HANDSHAKE_CLIENT_HELLO)})`);
      messageLength = 4 + ((byteAt(buf, starts, lengths, 1) << 16) | (byteAt(buf, starts, lengths, 2) << 8) | byteAt(buf, starts, lengths, 3));
    }
    if (messageLength >= 0 && have >= messageLength) break;
  }

  // The common case, one record: the body is read in place. Otherwise the fragments are joined.
  let body: Uint8Array;
  const single = starts[0]!;
  if (starts.length === 1) body = buf.subarray(single + 4, single + messageLength);
  else {
    const joined = new Uint8Array(messageLength);
    let at = 0;
    for (let i = 0; i < starts.length && at < messageLength; i++) {
      const start = starts[i]!;
      const take = Math.min(lengths[i]!, messageLength - at);
      joined.set(buf.subarray(start, start + take), at);
      at += take;
    }
    body = joined.subarray(4);
  }
  const hello = parseBody(body);
  if (typeof hello === "string") return refused("malformed", `ClientHello: ${hello}`);
  if (hello.sni === null) return refused("no_sni", "the ClientHello has no server_name (SNI): the client must name the service it is dialling");
  const problem = hostNameProblem(hello.sni);
  if (problem) return refused("invalid_sni", `server_name ${JSON.stringify(hello.sni.slice(0, 300))} ${problem}`);
  return { status: "complete", sni: hello.sni.toLowerCase(), alpn: hello.alpn, length: pos };
}

function needMore(needed: number, maxBytes: number): HelloParse {
  if (needed > maxBytes) return refused("too_large", `the ClientHello needs at least ${needed} bytes, over the ${maxBytes}-byte limit`);
  return { status: "incomplete", needed };
}

/** Byte `k` of the handshake message, across record fragments (used for its 4-byte header only). */
function byteAt(buf: Uint8Array, starts: readonly number[], lengths: readonly number[], k: number): number {
  let rest = k;
  for (let i = 0; i < starts.length; i++) {
    const len = lengths[i]!;
    if (rest < len) return buf[starts[i]! + rest]!;
    rest -= len;
  }
  return 0; // unreachable: callers check that `have` covers k
}

/** A cursor over part of the ClientHello body; callers check `has(n)` before each read. */
class Reader {
  constructor(
    private readonly b: Uint8Array,
    public pos: number,
    readonly end: number,
  ) {}
  has(n: number): boolean {
    return this.pos + n <= this.end;
  }
  u8(): number {
    return this.b[this.pos++]!;
  }
  u16(): number {
    const v = (this.b[this.pos]! << 8) | this.b[this.pos + 1]!;
    this.pos += 2;
    return v;
  }
  text(n: number): string {
    const s = latin1(this.b, this.pos, this.pos + n);
    this.pos += n;
    return s;
  }
}

function latin1(b: Uint8Array, from: number, to: number): string {
  return Buffer.from(b.buffer, b.byteOffset + from, to - from).toString("latin1");
}

interface HelloFields {
  readonly sni: string | null;
  readonly alpn: readonly string[];
}

/** The fields we route and log on, or what is wrong with the body (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2). */
function parseBody(body: Uint8Array): HelloFields | string {
  const r = new Reader(body, 0, body.length);
  if (!r.has(2 + 32 + 1)) return `${body.length} bytes is too short for version, random and session id`;
  r.pos += 2 + 32;
  const sessionId = r.u8();
  if (sessionId > 32) return `session id length ${sessionId} is over 32`;
  if (!r.has(sessionId + 2)) return `session id length ${sessionId} runs past the end`;
  r.pos += sessionId;
  const suites = r.u16();
  if (suites < 2 || suites % 2 !== 0) return `cipher suites length ${suites} is not a positive even number`;
  if (!r.has(suites + 1)) return `cipher suites length ${suites} runs past the end`;
  r.pos += suites;
  const compression = r.u8();
  if (compression < 1) return "no compression methods";
  if (!r.has(compression)) return `compression methods length ${compression} runs past the end`;
  r.pos += compression;
  // TLS 1.2 allows a ClientHello without extensions (so without SNI).
  if (r.pos === r.end) return { sni: null, alpn: [] };
  if (!r.has(2)) return "one stray byte where the extensions length belongs";
  const extensionsLength = r.u16();
  if (r.pos + extensionsLength !== r.end) return `extensions length ${extensionsLength} does not match the ${r.end - r.pos} bytes left`;
  let sni: string | null = null;
  let alpn: readonly string[] = [];
  const seen = new Set<number>();
  while (r.pos < r.end) {
    if (!r.has(4)) return "an extension header runs past the end";
    const type = r.u16();
    const length = r.u16();
    if (!r.has(length)) return `extension ${hex(type, 4)} length ${length} runs past the end`;
    if (seen.has(type)) return `extension ${hex(type, 4)} appears twice`;
    seen.add(type);
    const next = r.pos + length;
    if (type === EXT_SERVER_NAME) {
      const name = parseServerName(new Reader(body, r.pos, next));
      if (typeof name !== "string") return name.error;
      sni = name;
    } else if (type === EXT_ALPN) {
      const list = parseAlpn(new Reader(body, r.pos, next));
      if (typeof list === "string") return list;
      alpn = list;
    }
    r.pos = next;
  }
  return { sni, alpn };
}

/** RFC 6066 §3, read as OpenSSL does: exactly one entry, of type host_name. */
function parseServerName(r: Reader): string | { readonly error: string } {
  if (!r.has(2)) return { error: "server_name extension is too short for its list length" };
  const listLength = r.u16();
  if (r.pos + listLength !== r.end) return { error: `server_name list length ${listLength} does not match the extension's ${r.end - r.pos} bytes` };
  if (!r.has(3)) return { error: "server_name list is empty" };
  const nameType = r.u8();
  if (nameType !== 0) return { error: `server_name entry has type ${nameType}, not host_name (0)` };
  const nameLength = r.u16();
  if (r.pos + nameLength !== r.end) return { error: `server_name host_name length ${nameLength} does not match the list's ${r.end - r.pos} bytes (exactly one name is allowed)` };
  if (nameLength === 0) return { error: "server_name host_name is empty" };
  return r.text(nameLength);
}

/** RFC 7301 §3.1: a non-empty list of non-empty protocol names. */
function parseAlpn(r: Reader): string[] | string {
  if (!r.has(2)) return "ALPN extension is too short for its list length";
  const listLength = r.u16();
  if (r.pos + listLength !== r.end || listLength === 0) return `ALPN list length ${listLength} does not match the extension's ${r.end - r.pos} bytes`;
  const out: string[] = [];
  while (r.pos < r.end) {
    const n = r.u8();
    if (n === 0) return "ALPN list has an empty protocol name";
    if (!r.has(n)) return `ALPN protocol name length ${n} runs past the list`;
    out.push(r.text(n));
  }
  return out;
}

/**
 * Why `name` is not a host name we route on, or null. Letters, digits, hyphens and underscores
 * (Consul service names may carry them) in dot-separated labels of 1-63 bytes, 253 in all; no
 * trailing dot (RFC 6066 forbids it), no wildcard, no IP literal tricks beyond digits and dots.
 */
function hostNameProblem(name: string): string | null {
  if (name.length > 253) return `is ${name.length} bytes, over DNS's 253`;
  let label = 0;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c === 0x2e) {
      if (label === 0) return i === 0 ? "starts with a dot" : "has an empty label";
      label = 0;
      continue;
    }
    const ok = (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f;
    if (!ok) return `has byte ${hex(c)} at ${i}, outside letters, digits, '-', '_' and '.'`;
    if (++label > 63) return "has a label over 63 bytes";
  }
  if (label === 0) return "ends with a dot";
  return null;
}

export type PeekResult =
  | { readonly ok: true; readonly sni: string; readonly alpn: readonly string[]; readonly bytes: Buffer }
  | { readonly ok: false; readonly reason: HelloRefusalReason; readonly message: string; readonly bytes: Buffer };

export interface PeekOptions {
  /** An absolute deadline for the whole ClientHello (a trickle of bytes does not extend it). */
  readonly timeoutMs?: number;
  readonly maxBytes?: number;
}

/**
 * Reads from `socket` (a net.Socket, or any byte stream) until its ClientHello is whole, then pauses it. `bytes` is everything read
 * (the ClientHello and anything that followed in the same reads, such as 0-RTT data): write it
 * to the upstream first, then resume the socket. Always resolves, never rejects. After it
 * resolves the socket's error handling is the caller's: attach an 'error' listener before
 * peeking and keep it.
 */
export function peekClientHello(socket: Readable, opts: PeekOptions = {}): Promise<PeekResult> {
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_HELLO_BYTES;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_HELLO_TIMEOUT_MS;
  return new Promise((resolve) => {
    // The first read is kept by reference (a socket's reads are fresh buffers); a hello that
    // arrives in pieces is gathered into one buffer that doubles as it fills.
    let acc: Buffer = Buffer.alloc(0);
    let used = 0;
    let needed = 1;
    let done = false;
    const bytes = () => acc.subarray(0, used);
    const finish = (r: PeekResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("end", onEnd);
      socket.off("close", onEnd);
      socket.off("error", onError);
      socket.pause();
      resolve(r);
    };
    const refuse = (reason: HelloRefusalReason, message: string) => finish({ ok: false, reason, message, bytes: bytes() });
    const onData = (chunk: Buffer) => {
      if (used === 0) acc = chunk;
      else {
        if (used + chunk.length > acc.length) {
          const grown = Buffer.allocUnsafe(Math.max(used + chunk.length, Math.min(2 * Math.max(acc.length, 1024), maxBytes)));
          acc.copy(grown, 0, 0, used);
          acc = grown;
        }
        chunk.copy(acc, used);
      }
      used += chunk.length;
      if (used < needed) return;
      const r = parseClientHello(bytes(), maxBytes);
      if (r.status === "incomplete") needed = r.needed;
      else if (r.status === "refused") refuse(r.reason, r.message);
      else finish({ ok: true, sni: r.sni, alpn: r.alpn, bytes: bytes() });
    };
    const onEnd = () => {
      if (used === 0) refuse("connection_closed", "the connection closed before sending anything");
      else refuse("truncated", `the connection closed after ${used} bytes, before the ClientHello was complete`);
    };
    const onError = (e: Error) => {
      if (used === 0) refuse("connection_closed", `the connection failed before sending anything: ${e.message}`);
      else refuse("truncated", `the connection failed after ${used} bytes, before the ClientHello was complete: ${e.message}`);
    };
    const timer = setTimeout(() => refuse("timeout", `no complete ClientHello within ${timeoutMs} ms (${used} bytes received)`), timeoutMs);
    socket.on("data", onData);
    socket.once("end", onEnd);
    socket.once("close", onEnd);
    socket.on("error", onError);
  });
}
