// The request target as both sidecars authorize, route and forward it. An L7 rule is checked
// against the path the proxy sees; the app acts on the path its own URL parser sees (WHATWG URL,
// Node's url.parse, Go's net/url, Python's urllib.parse, a string compare). Every difference
// between the two is an authorization bypass, so a target is either rewritten into one canonical
// origin-form that every such parser reads the same way, or refused with 400. The canonical
// form is what is authorized, matched against routes, and sent on.
//
// The rules, in the order they apply (README "Request targets" has the table with precedents):
//  - absolute-form `http(s)://authority/p?q` becomes origin-form `/p?q` (RFC 9112 §3.2.2, as
//    Envoy); any other scheme, userinfo, or an authority a parser could end elsewhere: refused;
//    asterisk-form and authority-form (`*`, `host:443`) are refused;
//  - a fragment (`#`): refused (Envoy since 1.19.1; RFC 9112 §3.2 has no fragment);
//  - control characters, space, DEL, non-ASCII, and in the path `"<>[]^`{|}` and `;`: refused
//    (not allowed by RFC 3986 in a path, or read differently by some parser: `;` starts path
//    parameters in Java servlets and Python's urlparse);
//  - `\` in the path becomes `/` (Istio's BASE; WHATWG URL does the same for http);
//  - `%` not followed by two hex digits, an escaped slash or backslash (`%2F`, `%5C`), an escaped
//    control character (`%00`–`%1F`, `%7F`): refused (Envoy's REJECT_REQUEST for escaped
//    slashes: an app that decodes sees another path);
//  - escaped unreserved characters are decoded, other escapes upper-cased (RFC 3986 §6.2.2,
//    Envoy's normalize_path);
//  - runs of slashes are merged (Envoy's merge_slashes; `//host/x` is an authority to WHATWG URL
//    and Python);
//  - dot segments are removed, never above the root (RFC 3986 §5.2.4).
// The query is kept byte for byte; it only has to be free of `#`, controls, space and non-ASCII.
//
// One pass over the target; a target that needs no change allocates only its two slices.

/** A target that can be authorized and forwarded: `path` is canonical, `query` is `""` or starts with `?`. */
export interface RequestTarget {
  readonly ok: true;
  readonly path: string;
  readonly query: string;
}

/** A target refused with 400; `reason` says what was wrong, for the reply, the log and the test. */
export interface RefusedTarget {
  readonly ok: false;
  readonly reason: string;
}

export type ParsedTarget = RequestTarget | RefusedTarget;

// Character classes of the ASCII range (anything >= 0x80 is refused).
const BAD = 0; // refused anywhere
const PCHAR = 1; // unreserved, sub-delims but `;`, ':' and '@': kept as is in a path
const SLASH = 2;
const DOT = 3;
const PERCENT = 4;
const BACKSLASH = 5;
const QUESTION = 6;
const HASH = 7;
const QUERY_ONLY = 8; // printable, allowed in a query, refused in a path

const CLASS = new Uint8Array(128); // zero: BAD
for (let c = 0x21; c < 0x7f; c++) CLASS[c] = QUERY_ONLY;
for (const ch of "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~!$&'()*+,=:@") CLASS[ch.charCodeAt(0)] = PCHAR;
CLASS[0x2f] = SLASH;
CLASS[0x2e] = DOT;
CLASS[0x25] = PERCENT;
CLASS[0x5c] = BACKSLASH;
CLASS[0x3f] = QUESTION;
CLASS[0x23] = HASH;

const UNRESERVED = new Uint8Array(128);
for (const ch of "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~") UNRESERVED[ch.charCodeAt(0)] = 1;

const HEX = "0123456789ABCDEF";

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  if (l >= 0x61 && l <= 0x66) return l - 0x61 + 10;
  return -1;
}

function refuse(reason: string): RefusedTarget {
  return { ok: false, reason };
}

function describe(c: number): string {
  return c < 0x20 || c === 0x7f ? `control character 0x${c.toString(16).padStart(2, "0")}` : c >= 0x80 ? "non-ASCII character" : c === 0x20 ? "space" : `character ${JSON.stringify(String.fromCharCode(c))}`;
}

/**
 * Where the path of `target` starts: 0 for origin-form, after the authority for absolute-form,
 * or a refusal. Only http and https are proxied (RFC 9112 §3.2.2); the authority may hold only
 * the characters of a host and port, so that no parser ends it anywhere else.
 */
