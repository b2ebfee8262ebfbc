// Regular expressions are RE2 (re2js): linear time on hostile input, RE2's syntax (including what
// JS lacks), RE2's refusals, and Envoy's program-size limit — through every place that takes one.
import t from "tap";
import { NO_HEADER_MUTATION, NO_RETRIES, type HeaderMatch, type PathMatch, type QueryParamMatch, type Route } from "../../src/config/http.js";
import { CompiledRoutes, RouteCompileError, type RequestView } from "../../src/http/route-match.js";
import { CompiledL7Intentions, PermissionCompileError } from "../../src/authz/l7.js";
import { FilterError, compileFilter, type FilterTarget } from "../../src/controlplane/chain/bexpr.js";
import { ENVOY_MAX_PROGRAM_SIZE, RegexError, compileRegex } from "../../src/http/regex.js";
import { MatchCompileError, compileRegexField } from "../../src/http/match.js";
import { cpuMs } from "../helpers/cpu-time.js";

function route(cluster: string, m: { path?: PathMatch; headers?: HeaderMatch[]; queryParams?: QueryParamMatch[] }): Route {
  return {
    match: { ...(m.path !== undefined ? { path: m.path } : {}), headers: m.headers ?? [], queryParams: m.queryParams ?? [], methods: [] },
    action: {
      splits: [{ cluster, weight: 10_000, requestHeaders: NO_HEADER_MUTATION, responseHeaders: NO_HEADER_MUTATION }],
      timeoutMs: 15_000,
      idleTimeoutMs: 0,
      retry: NO_RETRIES,
      requestHeaders: NO_HEADER_MUTATION,
      responseHeaders: NO_HEADER_MUTATION,
    },
  };
}

function req(path: string, headers: Record<string, string> = {}, query?: string): RequestView {
  return { method: "GET", path, query: query === undefined ? null : new URLSearchParams(query), header: (n) => headers[n] };
}

const CATCH_ALL = route("default", {});
/** The cluster the request is routed to. */
function pick(r: Route, request: RequestView): string | null {
  return new CompiledRoutes({ routes: [r, CATCH_ALL] }).match(request)?.action.splits[0]?.cluster ?? null;
}

function l7(path: PathMatch | undefined, headers: HeaderMatch[] = []): CompiledL7Intentions {
  return new CompiledL7Intentions(
    {
      defaultAction: "allow",
      intentions: [{ source: "web", destination: "api", action: "allow", permissions: [{ action: "deny", ...(path ? { path } : {}), headers, methods: [] }, { action: "allow", headers: [], methods: [] }] }],
    },
    "api",
  );
}

const TARGET: FilterTarget = {
  service: { meta: { version: "v2" }, tags: [], id: "api-1", name: "api", address: "10.0.0.1", port: 8080 },
  node: { meta: {}, name: "n1", datacenter: "dc1" },
};

const CATASTROPHIC = "/api/([a-z0-9]+)+/admin";
// Nested quantifiers over the same characters, and no `/admin` at the end: a backtracking engine
// tries every way to split the 30,000 characters between the two `+` (2^30000 of them).
const HOSTILE_PATH = `/api/${"a".repeat(30_000)}!`;

