// Picks the route for an outbound HTTP request: service-router semantics (first match wins) with
// Envoy's matcher behaviour. A RouteTable is compiled once when a Snapshot is applied — which is
// also where a bad regex is rejected — so that matching a request allocates nothing.
import type { HeaderMutation, QueryParamMatch, Route, RouteMatch, RouteTable } from "../config/http.js";
import {
  MatchCompileError,
  asciiLower,
  compileHeaderMatches,
  compileMethods,
  compilePathMatch,
  compileRegexField,
  headersMatch,
  methodMatches,
  pathMatches,
  type CompiledHeaderMatch,
  type CompiledPathMatch,
} from "./match.js";
import type { CompiledRegex } from "./regex.js";
import { HeaderMutationError, compileHeaderMutation } from "./headers.js";

/** What matching reads from a request; the HTTP layer adapts its request object to this. */
export interface RequestView {
  /** Upper-case, as node:http gives it. */
  readonly method: string;
  /** Without the query string. */
  readonly path: string;
  /**
   * Parsed query, null when the request has none. Read only when a route that tests query
   * parameters is reached, so a caller can make it a lazy getter and pay for parsing only then
   * (and share the parse with hash policies).
   */
  readonly query: URLSearchParams | null;
  /** `name` is lower-case; repeated field lines as one comma-joined value. */
  header(name: string): string | undefined;
}

/**
 * A RequestView whose query is parsed on its first read. A class rather than an object literal
 * with a getter: V8 defines such a literal's accessor through its runtime, and the client
 * sidecar promoted ~1 KB per request of those literals (bench/PERF-LOG.md, session 17).
 */
export class LazyRequestView implements RequestView {
  private parsed: URLSearchParams | null | undefined = undefined;

  constructor(
    readonly method: string,
    readonly path: string,
    /** The request target's query as request-target.ts gives it: `""` or starting with `?`. */
    private readonly search: string,
    readonly header: (name: string) => string | undefined,
  ) {}

  get query(): URLSearchParams | null {
    // URLSearchParams drops the leading `?` itself; a lone `?` is no query.
    if (this.parsed === undefined) this.parsed = this.search.length > 1 ? new URLSearchParams(this.search) : null;
    return this.parsed;
  }
}

/** A route that cannot be compiled. `field` is relative to the route, e.g. `match.headers[1].regex`. */
export class RouteCompileError extends Error {
  constructor(
    readonly routeIndex: number,
    readonly field: string,
    readonly reason: string,
  ) {
    super(`route ${routeIndex}: ${field}: ${reason}`);
    this.name = "RouteCompileError";
  }
}

interface CompiledQueryMatch {
  readonly name: string;
  readonly kind: "present" | "exact" | "regex";
  readonly value: string;
  readonly re: CompiledRegex | null;
}

interface CompiledRoute {
  readonly route: Route;
  readonly methods: ReadonlySet<string> | null;
  readonly path: CompiledPathMatch;
  readonly headers: readonly CompiledHeaderMatch[];
  readonly query: readonly CompiledQueryMatch[];
}

function compileQueryMatch(q: QueryParamMatch, field: string): CompiledQueryMatch {
  if (typeof q.name !== "string" || q.name.length === 0) throw new MatchCompileError(`${field}.name`, "must be a non-empty parameter name");
  const set = [q.present === true ? "present" : null, q.exact !== undefined ? "exact" : null, q.regex !== undefined ? "regex" : null].filter((s) => s !== null);
  if (set.length !== 1) throw new MatchCompileError(field, `needs exactly one of present, exact, regex (has ${set.length === 0 ? "none" : set.join(", ")})`);
  if (q.present === true) return { name: q.name, kind: "present", value: "", re: null };
  if (q.exact !== undefined) return { name: q.name, kind: "exact", value: q.exact, re: null };
  const regex = q.regex ?? "";
  return { name: q.name, kind: "regex", value: regex, re: compileRegexField(regex, `${field}.regex`) };
}

/** Envoy's query matcher: the first value of the parameter (decoded); a missing parameter never matches. */
function queryMatches(ms: readonly CompiledQueryMatch[], params: URLSearchParams | null): boolean {
  if (params === null) return false;
  for (const m of ms) {
    const v = params.get(m.name);
    if (v === null) return false;
    if (m.kind === "exact" && v !== m.value) return false;
    if (m.kind === "regex" && (m.re === null || !m.re.test(v))) return false;
  }
  return true;
}

