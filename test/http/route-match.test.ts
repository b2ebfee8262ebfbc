// Route matching: each rule has a case that would pass if the rule were ignored.
import t from "tap";
import { NO_HEADER_MUTATION, NO_RETRIES, type HeaderMatch, type PathMatch, type QueryParamMatch, type Route } from "../../src/config/http.js";
import { CompiledRoutes, LazyRequestView, RouteCompileError, matchedPrefix, rewritePath, rewritePrefix, type RequestView } from "../../src/http/route-match.js";

interface MatchSpec {
  readonly path?: PathMatch;
  readonly headers?: readonly HeaderMatch[];
  readonly queryParams?: readonly QueryParamMatch[];
  readonly methods?: readonly string[];
}

function route(cluster: string, m: MatchSpec = {}, prefixRewrite?: string): Route {
  return {
    match: {
      ...(m.path !== undefined ? { path: m.path } : {}),
      headers: m.headers ?? [],
      queryParams: m.queryParams ?? [],
      methods: m.methods ?? [],
    },
    action: {
      splits: [{ cluster, weight: 10_000, requestHeaders: NO_HEADER_MUTATION, responseHeaders: NO_HEADER_MUTATION }],
      ...(prefixRewrite !== undefined ? { prefixRewrite } : {}),
      timeoutMs: 15_000,
      idleTimeoutMs: 0,
      retry: NO_RETRIES,
      requestHeaders: NO_HEADER_MUTATION,
      responseHeaders: NO_HEADER_MUTATION,
    },
  };
}

function req(path: string, opts: { method?: string; headers?: Record<string, string>; query?: string } = {}): RequestView {
  const headers = opts.headers ?? {};
  return {
    method: opts.method ?? "GET",
    path,
    query: opts.query === undefined ? null : new URLSearchParams(opts.query),
    header: (name) => headers[name],
  };
}

/** The cluster of the first split of the route that matched, or null. */
function pick(table: readonly Route[], r: RequestView): string | null {
  const m = new CompiledRoutes({ routes: table }).match(r);
  return m === null ? null : (m.action.splits[0]?.cluster ?? null);
}

const CATCH_ALL = route("default");

t.test("path exact, prefix and regex", async (t) => {
  const table = [route("exact", { path: { kind: "exact", value: "/api" } }), CATCH_ALL];
  t.equal(pick(table, req("/api")), "exact", "exact matches the same path");
  t.equal(pick(table, req("/api/x")), "default", "exact does not match a longer path");
  t.equal(pick(table, req("/API")), "default", "exact is case-sensitive, as Envoy's");

  const prefix = [route("prefix", { path: { kind: "prefix", value: "/api/" } }), CATCH_ALL];
  t.equal(pick(prefix, req("/api/v1/users")), "prefix", "prefix matches a longer path");
  t.equal(pick(prefix, req("/api")), "default", "prefix does not match a shorter path");
  t.equal(pick(prefix, req("/xapi/")), "default", "prefix anchors at the start");

  const regex = [route("regex", { path: { kind: "regex", value: "/users/[0-9]+" } }), CATCH_ALL];
  t.equal(pick(regex, req("/users/42")), "regex", "regex matches the whole path");
  t.equal(pick(regex, req("/users/42/edit")), "default", "a regex is a full match: a trailing part fails it");
  t.equal(pick(regex, req("/v2/users/42")), "default", "a regex is a full match: a leading part fails it");

  const alt = [route("alt", { path: { kind: "regex", value: "/a|/b" } }), CATCH_ALL];
  t.equal(pick(alt, req("/b")), "alt", "alternation is grouped before anchoring");
  t.equal(pick(alt, req("/a/x")), "default", "…so no branch escapes the anchors");

  const flagged = [route("ci", { path: { kind: "regex", value: "(?i)/Admin" } }), CATCH_ALL];
  t.equal(pick(flagged, req("/ADMIN")), "ci", "a leading RE2 (?i) flag is honoured");
});

