// Reading fields straight from the parser's flat [name, value, ...] array, with node:http's
// rules for repeated fields (IncomingMessage's matchKnownFields): for the fields below only the
// first line counts, Cookie lines join with "; ", the rest with ", ". The HTTP/1 core uses the
// same rules to authorize a request and to write it to the app, so the app (node:http or
// anything that keeps the first of these) acts on exactly the values that were authorized.
import type { IncomingHttpHeaders } from "node:http";

/** Fields node:http keeps only the first line of. */
export const FIRST_LINE_ONLY: ReadonlySet<string> = new Set([
  "content-type",
  "content-length",
  "user-agent",
  "referer",
  "host",
  "authorization",
  "proxy-authorization",
  "if-modified-since",
  "if-unmodified-since",
  "from",
  "location",
  "max-forwards",
  "retry-after",
  "etag",
  "last-modified",
  "server",
  "age",
  "expires",
]);

/** ASCII lower case without allocating when the name already is (the common case on the wire). */
export function lowerName(name: string): string {
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c >= 65 && c <= 90) return name.toLowerCase();
  }
  return name;
}

/** The value node:http would give for `name` (lower case), joined as node joins it; undefined when absent. */
export function fieldValue(raw: readonly string[], name: string): string | undefined {
  let out: string | undefined;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const n = raw[i]!;
    if (n.length !== name.length || lowerName(n) !== name) continue;
    const v = raw[i + 1]!;
    if (out === undefined) {
      out = v;
      if (FIRST_LINE_ONLY.has(name)) return out;
    } else {
      out += name === "cookie" ? `; ${v}` : `, ${v}`;
    }
  }
  return out;
}

/**
 * The lines of `name` (lower case) when there are two or more and the app is sent each of them
 * (every field but FIRST_LINE_ONLY's, whose later lines are dropped); undefined otherwise. Only
 * for a field a permission reads: it allocates.
 */
export function fieldLines(raw: readonly string[], name: string): string[] | undefined {
  return FIRST_LINE_ONLY.has(name) ? undefined : everyFieldLine(raw, name);
}

/**
 * The lines of `name` (lower case), and of `alias` when given (HTTP/2's `:authority` beside
 * `host`), when there are two or more, FIRST_LINE_ONLY's fields too; undefined otherwise. For an
 * app that is handed the parsed request itself (the Connect-native gate): node:http keeps only the
 * first line of those fields in `headers`, but `rawHeaders` and `headersDistinct` hold every line.
 * Allocates only for two or more lines.
 */
export function everyFieldLine(raw: readonly string[], name: string, alias?: string): string[] | undefined {
  let out: string[] | undefined;
  let first: string | undefined;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const n = raw[i]!;
    if (!isField(n, name) && (alias === undefined || !isField(n, alias))) continue;
    const v = raw[i + 1]!;
    if (first === undefined) first = v;
    else if (out === undefined) out = [first, v];
    else out.push(v);
  }
  return out;
}

function isField(n: string, lowerCaseName: string): boolean {
  return n.length === lowerCaseName.length && lowerName(n) === lowerCaseName;
}

/**
 * An answer's fields as the parser gave them (flat name, value, ...), handed on as they are: a
 * sink on the HTTP/1 core writes them straight into the next head (forward.ts), and a record is
 * built only when something reads or mutates the fields.
 */
export class ParsedFields {
  constructor(readonly raw: string[]) {}

  record(): IncomingHttpHeaders {
    return fieldRecord(this.raw);
  }
}

/** node:http's `req.headers` for these raw fields (for tracing, access logs and the upgrade hand-over). */
export function fieldRecord(raw: readonly string[]): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = lowerName(raw[i]!);
    const v = raw[i + 1]!;
    const cur = out[name];
    if (cur === undefined) out[name] = name === "set-cookie" ? [v] : v;
    else if (Array.isArray(cur)) cur.push(v);
    else if (!FIRST_LINE_ONLY.has(name)) out[name] = `${cur}${name === "cookie" ? "; " : ", "}${v}`;
  }
  return out;
}
