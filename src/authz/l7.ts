// L7 intentions on the inbound side (shared/reference/consul-connect.md §2.9). Which intention
// governs a source is a connection-time question, answered once per source; each request is
// then checked only against that intention's permissions. Everything — regexes, lower-cased
// header names, reason strings — is prepared when the policy is compiled, so a request
// allocates nothing.
import type { Permission } from "../config/http.js";
import type { Intention, IntentionAction, IntentionPolicy } from "../config/snapshot.js";
import type { RequestView } from "../http/route-match.js";
import { HOP_BY_HOP, SIDECAR_ONLY_FIELD } from "../http/headers.js";
import {
  MatchCompileError,
  compileHeaderMatches,
  compileMethods,
  compilePathMatch,
  headerMatches,
  headersMatch,
  methodMatches,
  pathMatches,
  type CompiledHeaderMatch,
  type CompiledPathMatch,
} from "../http/match.js";
import { DEFAULT_SCOPE, callerOf, hasPermissions, precedence, sortByPrecedence, sourceMatches, type Caller, type LocalScope } from "./intentions.js";

export interface L7Decision {
  readonly allowed: boolean;
  /** Consul style: `Matched L7 intention: web => api (permission 2: deny)`. */
  readonly reason: string;
}

/**
 * What a permission reads from a request; a RequestView will do. `lines` gives the separate lines
 * of a field the app is sent as two or more lines (undefined when it is absent, one line, or a
 * field the app only gets the first line of): an app may read the first of them (Go's Get,
 * Python's), the last, or all joined (node:http, and `header`), and a decision must hold for each.
 */
export type L7Request = Pick<RequestView, "method" | "path" | "header"> & {
  readonly lines?: (name: string) => readonly string[] | undefined;
  /**
   * Set when `lines` also answers for fields whose `header` is only their first line (node:http's
   * FIRST_LINE_ONLY fields, handed to a Connect-native app with every line in `rawHeaders`): the
   * lines joined with ", " (what a Fetch API Headers built from rawHeaders gives) are then one more
   * reading to judge.
   */
  readonly joinedReading?: boolean;
};

/**
 * What a header permission reads for `name` (lower case) when it is `host` or a pseudo-header,
 * as Envoy's RBAC reads them whatever the caller's protocol: `host` is its name for `:authority`,
 * `:path` is the normalized target with its query, `:method` the method. `authority` is the host
 * the app is sent (HTTP/1.1's Host, HTTP/2's host field or else `:authority`), `pathAndQuery` the
 * canonical target the app is sent. Without this a caller could pass a deny on `host` with an
 * HTTP/2 `:authority`, on `:path` with a target that normalizes into it, and on any pseudo-header
 * over HTTP/1.1, which has none. `:scheme` is `https` whatever the caller sends: every caller
 * reached the listener over mTLS, and HTTP/1.1 sends no scheme (a deny on it would never match).
 * Other names are left to the caller's fields: `undefined` then.
 */
export function requestPseudoField(name: string, method: string, pathAndQuery: string, authority: string | undefined): string | undefined {
  switch (name) {
    case "host":
    case ":authority":
      return authority;
    case ":path":
      return pathAndQuery;
    case ":method":
      return method;
    case ":scheme":
      return "https";
    default:
      return undefined;
  }
}

/**
 * Whether the caller's Connection field (`connection`, its lines joined with ", ") nominates
 * `name` (lower case) away: the sidecar drops such a field before the app (RFC 9110 §7.6.1;
 * forward.ts, endToEndCopy, upgradeRequestHeaders), so a permission reads it as absent, as the app
 * gets it. Read as present, a caller could pass a deny on the field's absence (or an allow on its
 * value) with a field the app then never saw. Not for hop-by-hop fields, which go whether
 * nominated or not (an upgrade's are the relay's to send), nor for Content-Length and
 * x-forwarded-client-cert, which the HTTP/1 core sends on anyway. Tokens are read as the
 * forwarders read them. Called only for the fields a permission names.
 */
export function nominatedAway(connection: string | undefined, name: string): boolean {
  if (!connection || HOP_BY_HOP.has(name) || name === "content-length" || name === SIDECAR_ONLY_FIELD) return false;
  for (const t of connection.split(",")) if (t.trim().toLowerCase() === name) return true;
  return false;
}

/** `host` and the pseudo-headers requestPseudoField answers for; any other name is the request's own field. */
export function isRequestPseudoField(name: string): boolean {
  return name === "host" || name === ":authority" || name === ":path" || name === ":method" || name === ":scheme";
}

/** The decision procedure for one source, fixed for the life of a policy. */
export interface SourceAuthorizer {
  /** The intention that governs the source; null when the default action applies. */
  readonly intention: Intention | null;
  authorize(req: L7Request): L7Decision;
}