t.test("header matchers", async (t) => {
  const one = (h: HeaderMatch) => [route("hit", { headers: [h] }), CATCH_ALL];
  const present = one({ name: "X-Canary", present: true });
  t.equal(pick(present, req("/", { headers: { "x-canary": "" } })), "hit", "present matches a header with an empty value (names compared lower-case)");
  t.equal(pick(present, req("/")), "default", "present fails when the header is absent");

  const exact = one({ name: "x-env", exact: "prod" });
  t.equal(pick(exact, req("/", { headers: { "x-env": "prod" } })), "hit", "exact matches");
  t.equal(pick(exact, req("/", { headers: { "x-env": "production" } })), "default", "exact is not a prefix match");

  const prefix = one({ name: "user-agent", prefix: "curl/" });
  t.equal(pick(prefix, req("/", { headers: { "user-agent": "curl/8.1" } })), "hit", "prefix matches");
  t.equal(pick(prefix, req("/", { headers: { "user-agent": "x-curl/8.1" } })), "default", "prefix anchors at the start");

  const suffix = one({ name: "host", suffix: ".internal" });
  t.equal(pick(suffix, req("/", { headers: { host: "api.internal" } })), "hit", "suffix matches");
  t.equal(pick(suffix, req("/", { headers: { host: "api.internal.com" } })), "default", "suffix anchors at the end");

  const regex = one({ name: "x-version", regex: "v[0-9]" });
  t.equal(pick(regex, req("/", { headers: { "x-version": "v2" } })), "hit", "regex matches");
  t.equal(pick(regex, req("/", { headers: { "x-version": "v22" } })), "default", "a header regex is a full match");

  const inverted = one({ name: "x-env", exact: "prod", invert: true });
  t.equal(pick(inverted, req("/", { headers: { "x-env": "dev" } })), "hit", "invert matches a different value");
  t.equal(pick(inverted, req("/", { headers: { "x-env": "prod" } })), "default", "invert fails the value it names");
  t.equal(pick(inverted, req("/")), "default", "Envoy: an inverted value matcher still needs the header to be present");

  const absent = one({ name: "x-debug", present: true, invert: true });
  t.equal(pick(absent, req("/")), "hit", "inverted present matches an absent header");
  t.equal(pick(absent, req("/", { headers: { "x-debug": "1" } })), "default", "inverted present fails a present header");

  const both = [route("hit", { headers: [{ name: "a", exact: "1" }, { name: "b", exact: "2" }] }), CATCH_ALL];
  t.equal(pick(both, req("/", { headers: { a: "1", b: "2" } })), "hit", "all header matchers pass");
  t.equal(pick(both, req("/", { headers: { a: "1" } })), "default", "header matchers are AND-ed");
});

t.test("query parameter matchers", async (t) => {
  const present = [route("hit", { queryParams: [{ name: "debug", present: true }] }), CATCH_ALL];
  t.equal(pick(present, req("/", { query: "debug" })), "hit", "present matches a valueless parameter");
  t.equal(pick(present, req("/", { query: "other=1" })), "default", "present fails without the parameter");
  t.equal(pick(present, req("/")), "default", "present fails without a query string");

  const exact = [route("hit", { queryParams: [{ name: "v", exact: "a b" }] }), CATCH_ALL];
  t.equal(pick(exact, req("/", { query: "v=a%20b" })), "hit", "exact compares the decoded value");
  t.equal(pick(exact, req("/", { query: "v=a" })), "default", "exact fails another value");
  t.equal(pick(exact, req("/", { query: "v=a%20b&v=c" })), "hit", "the first value of a repeated parameter counts");

  const regex = [route("hit", { queryParams: [{ name: "id", regex: "[0-9]+" }] }), CATCH_ALL];
  t.equal(pick(regex, req("/", { query: "id=123" })), "hit", "regex matches");
  t.equal(pick(regex, req("/", { query: "id=123a" })), "default", "a query regex is a full match");
});

t.test("methods", async (t) => {
  const table = [route("writes", { methods: ["POST", "put"] }), CATCH_ALL];
  t.equal(pick(table, req("/", { method: "POST" })), "writes", "a listed method matches");
  t.equal(pick(table, req("/", { method: "PUT" })), "writes", "configured methods are upper-cased");
  t.equal(pick(table, req("/", { method: "GET" })), "default", "an unlisted method does not match");
  t.equal(pick([route("any"), CATCH_ALL], req("/", { method: "DELETE" })), "any", "no methods means any method");
});

t.test("first match wins and the catch-all is last", async (t) => {
  const table = [
    route("admin", { path: { kind: "prefix", value: "/admin" }, methods: ["GET"] }),
    route("api", { path: { kind: "prefix", value: "/" }, headers: [{ name: "x-api", present: true }] }),
    route("admin-any", { path: { kind: "prefix", value: "/admin" } }),
    CATCH_ALL,
  ];
  t.equal(pick(table, req("/admin/users", { headers: { "x-api": "1" } })), "admin", "the earliest matching route wins over later ones that also match");
  t.equal(pick(table, req("/admin/users", { method: "POST", headers: { "x-api": "1" } })), "api", "a route failing one rule falls to the next");
  t.equal(pick(table, req("/admin/users", { method: "POST" })), "admin-any", "later routes are reached");
  t.equal(pick(table, req("/other", { method: "POST" })), "default", "the catch-all takes the rest");
  t.equal(pick([route("only", { path: { kind: "exact", value: "/x" } })], req("/y")), null, "without a catch-all, no match is null");
});