t.test("a catastrophic pattern on a 30,000-character input takes milliseconds, not forever", async (t) => {
  // CPU time: a loaded machine must not fail a linear matcher.
  const took = (f: () => unknown): number => cpuMs(() => void f());
  const r = route("admin", { path: { kind: "regex", value: CATASTROPHIC } });
  const routes = new CompiledRoutes({ routes: [r, CATCH_ALL] });
  let ms = took(() => t.equal(routes.match(req(HOSTILE_PATH))?.action.splits[0]?.cluster, "default", "service-router PathRegex: no match"));
  t.ok(ms < 500, `route path regex finished in ${ms.toFixed(1)} ms`);

  const header = new CompiledRoutes({ routes: [route("h", { headers: [{ name: "x-id", regex: CATASTROPHIC }] }), CATCH_ALL] });
  ms = took(() => t.equal(header.match(req("/", { "x-id": HOSTILE_PATH }))?.action.splits[0]?.cluster, "default", "Header[].Regex: no match"));
  t.ok(ms < 500, `header regex finished in ${ms.toFixed(1)} ms`);

  const query = new CompiledRoutes({ routes: [route("q", { queryParams: [{ name: "p", regex: CATASTROPHIC }] }), CATCH_ALL] });
  ms = took(() => t.equal(query.match(req("/", {}, `p=${HOSTILE_PATH}`))?.action.splits[0]?.cluster, "default", "QueryParam[].Regex: no match"));
  t.ok(ms < 500, `query regex finished in ${ms.toFixed(1)} ms`);

  const authz = l7({ kind: "regex", value: CATASTROPHIC }).forSource("web");
  ms = took(() => t.equal(authz.authorize({ method: "GET", path: HOSTILE_PATH, header: () => undefined }).allowed, true, "L7 intention PathRegex: the deny does not match"));
  t.ok(ms < 500, `intention path regex finished in ${ms.toFixed(1)} ms`);

  const headerAuthz = l7(undefined, [{ name: "x-id", regex: CATASTROPHIC }]).forSource("web");
  const hdrs: Record<string, string> = { "x-id": HOSTILE_PATH };
  ms = took(() => t.equal(headerAuthz.authorize({ method: "GET", path: "/", header: (n) => hdrs[n] }).allowed, true, "L7 intention header Regex: no match"));
  t.ok(ms < 500, `intention header regex finished in ${ms.toFixed(1)} ms`);

  const filter = compileFilter(`Service.ID matches "^(a+)+$"`);
  const target: FilterTarget = { ...TARGET, service: { ...TARGET.service, id: `${"a".repeat(30_000)}!` } };
  ms = took(() => t.equal(filter(target), false, "bexpr matches: no match"));
  t.ok(ms < 500, `bexpr regex finished in ${ms.toFixed(1)} ms`);

  t.equal(pick(r, req("/api/abc123/admin")), "admin", "…and the pattern still matches what it should");
});

t.test("RE2 syntax that JS RegExp lacks compiles and matches as RE2 does", async (t) => {
  const full = (pattern: string, input: string) => compileRegexField(pattern, "f").test(input);
  t.equal(full("/api/(?i)admin", "/api/ADMIN"), true, "(?i) in the middle applies from there on");
  t.equal(full("/API/(?i)admin", "/api/ADMIN"), false, "…and not before it");
  t.equal(full("/(?i:admin)/X", "/ADMIN/X"), true, "(?i:...) scoped flag group");
  t.equal(full("/(?i:admin)/X", "/ADMIN/x"), false, "…the flag ends with the group");
  t.equal(full("\\pL+", "héllo"), true, "\\pL: a Unicode letter class");
  t.equal(full("\\p{Greek}+", "αβγ"), true, "\\p{Greek}: a Unicode script");
  t.equal(full("\\PL+", "123"), true, "\\PL: not a letter");
  t.equal(full("[[:alpha:]]+[[:digit:]]", "abc1"), true, "[[:alpha:]] POSIX classes");
  t.equal(full("[[:^alpha:]]", "1"), true, "[[:^alpha:]] negated POSIX class");
  t.equal(full("abc\\z", "abc"), true, "\\z: end of text");
  t.equal(full("\\Aabc", "abc"), true, "\\A: start of text");
  t.equal(full("/v1/\\Qa.b*c\\E", "/v1/a.b*c"), true, "\\Q...\\E quotes metacharacters");
  t.equal(full("/v1/\\Qa.b*c\\E", "/v1/aXbbbc"), false, "…so . and * are literal");
  t.equal(full("/users/(?P<id>[0-9]+)", "/users/42"), true, "(?P<name>...) Go's named group");
  t.equal(full("/x(?U)a+", "/xaaa"), true, "(?U) ungreedy is RE2 syntax too (a full match is unaffected)");
  t.equal(full("\\x{1F600}", "\u{1F600}"), true, "\\x{...} code point escape");
  t.equal(full(".", "\u{1F600}"), true, ". matches one code point (UTF-8 in RE2), not half a surrogate pair");
  t.equal(full("(?s)a.b", "a\nb"), true, "(?s): . matches newline");
  t.equal(full("a.b", "a\nb"), false, "…not without it");
  t.equal(full("(?m)^a$", "a\nb"), false, "(?m) changes ^/$ but a full match still needs the whole input");
  t.equal(full("a|ab", "ab"), true, "a full match tries every alternative (Envoy's FullMatch), not the first that matches a prefix");
  t.equal(full("\\-\\/", "-/"), true, "escaped punctuation is allowed");

  const search = compileRegex("v[0-9]", { match: "search" });
  t.equal(search.test("release-v2-final"), true, "search mode matches anywhere (Go's MatchString)");
  t.same(
    [TARGET].filter(compileFilter(`Service.Meta.version matches "(?i)V2"`)).map((e) => e.service.id),
    ["api-1"],
    "bexpr matches takes RE2 flag groups",
  );
  t.same([TARGET].filter(compileFilter("Service.ID matches `\\pL+-\\d`")).map((e) => e.service.id), ["api-1"], "and Unicode classes");
});

