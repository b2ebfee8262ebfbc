// The heads the HTTP/1 core writes when it forwards: the request for the app, rebuilt from the
// parsed fields, and the app's response fields for the client. Both keep end-to-end fields only
// (RFC 9110 §7.6.1: hop-by-hop ones and those Connection nominates go) and frame the body
// themselves. Repeated fields follow node:http's reading (fields.ts), so the app reads exactly
// the values the authorization read.
import { HOP_BY_HOP, SIDECAR_ONLY_FIELD } from "../http/headers.js";
import { FIRST_LINE_ONLY, fieldValue, lowerName } from "./fields.js";

function nominatedBy(raw: readonly string[]): string[] | null {
  const conn = fieldValue(raw, "connection");
  return conn === undefined ? null : conn.split(",").map((t) => t.trim().toLowerCase());
}

/**
 * `METHOD path HTTP/1.1` and the fields for the app, ending with the blank line. `xfcc` is this
 * hop's x-forwarded-client-cert element (appended to the caller's); `hostFallback` a whole
 * `host: ...\r\n` line for HTTP/1.0 requests without Host; `injected` the trace context fields
 * that replace the caller's. `chunked`: the body is re-chunked as it streams.
 */
export function appRequestHead(method: string, path: string, raw: readonly string[], xfcc: string, hostFallback: string, injected: Readonly<Record<string, string>> | null): { head: string; chunked: boolean } {
  const nominated = nominatedBy(raw);
  let fields = "";
  let host = false;
  let xfccPrev: string | undefined;
  let length: string | undefined;
  let chunked = false;
  let te = false;
  let seen: string[] | null = null;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = lowerName(name);
    const value = raw[i + 1]!;
    if (lower === "transfer-encoding") {
      chunked = true;
      continue;
    }
    if (lower === "te") {
      // The one TE value that is end to end in practice (gRPC's), as compat.ts keeps it.
      te ||= value === "trailers";
      continue;
    }
    if (lower === "content-length") {
      length ??= value;
      continue;
    }
    if (lower === "x-forwarded-client-cert") {
      xfccPrev = xfccPrev === undefined ? value : `${xfccPrev}, ${value}`;
      continue;
    }
    // Expect was answered by the sidecar; the app is not asked to continue again.
    if (HOP_BY_HOP.has(lower) || lower === "expect" || (nominated !== null && nominated.includes(lower)) || (injected !== null && injected[lower] !== undefined)) continue;
    if (FIRST_LINE_ONLY.has(lower)) {
      // node:http keeps the first line of these: only that one goes on, as it is what was authorized.
      if (seen?.includes(lower)) continue;
      (seen ??= []).push(lower);
      if (lower === "host") host = true;
    }
    fields += `${name}: ${value}\r\n`;
  }
  fields += `x-forwarded-client-cert: ${xfccPrev === undefined ? xfcc : `${xfccPrev},${xfcc}`}\r\n`;
  if (te) fields += "te: trailers\r\n";
  if (!host) fields += hostFallback;
  if (injected !== null) for (const k in injected) fields += `${k}: ${injected[k]}\r\n`;
  if (chunked) fields += "transfer-encoding: chunked\r\n";
  else if (length !== undefined) fields += `content-length: ${length}\r\n`;
  return { head: `${method} ${path} HTTP/1.1\r\n${fields}\r\n`, chunked };
}

/** The app's response fields for the client: end-to-end ones only; the length when the app framed the body by it. */
export function clientResponseFields(raw: readonly string[], noBody: boolean): { fields: string; length: number | null } {
  let nominated: string[] | null = null;
  const conn = fieldValue(raw, "connection");
  if (conn !== undefined) nominated = conn.split(",").map((t) => t.trim().toLowerCase());
  let fields = "";
  let length: number | null = null;
  let chunked = false;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = lowerName(name);
    if (lower === "content-length") {
      // A HEAD/204/304 answer's length describes a body that is not sent: passed on as a field.
      if (noBody) fields += `${name}: ${raw[i + 1]}\r\n`;
      else length ??= Number(raw[i + 1]);
      continue;
    }
    if (lower === "transfer-encoding") chunked = true;
    if (HOP_BY_HOP.has(lower) || (nominated !== null && nominated.includes(lower))) continue;
    fields += `${name}: ${raw[i + 1]}\r\n`;
  }
  return { fields, length: chunked ? null : length };
}

/**
 * `METHOD path HTTP/1.1` and the fields of a header record (node:http's shape, as the outbound
 * router built and mutated it), ending with the blank line. Framing is this hop's alone:
 * `framing` is the `content-length` or `transfer-encoding` line for the body being sent, and framing
 * or connection fields in the record are left out (a header mutation cannot reframe the request).
 * `hostFallback` is a whole `host: ...\r\n` line for a record without Host.
 */
export function recordRequestHead(method: string, path: string, headers: Readonly<Record<string, string | string[] | undefined>>, hostFallback: string, framing: string): string {
  let head = `${method} ${path} HTTP/1.1\r\n`;
  for (const name in headers) {
    const v = headers[name];
    if (v === undefined || name === "content-length" || name === "expect") continue;
    // Connection-level fields are this hop's (a mutation that sets one is not passed on); gRPC's `te: trailers` is end to end.
    if (HOP_BY_HOP.has(name) && !(name === "te" && v === "trailers")) continue;
    if (typeof v === "string") head += `${name}: ${v}\r\n`;
    else for (const one of v) head += `${name}: ${one}\r\n`;
  }
  if (headers["host"] === undefined) head += hostFallback;
  return `${head}${framing}\r\n`;
}

/**
 * node:http's `requestHeaders(req)` for the parsed fields in one pass: the end-to-end fields
 * (hop-by-hop ones, those Connection nominates, and Expect, which the sidecar answered, left
 * out; `te: trailers` kept), repeated fields read as node:http reads them (fields.ts). The
 * outbound router routes on these and mutates them, and the next hop gets exactly them, less the
 * app's x-forwarded-client-cert (SIDECAR_ONLY_FIELD), which only a sidecar writes.
 */
export function forwardRecord(raw: readonly string[]): Record<string, string | string[] | undefined> {
  const nominated = nominatedBy(raw);
  const out: Record<string, string | string[] | undefined> = {};
  let te = false;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = lowerName(raw[i]!);
    const v = raw[i + 1]!;
    if (HOP_BY_HOP.has(name) || name === "expect" || (nominated !== null && nominated.includes(name))) {
      te ||= name === "te";
      continue;
    }
    if (name === SIDECAR_ONLY_FIELD) continue;
    const cur = out[name];
    if (cur === undefined) out[name] = name === "set-cookie" ? [v] : v;
    else if (Array.isArray(cur)) cur.push(v);
    // Repeated lines stay lines: the next hop joins them as fields.ts does (a joined value would
    // lose a line's trailing whitespace to the next parser).
    else if (!FIRST_LINE_ONLY.has(name)) out[name] = [cur, v];
  }
  // The one TE value that is end to end in practice (gRPC's), when it is all the lines say, as compat.ts keeps it.
  if (te && fieldValue(raw, "te") === "trailers") out["te"] = "trailers";
  return out;
}