function pathStart(target: string): number | RefusedTarget {
  if (target.charCodeAt(0) === 0x2f) return 0;
  if (target === "*") return refuse("asterisk-form request target (*) is not proxied");
  let i = 0;
  while (i < target.length && i < 8) {
    const c = target.charCodeAt(i) | 0x20;
    if (c < 0x61 || c > 0x7a) break;
    i++;
  }
  const scheme = target.slice(0, i).toLowerCase();
  if ((scheme !== "http" && scheme !== "https") || !target.startsWith("://", i)) {
    return refuse("request target is neither origin-form (/path) nor an http(s) absolute URI");
  }
  i += 3;
  const hostStart = i;
  for (; i < target.length; i++) {
    const c = target.charCodeAt(i);
    if (c === 0x2f || c === 0x3f) break;
    if (c === 0x40) return refuse("userinfo (@) in an absolute request target (RFC 9110 §4.2.4)");
    const cls = c < 0x80 ? CLASS[c] : BAD;
    // Host, port and IP literal characters only.
    if (cls !== PCHAR && cls !== DOT && c !== 0x5b && c !== 0x5d) {
      if (cls === HASH) return refuse("fragment (#) in request target");
      return refuse(`${describe(c)} in the authority of an absolute request target`);
    }
  }
  if (i === hostStart) return refuse("empty authority in an absolute request target");
  return i;
}

/**
 * Checks and canonicalizes a request target (HTTP/1.1 request-target or HTTP/2 `:path`).
 * Never throws; runs in time linear in the target's length.
 */
export function parseRequestTarget(target: string): ParsedTarget {
  const start = pathStart(target);
  if (typeof start !== "number") return start;
  const n = target.length;
  // First pass: find the end of the path, refuse what is refused, and see whether the path
  // needs rewriting at all (most do not).
  let end = n;
  let rewrite = false;
  let prev = 0;
  for (let i = start; i < n; i++) {
    const c = target.charCodeAt(i);
    const cls = c < 0x80 ? CLASS[c] : BAD;
    if (cls === QUESTION) {
      end = i;
      break;
    }
    switch (cls) {
      case PCHAR:
        break;
      case SLASH:
        if (prev === 0x2f) rewrite = true;
        break;
      case DOT:
        if (prev === 0x2f) rewrite = true;
        break;
      case PERCENT: {
        const hi = i + 2 < n ? hexValue(target.charCodeAt(i + 1)) : -1;
        const lo = hi >= 0 ? hexValue(target.charCodeAt(i + 2)) : -1;
        if (lo < 0) return refuse("% not followed by two hex digits in the path");
        const v = hi * 16 + lo;
        if (v === 0x2f || v === 0x5c) return refuse(`escaped ${v === 0x2f ? "slash (%2F)" : "backslash (%5C)"} in the path`);
        if (v < 0x20 || v === 0x7f) return refuse(`escaped control character (%${HEX[hi]}${HEX[lo]}) in the path`);
        rewrite = true;
        i += 2;
        break;
      }
      case BACKSLASH:
        rewrite = true;
        break;
      case HASH:
        return refuse("fragment (#) in request target");
      case QUERY_ONLY:
        return refuse(`${describe(c)} in the path`);
      default:
        return refuse(`${describe(c)} in request target`);
    }
    prev = c === 0x5c ? 0x2f : c;
  }
  for (let i = end + 1; i < n; i++) {
    const c = target.charCodeAt(i);
    const cls = c < 0x80 ? CLASS[c] : BAD;
    if (cls === HASH) return refuse("fragment (#) in request target");
    if (cls === BAD) return refuse(`${describe(c)} in the query`);
  }
  const query = end < n ? target.slice(end) : "";
  if (start === end) return { ok: true, path: "/", query };
  if (!rewrite) return { ok: true, path: start === 0 && end === n ? target : target.slice(start, end), query };
  return { ok: true, path: canonicalPath(target, start, end), query };
}

/**
 * The canonical path of `s[start, end)`, already checked by the first pass: backslashes as
 * slashes, unreserved escapes decoded, other escapes upper-cased, slashes merged, dot segments
 * removed. Segments are collected on a stack, so `..` costs O(1).
 */
function canonicalPath(s: string, start: number, end: number): string {
  const segs: string[] = [];
  let seg = "";
  const flush = (last: boolean) => {
    if (seg === ".") {
      if (last) segs.push("");
    } else if (seg === "..") {
      segs.pop();
      if (last) segs.push("");
    } else if (seg !== "" || last) {
      segs.push(seg);
    }
    seg = "";
  };
  // The leading '/' (or the empty path of absolute-form) opens the first segment.
  let i = s.charCodeAt(start) === 0x2f || s.charCodeAt(start) === 0x5c ? start + 1 : start;
  for (; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x2f || c === 0x5c) {
      flush(false);
      continue;
    }
    if (c === 0x25) {
      const hi = hexValue(s.charCodeAt(i + 1));
      const lo = hexValue(s.charCodeAt(i + 2));
      const v = hi * 16 + lo;
      seg += UNRESERVED[v] === 1 ? String.fromCharCode(v) : `%${HEX[hi]}${HEX[lo]}`;
      i += 2;
      continue;
    }
    seg += s[i];
  }
  flush(true);
  return `/${segs.join("/")}`;
}

/** A refusal's one-line description for logs and replies: the reason and what to do. */
export function refusalDetail(r: RefusedTarget): string {
  return `invalid request target: ${r.reason}; send an origin-form path without fragments, escaped slashes or characters RFC 3986 does not allow`;
}