/** A permission that cannot be compiled; `field` is e.g. `intentions[3].permissions[0].path.regex`. */
export class PermissionCompileError extends Error {
  constructor(
    readonly field: string,
    readonly reason: string,
  ) {
    super(`${field}: ${reason}`);
    this.name = "PermissionCompileError";
  }
}

class FixedAuthorizer implements SourceAuthorizer {
  private readonly decision: L7Decision;

  constructor(
    readonly intention: Intention | null,
    allowed: boolean,
    reason: string,
  ) {
    this.decision = { allowed, reason };
  }

  authorize(): L7Decision {
    return this.decision;
  }
}

interface CompiledPermission {
  readonly methods: ReadonlySet<string> | null;
  readonly path: CompiledPathMatch;
  readonly headers: readonly CompiledHeaderMatch[];
  readonly decision: L7Decision;
}

/** Path, headers and methods are AND-ed; a permission with none of them matches every request. */
function permissionMatches(p: CompiledPermission, req: L7Request): boolean {
  return methodMatches(p.methods, req.method) && pathMatches(p.path, req.path) && headersMatch(p.headers, req);
}

/** Lines of one field a permission reads, past which a request is refused rather than judged line by line. */
const MAX_READ_LINES = 32;

/** What a header condition can come to over its field's readings: bits, CAN_HOLD | CAN_FAIL for either. */
const CAN_HOLD = 1;
const CAN_FAIL = 2;
/** conditionOutcomes' answer for a field of more than MAX_READ_LINES lines. */
const TOO_MANY = 4;
/** The decisions the permissions can come to: bits. */
const ALLOWS = 1;
const DENIES = 2;

/** Whether `m` can hold, fail, or either, over the joined field and each of its lines. */
function conditionOutcomes(m: CompiledHeaderMatch, req: L7Request, lines: (name: string) => readonly string[] | undefined): number {
  let can = headerMatches(m, req.header(m.name)) ? CAN_HOLD : CAN_FAIL;
  const l = lines(m.name);
  if (l === undefined) return can;
  if (l.length > MAX_READ_LINES) return TOO_MANY;
  for (const v of l) can |= headerMatches(m, v) ? CAN_HOLD : CAN_FAIL;
  if (req.joinedReading === true) can |= headerMatches(m, l.join(", ")) ? CAN_HOLD : CAN_FAIL;
  return can;
}

class PermissionAuthorizer implements SourceAuthorizer {
  private readonly readsHeaders: boolean;
  private readonly ambiguous: L7Decision;
  private readonly tooManyLines: L7Decision;

  constructor(
    readonly intention: Intention,
    private readonly permissions: readonly CompiledPermission[],
    private readonly fallback: L7Decision,
  ) {
    this.readsHeaders = permissions.some((p) => p.headers.length > 0);
    const it = `L7 intention ${intention.source} => ${intention.destination}`;
    this.ambiguous = { allowed: false, reason: `Repeated header lines: ${it} allows some readings of them and denies others (a field's lines joined, or one line alone), and the app may make any of them` };
    this.tooManyLines = { allowed: false, reason: `Repeated header lines: more than ${MAX_READ_LINES} lines of a field ${it} reads` };
  }

  /**
   * A field sent as several lines is judged as each reading of it an app may make: the lines
   * joined, and each line alone (Go's Get reads the first, others the last, a loop over Values any
   * of them). Envoy matched only the joined value, so `x-role: user` then `x-role: admin` passed a
   * deny on `admin` to an app that reads one line (CVE-2026-26308). An app reads each field its
   * own way, so the readings of two fields combine freely (line 1 of one with line 2 of
   * another): each header condition is judged over its field's readings (it can hold, fail, or
   * either), and when the permissions, taken in order, can come to both an allow and a deny, the
   * request is refused, whichever way the joined reading went.
   */
  authorize(req: L7Request): L7Decision {
    if (req.lines === undefined || !this.readsHeaders) return this.decide(req);
    // Bound: a request view may be a class instance, its methods on the prototype.
    const lines = req.lines.bind(req);
    let repeated = false;
    const joined = this.decide({
      method: req.method,
      path: req.path,
      header: (n) => {
        if (!repeated && lines(n) !== undefined) repeated = true;
        return req.header(n);
      },
    });
    // Every field the joined reading looked at has one line: a condition it found false is false
    // in every reading, so the permissions it skipped cannot be reached either.
    if (!repeated) return joined;
    let outcomes = 0;
    for (const p of this.permissions) {
      let can = methodMatches(p.methods, req.method) && pathMatches(p.path, req.path) ? CAN_HOLD : CAN_FAIL;
      for (let i = 0; can !== CAN_FAIL && i < p.headers.length; i++) {
        const c = conditionOutcomes(p.headers[i]!, req, lines);
        if (c === TOO_MANY) return this.tooManyLines;
        // AND: one condition that cannot hold sinks the permission; one that may fail lets it fail.
        can = c === CAN_FAIL ? CAN_FAIL : can | c;
      }
      if (can & CAN_HOLD) outcomes |= p.decision.allowed ? ALLOWS : DENIES;
      // A permission that holds in every reading ends the walk: the ones after it are not reached.
      if (!(can & CAN_FAIL)) return outcomes === (ALLOWS | DENIES) ? this.ambiguous : joined;
    }
    outcomes |= this.fallback.allowed ? ALLOWS : DENIES;
    return outcomes === (ALLOWS | DENIES) ? this.ambiguous : joined;
  }