t.test("invalid routes are rejected at compile time", async (t) => {
  const bad = (table: readonly Route[], index: number, field: string, why: string) => {
    let err: unknown = null;
    try {
      new CompiledRoutes({ routes: table });
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof RouteCompileError, `${why}: throws RouteCompileError`);
    if (err instanceof RouteCompileError) {
      t.equal(err.routeIndex, index, `${why}: names route ${index}`);
      t.equal(err.field, field, `${why}: names ${field}`);
      t.match(err.message, `route ${index}: ${field}: `, `${why}: says both in the message`);
    }
  };
  bad([CATCH_ALL, route("x", { path: { kind: "regex", value: "/(unclosed" } })], 1, "match.path.regex", "a bad path regex names the route and the field");
  bad([route("x", { headers: [{ name: "a", exact: "1" }, { name: "b", regex: "[z-a]" }] })], 0, "match.headers[1].regex", "a bad header regex");
  bad([CATCH_ALL, CATCH_ALL, route("x", { queryParams: [{ name: "q", regex: "*" }] })], 2, "match.queryParams[0].regex", "a bad query regex");
  bad([route("x", { path: { kind: "regex", value: "/(?=lookahead)" } })], 0, "match.path.regex", "RE2 has no lookahead; neither do we");
  bad([route("x", { headers: [{ name: "a", regex: "(a)\\1" }] })], 0, "match.headers[0].regex", "RE2 has no backreferences");
  bad([route("x", { headers: [{ name: "a", exact: "1", prefix: "1" }] })], 0, "match.headers[0]", "two specifiers in one header matcher");
  bad([route("x", { headers: [{ name: "a" }] })], 0, "match.headers[0]", "no specifier in a header matcher");
  bad([route("x", { path: { kind: "regex", value: "/a" } }, "/b")], 0, "action.prefixRewrite", "prefix rewrite on a regex route");
  const r = route("x");
  const withBadMutation: Route = { ...r, action: { ...r.action, requestHeaders: { add: {}, set: { "bad name": "v" }, remove: [] } } };
  bad([withBadMutation], 0, `action.requestHeaders.set["bad name"]`, "an invalid header mutation is rejected with the routes");
});

t.test("prefix rewrite (Envoy prefix_rewrite)", async (t) => {
  t.equal(rewritePrefix("/api/users", "/api/", "/v2/"), "/v2/users", "the matched prefix is replaced");
  t.equal(rewritePrefix("/api/users", "/api", "/"), "//users", "slashes are kept as written, as Envoy does");
  t.equal(rewritePrefix("/api/users", "/api/", "/"), "/users", "a trailing-slash prefix strips cleanly");
  t.equal(rewritePrefix("/api", "/api", ""), "/", "an empty result becomes /");
  t.equal(rewritePrefix("/users", "/", "/v1/"), "/v1/users", "the default route's prefix is /");
  t.equal(rewritePrefix("/other", "/api", "/v2"), "/other", "a path without the prefix is unchanged");

  t.equal(matchedPrefix(route("x").match), "/", "no path match rewrites from /");
  t.equal(matchedPrefix(route("x", { path: { kind: "exact", value: "/old" } }).match), "/old", "exact rewrites the whole path");
  t.equal(matchedPrefix(route("x", { path: { kind: "regex", value: "/a" } }).match), null, "regex has no prefix");
  t.equal(rewritePath(route("x", { path: { kind: "prefix", value: "/api/" } }, "/"), "/api/users"), "/users", "rewritePath uses the route's own prefix");
  t.equal(rewritePath(route("x", {}, "/base/"), "/users"), "/base/users", "…and / for a route without a path match");
  t.equal(rewritePath(route("x", { path: { kind: "prefix", value: "/api/" } }), "/api/users"), "/api/users", "no prefixRewrite, no change");
});

t.test("LazyRequestView: the query is parsed once, on its first read, and is null without one", async (t) => {
  const v = new LazyRequestView("GET", "/p", "?a=1&a=2&b=%20", (n) => (n === "x-k" ? "v" : undefined));
  const q = v.query;
  t.same(q?.getAll("a"), ["1", "2"], "repeated parameters kept");
  t.equal(q?.get("b"), " ", "decoded");
  t.equal(v.query, q, "the same parse on the second read");
  t.equal(v.header("x-k"), "v", "fields through the given reader");
  t.equal(new LazyRequestView("GET", "/p", "", () => undefined).query, null, "no query: null");
  const exact = [route("hit", { queryParams: [{ name: "b", exact: " " }] }), CATCH_ALL];
  t.equal(pick(exact, new LazyRequestView("GET", "/", "?b=%20", () => undefined)), "hit", "routes match on it as on a literal view");
  t.equal(pick(exact, new LazyRequestView("GET", "/", "", () => undefined)), "default", "and without a query");
});