function compileRoute(route: Route): CompiledRoute {
  const m = route.match;
  if (route.action.prefixRewrite !== undefined && route.action.prefixRewrite !== "" && m.path?.kind === "regex") {
    // Envoy rejects prefix_rewrite on a regex route: there is no matched prefix to replace.
    throw new MatchCompileError("action.prefixRewrite", "needs a prefix or exact path match (or none), not a regex");
  }
  const a = route.action;
  const mutations: { readonly field: string; readonly mut: HeaderMutation }[] = [
    { field: "action.requestHeaders", mut: a.requestHeaders },
    { field: "action.responseHeaders", mut: a.responseHeaders },
  ];
  a.splits.forEach((s, i) => {
    mutations.push({ field: `action.splits[${i}].requestHeaders`, mut: s.requestHeaders });
    mutations.push({ field: `action.splits[${i}].responseHeaders`, mut: s.responseHeaders });
  });
  for (const { field, mut } of mutations) {
    // Compiling here validates the mutation and warms applyHeaderMutation's cache for it.
    try {
      compileHeaderMutation(mut);
    } catch (e) {
      if (e instanceof HeaderMutationError) throw new MatchCompileError(`${field}.${e.field}`, e.reason);
      throw e;
    }
  }
  return {
    route,
    methods: compileMethods(m.methods),
    path: compilePathMatch(m.path, "match.path"),
    headers: compileHeaderMatches(m.headers, "match.headers"),
    query: m.queryParams.map((q, i) => compileQueryMatch(q, `match.queryParams[${i}]`)),
  };
}

/** A RouteTable ready for per-request matching. Throws RouteCompileError for an invalid route. */
export class CompiledRoutes {
  private readonly routes: readonly CompiledRoute[];

  constructor(table: RouteTable) {
    this.routes = table.routes.map((r, i) => {
      try {
        return compileRoute(r);
      } catch (e) {
        if (e instanceof MatchCompileError) throw new RouteCompileError(i, e.field, e.reason);
        throw e;
      }
    });
  }

  /** First match wins; null when no route matches (a table without a catch-all). */
  match(req: RequestView): Route | null {
    const i = this.matchIndex(req);
    return i < 0 ? null : this.routes[i]!.route;
  }

  /** The index in the table of the first route that matches, -1 when none does. */
  matchIndex(req: RequestView): number {
    const routes = this.routes;
    for (let i = 0; i < routes.length; i++) {
      const r = routes[i]!;
      // Cheapest tests first; all must pass, so the order changes nothing but cost.
      if (!methodMatches(r.methods, req.method)) continue;
      if (!pathMatches(r.path, req.path)) continue;
      if (!headersMatch(r.headers, req)) continue;
      if (r.query.length > 0 && !queryMatches(r.query, req.query)) continue;
      return i;
    }
    return -1;
  }
}

/**
 * Envoy's prefix_rewrite: the matched prefix is replaced as-is, slashes included (prefix `/api`
 * with rewrite `/` turns `/api/x` into `//x`, as in Envoy — write the prefix as `/api/`). A
 * path that does not start with the prefix is returned unchanged; an empty result becomes `/`.
 * With `fold` (a CaseInsensitive match) the prefix is compared without ASCII case, as it matched.
 * `path` excludes the query string; the caller re-appends it.
 */
export function rewritePrefix(path: string, matchedPrefix: string, replacement: string, fold = false): string {
  if (!(fold ? asciiLower(path).startsWith(asciiLower(matchedPrefix)) : path.startsWith(matchedPrefix))) return path;
  const out = replacement + path.slice(matchedPrefix.length);
  return out.length === 0 ? "/" : out;
}

/**
 * The prefix a route's prefixRewrite replaces: the prefix, the whole exact path (Envoy replaces
 * the path), or `/` for a route without a path match (Consul emits prefix `/` for it).
 * Null for regex routes, which cannot be rewritten.
 */
export function matchedPrefix(m: RouteMatch): string | null {
  if (m.path === undefined) return "/";
  return m.path.kind === "regex" ? null : m.path.value;
}

/** The upstream path for a request that matched `route`; `path` excludes the query string. */
export function rewritePath(route: Route, path: string): string {
  const replacement = route.action.prefixRewrite;
  if (replacement === undefined || replacement === "") return path;
  const prefix = matchedPrefix(route.match);
  const fold = route.match.path !== undefined && route.match.path.kind !== "regex" && route.match.path.caseInsensitive === true;
  return prefix === null ? path : rewritePrefix(path, prefix, replacement, fold);
}