  private decide(req: L7Request): L7Decision {
    for (const p of this.permissions) if (permissionMatches(p, req)) return p.decision;
    // Consul: no matching permission means the default action — lower-precedence intentions
    // are not consulted, the matched intention was terminal.
    return this.fallback;
  }
}

function compilePermission(p: Permission, index: number, it: Intention, field: string): CompiledPermission {
  if (p.action !== "allow" && p.action !== "deny") throw new MatchCompileError(`${field}.action`, `"${String(p.action)}" must be allow or deny`);
  return {
    methods: compileMethods(p.methods),
    path: compilePathMatch(p.path, `${field}.path`),
    headers: compileHeaderMatches(p.headers, `${field}.headers`),
    // 1-based, as a person counts the permissions they wrote.
    decision: { allowed: p.action === "allow", reason: `Matched L7 intention: ${it.source} => ${it.destination} (permission ${index + 1}: ${p.action})` },
  };
}

function matches(pattern: string, name: string): boolean {
  return pattern === "*" || pattern === name;
}

/** Bounded because source names come from peer certificates; the real set is small. */
const MAX_CACHED_SOURCES = 10_000;

/** The L7 view of one policy for one destination. Throws PermissionCompileError for a bad permission. */
export class CompiledL7Intentions {
  /** Most specific first (Consul precedence), each with its authorizer already built. */
  private readonly ordered: readonly { readonly intention: Intention; readonly authorizer: SourceAuthorizer }[];
  private readonly fallback: SourceAuthorizer;
  private readonly cache = new Map<string, SourceAuthorizer>();

  constructor(
    policy: IntentionPolicy,
    destination: string,
    private readonly local: LocalScope = DEFAULT_SCOPE,
  ) {
    const defaultAction: IntentionAction = policy.defaultAction;
    const noPermission: L7Decision = { allowed: defaultAction === "allow", reason: `No permission matched; default policy is ${defaultAction}` };
    this.fallback = new FixedAuthorizer(null, defaultAction === "allow", `No intention matched; default policy is ${defaultAction}`);

    // Compiled before sorting so a bad permission is reported by its index in the policy, and
    // eagerly so it is reported when the Snapshot is applied, not when a peer first connects.
    const built = new Map<Intention, SourceAuthorizer>();
    policy.intentions.forEach((it, i) => {
      if (!matches(it.destination, destination)) return;
      built.set(it, this.build(it, `intentions[${i}]`, noPermission));
    });
    this.ordered = sortByPrecedence([...built.keys()]).map((intention) => ({ intention, authorizer: built.get(intention) ?? this.fallback }));
  }

  private build(it: Intention, field: string, noPermission: L7Decision): SourceAuthorizer {
    if (!hasPermissions(it)) {
      return new FixedAuthorizer(it, it.action === "allow", `Matched L4 intention: ${it.source} => ${it.destination} (${it.action})`);
    }
    const permissions = (it.permissions ?? []).map((p, j) => {
      const pf = `${field}.permissions[${j}]`;
      try {
        return compilePermission(p, j, it, pf);
      } catch (e) {
        if (e instanceof MatchCompileError) throw new PermissionCompileError(e.field, e.reason);
        throw e;
      }
    });
    return new PermissionAuthorizer(it, permissions, noPermission);
  }

  /** Connection time: the authorizer for a peer, from the most specific intention matching it. */
  forSource(source: string | Caller): SourceAuthorizer {
    const { caller, key } = callerOf(source, this.local);
    const hit = this.cache.get(key);
    if (hit !== undefined) return hit;
    const found = this.ordered.find((o) => sourceMatches(o.intention, caller, this.local));
    const a = found === undefined ? this.fallback : found.authorizer;
    if (this.cache.size >= MAX_CACHED_SOURCES) {
      // Oldest first out; Map iterates in insertion order.
      const oldest = this.cache.keys().next();
      if (oldest.done !== true) this.cache.delete(oldest.value);
    }
    this.cache.set(key, a);
    return a;
  }

  /** Consul's precedence of the intention governing `source` (0 when none does), for logs. */
  precedenceFor(source: string | Caller): number {
    const it = this.forSource(source).intention;
    return it === null ? 0 : precedence(it);
  }
}
