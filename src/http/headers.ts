// Header rewriting for proxied messages: Consul's RequestHeaders/ResponseHeaders mutations and
// the removal of hop-by-hop fields. Works on node:http-style header records (lower-case keys,
// string or string[] values) in place, so the HTTP layer can hand the result straight to
// http.request / writeHead.
import { NO_HEADER_MUTATION, type HeaderMutation } from "../config/http.js";

/** node:http's IncomingHttpHeaders / OutgoingHttpHeaders shape, lower-case keys. */
export type HeaderRecord = Record<string, string | string[] | undefined>;

/** A mutation Envoy would reject; `field` is relative to the mutation, e.g. `set["Host"]`. */
export class HeaderMutationError extends Error {
  constructor(
    readonly field: string,
    readonly reason: string,
  ) {
    super(`${field}: ${reason}`);
    this.name = "HeaderMutationError";
  }
}

// RFC 9110 §5.1 token; values as node:http accepts them (no CR, LF, NUL or other controls).
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const BAD_VALUE = /[^\t\x20-\x7e\x80-\xff]/;

function checkName(field: string, name: string): string {
  if (!TOKEN.test(name)) throw new HeaderMutationError(field, `${JSON.stringify(name)} is not a valid header name`);
  const lower = name.toLowerCase();
  // Envoy refuses to modify Host and pseudo-headers through these lists (":" already fails TOKEN).
  if (lower === "host") throw new HeaderMutationError(field, "the host header cannot be modified");
  return lower;
}

function checkValue(field: string, value: string): string {
  if (typeof value !== "string" || BAD_VALUE.test(value)) throw new HeaderMutationError(field, `${JSON.stringify(value)} is not a valid header value`);
  return value;
}

function pairs(list: string, r: Readonly<Record<string, string>>): (readonly [string, string])[] {
  return Object.entries(r).map(([n, v]): readonly [string, string] => {
    const field = `${list}[${JSON.stringify(n)}]`;
    return [checkName(field, n), checkValue(field, v)];
  });
}

/** A HeaderMutation with names lower-cased and validated, ready to apply per message. */
export class CompiledHeaderMutation {
  /** True when applying it would change nothing: the per-message fast path. */
  readonly empty: boolean;
  private readonly remove: readonly string[];
  private readonly set: readonly (readonly [string, string])[];
  private readonly add: readonly (readonly [string, string])[];

  constructor(m: HeaderMutation) {
    this.remove = m.remove.map((n, i) => checkName(`remove[${i}]`, n));
    this.set = pairs("set", m.set);
    this.add = pairs("add", m.add);
    this.empty = this.remove.length === 0 && this.set.length === 0 && this.add.length === 0;
  }

  /**
   * Remove, then set (replace), then add (append). An appended value makes the field an array:
   * node:http writes each element as its own field line, which is what Envoy's append does, is
   * equivalent to a comma-joined line for list-valued fields (RFC 9110 §5.3), and is the only
   * correct form for Set-Cookie, which must never be comma-joined. Arrays are replaced, never
   * mutated, as the caller may share them.
   */
  apply(headers: HeaderRecord): void {
    if (this.empty) return;
    for (const name of this.remove) if (headers[name] !== undefined) delete headers[name];
    for (const [name, value] of this.set) headers[name] = value;
    for (const [name, value] of this.add) {
      const cur = headers[name];
      if (cur === undefined) headers[name] = value;
      else if (typeof cur === "string") headers[name] = [cur, value];
      else headers[name] = [...cur, value];
    }
  }
}

// Snapshots are immutable, so a mutation object's compiled form never goes stale; the WeakMap
// lets callers keep passing the Snapshot's own objects and still compile each once.
const compiled = new WeakMap<HeaderMutation, CompiledHeaderMutation>();

/** Compiles (once per mutation object). Throws HeaderMutationError for what Envoy would reject. */
export function compileHeaderMutation(m: HeaderMutation): CompiledHeaderMutation {
  const hit = compiled.get(m);
  if (hit !== undefined) return hit;
  const c = new CompiledHeaderMutation(m);
  compiled.set(m, c);
  return c;
}

export function isEmptyMutation(m: HeaderMutation): boolean {
  return m === NO_HEADER_MUTATION || compileHeaderMutation(m).empty;
}

/**
 * Applies `m` in place (see CompiledHeaderMutation.apply for the order and the array rule).
 * Compile the Snapshot's mutations when it is applied (CompiledRoutes does this for its routes)
 * so an invalid one is rejected there rather than thrown here.
 */
export function applyHeaderMutation(headers: HeaderRecord, m: HeaderMutation): void {
  if (m === NO_HEADER_MUTATION) return;
  compileHeaderMutation(m).apply(headers);
}

/** RFC 9110 §7.6.1 plus the de-facto ones proxies have always dropped (Keep-Alive, Proxy-Connection). */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "proxy-authenticate",
  "proxy-authorization",
]);

function dropNominated(headers: HeaderRecord, value: string): void {
  let start = 0;
  while (start <= value.length) {
    let end = value.indexOf(",", start);
    if (end === -1) end = value.length;
    const name = value.slice(start, end).trim().toLowerCase();
    if (name !== "" && headers[name] !== undefined) delete headers[name];
    start = end + 1;
  }
}

/**
 * Removes hop-by-hop fields and every field the Connection header nominates (RFC 9110 §7.6.1).
 * Call it on what arrived before adding the proxy's own headers: a client may only remove what
 * it sent. Upgrade goes too; a WebSocket handshake is relayed by the upgrade path, not this one.
 */
export function stripHopByHop(headers: HeaderRecord): void {
  const conn = headers["connection"];
  if (typeof conn === "string") dropNominated(headers, conn);
  else if (conn !== undefined) for (const v of conn) dropNominated(headers, v);
  for (const name of HOP_BY_HOP) if (headers[name] !== undefined) delete headers[name];
}

/**
 * The destination sidecar's statement of who called (By=<itself>;URI=<the verified caller>,
 * appended to the caller sidecar's). A local app must not be able to add an element of its own:
 * it would name any identity ahead of the one the destination verified. Consul leaves Envoy's
 * upstream listeners at forward_client_cert_details SANITIZE, which drops it; the outbound side
 * does the same.
 */
export const SIDECAR_ONLY_FIELD = "x-forwarded-client-cert";

/**
 * A copy of `src` holding only end-to-end fields: hop-by-hop ones, those the Connection header
 * nominates, and (for HTTP/2) pseudo-headers are left out while copying. One pass and no
 * `delete`, which would turn the object into a slow dictionary for everything that reads it next.
 * `outbound`: a local app's request going into the mesh, which also loses SIDECAR_ONLY_FIELD.
 */
export function endToEndCopy(src: Readonly<Record<string, string | string[] | undefined>>, skipPseudo = false, outbound = false): HeaderRecord {
  const conn = src["connection"];
  let nominated: Set<string> | null = null;
  if (conn !== undefined) {
    nominated = new Set();
    for (const v of typeof conn === "string" ? [conn] : conn) for (const t of v.split(",")) nominated.add(t.trim().toLowerCase());
  }
  const out: HeaderRecord = {};
  for (const name in src) {
    if (HOP_BY_HOP.has(name) || (skipPseudo && name.charCodeAt(0) === 58) || nominated?.has(name) || (outbound && name === SIDECAR_ONLY_FIELD)) continue;
    out[name] = src[name];
  }
  return out;
}