t.test("what RE2 refuses is refused, with a message that says why", async (t) => {
  const refused = (pattern: string, expected: RegExp, why: string) => {
    try {
      compileRegexField(pattern, "match.path.regex");
      t.fail(`${why}: ${JSON.stringify(pattern)} compiled`);
    } catch (e) {
      t.ok(e instanceof MatchCompileError, `${why}: a MatchCompileError`);
      if (e instanceof MatchCompileError) {
        t.equal(e.field, "match.path.regex", `${why}: names the field`);
        t.match(e.message, expected, `${why}: ${e.message}`);
      }
    }
  };
  refused("/(?=admin)", /no lookahead or lookbehind/, "lookahead");
  refused("/(?!admin)", /no lookahead or lookbehind/, "negative lookahead");
  refused("/(?<=x)admin", /no lookahead or lookbehind/, "lookbehind");
  refused("/(?<!x)admin", /no lookahead or lookbehind/, "negative lookbehind");
  refused("(a)\\1", /no backreferences/, "a numbered backreference");
  refused("(?<n>a)\\k<n>", /no backreferences/, "a named backreference");
  refused("a++", /invalid nested repetition operator/, "possessive quantifiers");
  refused("\\u0041", /invalid escape sequence/, "JS's \\u escape");
  refused("\\Z", /invalid escape sequence/, "PCRE's \\Z");
  refused("a{1001}", /invalid repeat count/, "a repeat count over 1000");
  refused("(".repeat(2000) + ")".repeat(2000), /nests too deeply/, "nesting deeper than RE2 allows");
  refused("/(unclosed", /missing closing \)/, "an unclosed group");

  const long = `(${"x".repeat(10_000)}`;
  try {
    compileRegexField(long, "f");
  } catch (e) {
    t.ok(e instanceof MatchCompileError && e.message.length < 400, "a long bad pattern is quoted in part, not in full");
  }

  try {
    compileRegex("(?=x)", { match: "search" });
    t.fail("compiled");
  } catch (e) {
    t.ok(e instanceof RegexError, "compileRegex throws a RegexError");
  }

  const bexpr = (() => {
    try {
      compileFilter('Service.ID matches "(a)\\\\1"');
    } catch (e) {
      return e;
    }
    return null;
  })();
  t.ok(bexpr instanceof FilterError, "bexpr: a FilterError");
  if (bexpr instanceof FilterError) {
    t.equal(bexpr.position, 19, "bexpr: at the pattern");
    t.match(bexpr.message, /no backreferences/, "bexpr: says why");
  }
});

t.test("route and intention regexes are held to Envoy's program size; bexpr is not", async (t) => {
  const big = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";
  t.doesNotThrow(() => compileRegexField(big, "f"), "a UUID pattern is well under the limit");
  const tooBig = "(?:.*a.*b.*){300}";
  t.throws(() => compileRegexField(tooBig, "f"), { name: "MatchCompileError", message: new RegExp(`program size \\d+ is over the limit of ${ENVOY_MAX_PROGRAM_SIZE}`) }, "a pattern over the limit");
  t.throws(() => new CompiledRoutes({ routes: [route("x", { path: { kind: "regex", value: tooBig } })] }), RouteCompileError, "…refused in a route");
  t.throws(() => l7({ kind: "regex", value: tooBig }), PermissionCompileError, "…and in an intention");
  t.doesNotThrow(() => compileFilter(`Service.ID matches "${tooBig}"`), "go-bexpr (Go's regexp) has no such limit");
});
