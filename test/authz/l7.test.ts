// L7 intentions: the §8.7 vectors of shared/reference/consul-connect.md, precedence, the
// default-action fallback, and how the L4 path treats an L7 intention.
import t from "tap";
import type { Permission } from "../../src/config/http.js";
import type { Intention, IntentionPolicy } from "../../src/config/snapshot.js";
import { CompiledL7Intentions, PermissionCompileError, nominatedAway, type L7Request } from "../../src/authz/l7.js";
import { CompiledIntentions, hasPermissions } from "../../src/authz/intentions.js";

function req(method: string, path: string, headers: Record<string, string> = {}): L7Request {
  return { method, path, header: (n) => headers[n] };
}

// §8.7: frontend => billing with two permissions, and * => billing deny.
const FRONTEND_PERMISSIONS: readonly Permission[] = [
  { action: "allow", path: { kind: "prefix", value: "/invoices" }, headers: [], methods: ["GET", "HEAD"] },
  { action: "deny", path: { kind: "regex", value: "^/admin(/.*)?$" }, headers: [{ name: "x-debug", present: true }], methods: [] },
];
const frontendL7: Intention = { source: "frontend", destination: "billing", action: "allow", permissions: FRONTEND_PERMISSIONS };
const wildcardDeny: Intention = { source: "*", destination: "billing", action: "deny" };
const wildcardAllow: Intention = { source: "*", destination: "billing", action: "allow" };

// The wildcard is written first so that only precedence, not order, can put frontend's first.
const VECTORS: IntentionPolicy = { defaultAction: "deny", intentions: [wildcardDeny, frontendL7] };

t.test("§8.7 vectors, default policy deny", async (t) => {
  const l7 = new CompiledL7Intentions(VECTORS, "billing");
  const frontend = l7.forSource("frontend");
  t.equal(frontend.intention, frontendL7, "the exact intention governs frontend");

  t.same(frontend.authorize(req("GET", "/invoices/7")), { allowed: true, reason: "Matched L7 intention: frontend => billing (permission 1: allow)" }, "frontend GET /invoices/7 → allow");
  t.same(frontend.authorize(req("POST", "/invoices")), { allowed: false, reason: "No permission matched; default policy is deny" }, "frontend POST /invoices → no permission matches → default deny");
  t.same(frontend.authorize(req("GET", "/admin", { "x-debug": "1" })), { allowed: false, reason: "Matched L7 intention: frontend => billing (permission 2: deny)" }, "frontend GET /admin with x-debug → deny");

  const reporting = l7.forSource("reporting");
  t.equal(reporting.intention, wildcardDeny, "reporting falls to the wildcard intention");
  for (const r of [req("GET", "/invoices/7"), req("GET", "/"), req("POST", "/admin")]) {
    t.same(reporting.authorize(r), { allowed: false, reason: "Matched L4 intention: * => billing (deny)" }, `reporting ${r.method} ${r.path} → L4 deny`);
  }

  // §8.7's last vector: Consul's authorize endpoint (L4) refuses frontend outright.
  const l4 = new CompiledIntentions(VECTORS, "billing").authorize("frontend");
  t.equal(l4.allowed, false, "L4 evaluation of frontend's L7 intention denies");
  t.equal(l4.reason, "Matched L7 intention: frontend => billing (L4 connections are denied; the service's protocol must be http)");
  t.equal(l4.intention, frontendL7);
  t.equal(new CompiledIntentions(VECTORS, "billing").authorize("reporting").reason, "Matched L4 intention: * => billing (deny)", "L4 intentions are unchanged");
});

t.test("permission matching: methods, path and headers are AND-ed", async (t) => {
  const frontend = new CompiledL7Intentions(VECTORS, "billing").forSource("frontend");
  t.equal(frontend.authorize(req("HEAD", "/invoices")).allowed, true, "every listed method counts");
  t.equal(frontend.authorize(req("DELETE", "/invoices/7")).reason, "No permission matched; default policy is deny", "the path alone is not enough: the method must match too");
  t.equal(frontend.authorize(req("GET", "/admin")).reason, "No permission matched; default policy is deny", "the path alone is not enough: the header must be there too");
  t.equal(frontend.authorize(req("GET", "/admin/users", { "x-debug": "" })).reason, "Matched L7 intention: frontend => billing (permission 2: deny)", "a permission without methods takes any method; the regex is a full match");
  t.equal(frontend.authorize(req("GET", "/administrator", { "x-debug": "1" })).reason, "No permission matched; default policy is deny", "the regex does not match a longer path");
});

t.test("first matching permission wins", async (t) => {
  const permissions: Permission[] = [
    { action: "deny", path: { kind: "exact", value: "/secret" }, headers: [], methods: [] },
    { action: "allow", path: { kind: "prefix", value: "/" }, headers: [], methods: [] },
    { action: "deny", path: { kind: "prefix", value: "/" }, headers: [], methods: [] },
  ];
  const a = new CompiledL7Intentions({ defaultAction: "deny", intentions: [{ source: "web", destination: "api", action: "allow", permissions }] }, "api").forSource("web");
  t.same(a.authorize(req("GET", "/secret")), { allowed: false, reason: "Matched L7 intention: web => api (permission 1: deny)" }, "an earlier deny beats a later allow");
  t.same(a.authorize(req("GET", "/public")), { allowed: true, reason: "Matched L7 intention: web => api (permission 2: allow)" }, "an earlier allow beats a later deny");
});

t.test("an empty HTTP block matches every request", async (t) => {
  const permissions: Permission[] = [{ action: "deny", headers: [], methods: [] }];
  const a = new CompiledL7Intentions({ defaultAction: "allow", intentions: [{ source: "web", destination: "api", action: "allow", permissions }] }, "api").forSource("web");
  for (const r of [req("GET", "/"), req("POST", "/x/y", { any: "thing" })]) {
    t.same(a.authorize(r), { allowed: false, reason: "Matched L7 intention: web => api (permission 1: deny)" }, `${r.method} ${r.path} matches the empty block`);
  }
});

t.test("no matching permission falls to the default, not to lower-precedence intentions", async (t) => {
  const allowByDefault = new CompiledL7Intentions({ defaultAction: "allow", intentions: [wildcardDeny, frontendL7] }, "billing").forSource("frontend");
  t.same(allowByDefault.authorize(req("POST", "/invoices")), { allowed: true, reason: "No permission matched; default policy is allow" }, "default allow wins over the wildcard deny below");
  const denyByDefault = new CompiledL7Intentions({ defaultAction: "deny", intentions: [wildcardAllow, frontendL7] }, "billing").forSource("frontend");
  t.same(denyByDefault.authorize(req("POST", "/invoices")), { allowed: false, reason: "No permission matched; default policy is deny" }, "default deny wins over the wildcard allow below");
});

t.test("precedence: the most specific intention decides", async (t) => {
  const policy: IntentionPolicy = {
    defaultAction: "deny",
    intentions: [
      { source: "*", destination: "*", action: "deny" },
      { source: "web", destination: "*", action: "deny" },
      wildcardAllow,
      { source: "web", destination: "billing", action: "allow" },
      { source: "batch", destination: "*", action: "allow" },
    ],
  };
  const l7 = new CompiledL7Intentions(policy, "billing");
  t.equal(l7.forSource("web").authorize(req("GET", "/")).reason, "Matched L4 intention: web => billing (allow)", "exact → exact (9) beats web → * and * → *");
  t.equal(l7.forSource("web").authorize(req("GET", "/")).allowed, true);
  t.equal(l7.forSource("batch").authorize(req("GET", "/")).reason, "Matched L4 intention: * => billing (allow)", "* → exact (8) beats exact → * (6)");
  t.equal(l7.precedenceFor("batch"), 8, "precedence of the governing intention");
  const other = new CompiledL7Intentions(policy, "ledger");
  t.equal(other.forSource("batch").authorize(req("GET", "/")).reason, "Matched L4 intention: batch => * (allow)", "exact → * (6) beats * → * (5)");
  t.equal(other.forSource("cron").authorize(req("GET", "/")).reason, "Matched L4 intention: * => * (deny)", "* → * catches the rest");
  t.equal(other.precedenceFor("cron"), 5);
});

t.test("no intention matched: the default action", async (t) => {
  for (const defaultAction of ["allow", "deny"] as const) {
    const a = new CompiledL7Intentions({ defaultAction, intentions: [frontendL7] }, "billing").forSource("reporting");
    t.equal(a.intention, null);
    t.same(a.authorize(req("GET", "/invoices")), { allowed: defaultAction === "allow", reason: `No intention matched; default policy is ${defaultAction}` }, `default ${defaultAction}`);
  }
  const elsewhere = new CompiledL7Intentions(VECTORS, "ledger").forSource("frontend");
  t.equal(elsewhere.intention, null, "intentions for another destination do not apply");
});

t.test("header matchers in permissions share the route semantics", async (t) => {
  const permissions: Permission[] = [{ action: "allow", headers: [{ name: "X-Env", exact: "prod", invert: true }], methods: [] }];
  const a = new CompiledL7Intentions({ defaultAction: "deny", intentions: [{ source: "web", destination: "api", action: "allow", permissions }] }, "api").forSource("web");
  t.equal(a.authorize(req("GET", "/", { "x-env": "dev" })).allowed, true, "inverted exact matches another value (name lower-cased)");
  t.equal(a.authorize(req("GET", "/", { "x-env": "prod" })).allowed, false, "and not the named one");
  t.equal(a.authorize(req("GET", "/")).allowed, false, "and not a missing header (Envoy)");
});

t.test("authorizers are compiled once and cached per source", async (t) => {
  const l7 = new CompiledL7Intentions(VECTORS, "billing");
  t.equal(l7.forSource("frontend"), l7.forSource("frontend"), "the same authorizer for the same source");
  t.equal(l7.forSource("a"), l7.forSource("b"), "sources governed by the same intention share its authorizer");
  for (let i = 0; i < 10_050; i++) l7.forSource(`svc-${i}`);
  t.equal(l7.forSource("frontend").intention, frontendL7, "still right after the cache has evicted");
});

t.test("a bad permission is rejected when the policy is compiled", async (t) => {
  const bad: Intention = {
    source: "web",
    destination: "billing",
    action: "allow",
    permissions: [FRONTEND_PERMISSIONS[0] ?? { action: "allow", headers: [], methods: [] }, { action: "deny", path: { kind: "regex", value: "/(admin" }, headers: [], methods: [] }],
  };
  let err: unknown = null;
  try {
    new CompiledL7Intentions({ defaultAction: "deny", intentions: [wildcardDeny, bad] }, "billing");
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof PermissionCompileError, "throws PermissionCompileError");
  if (err instanceof PermissionCompileError) t.equal(err.field, "intentions[1].permissions[1].path.regex", "names the intention, the permission and the field");
  t.doesNotThrow(() => new CompiledL7Intentions({ defaultAction: "deny", intentions: [bad] }, "ledger"), "intentions for other destinations are not compiled");
});

t.test("hasPermissions", async (t) => {
  t.equal(hasPermissions(frontendL7), true);
  t.equal(hasPermissions(wildcardDeny), false, "no permissions: L4");
  const emptyList: Intention = { source: "web", destination: "billing", action: "allow", permissions: [] };
  t.equal(hasPermissions(emptyList), false, "an empty list is L4");
  t.equal(new CompiledIntentions({ defaultAction: "deny", intentions: [emptyList] }, "billing").authorize("web").allowed, true, "…and L4 evaluation honours its action");
  t.equal(new CompiledL7Intentions({ defaultAction: "deny", intentions: [emptyList] }, "billing").forSource("web").authorize(req("GET", "/")).reason, "Matched L4 intention: web => billing (allow)");
});

t.test("nominatedAway: the end-to-end fields a Connection header drops before the app, as the forwarders read its tokens", async (t) => {
  t.ok(nominatedAway("close, X-Tenant", "x-tenant"), "any case, after other tokens");
  t.ok(nominatedAway("keep-alive,\tx-tenant ", "x-tenant"), "whitespace around a token");
  t.notOk(nominatedAway("close", "x-tenant"), "not nominated");
  t.notOk(nominatedAway("x-tenant-id", "x-tenant"), "a whole token, not a prefix");
  t.notOk(nominatedAway(undefined, "x-tenant"), "no Connection field");
  t.notOk(nominatedAway("", "x-tenant"), "an empty one");
  t.notOk(nominatedAway("Upgrade", "upgrade"), "a hop-by-hop field is read as sent (an upgrade's go on through the relay)");
  t.notOk(nominatedAway("content-length, x-forwarded-client-cert", "content-length"), "Content-Length frames the body the app gets");
  t.notOk(nominatedAway("x-forwarded-client-cert", "x-forwarded-client-cert"), "the caller's certificate chain goes on with this hop's element");
  t.ok(nominatedAway("host", "host"), "Host too: the app gets the sidecar's own instead");
});

/** A GET of / whose fields are sent as the lines given (`lines` answers for a field of two or more). */
function withLines(lines: Record<string, readonly string[]>): L7Request {
  return {
    method: "GET",
    path: "/",
    header: (n) => lines[n]?.join(", "),
    lines: (n) => ((lines[n]?.length ?? 0) > 1 ? lines[n] : undefined),
  };
}

t.test("a field sent as several lines: every reading an app may make must agree, or the request is refused", async (t) => {
  const denyAdmin: Intention = {
    source: "web",
    destination: "billing",
    action: "allow",
    permissions: [
      { action: "deny", headers: [{ name: "x-role", exact: "admin" }], methods: [] },
      { action: "allow", headers: [], methods: [] },
    ],
  };
  const allowUser: Intention = { ...denyAdmin, permissions: [{ action: "allow", headers: [{ name: "x-role", exact: "user" }], methods: [] }] };
  const deny = new CompiledL7Intentions({ defaultAction: "deny", intentions: [denyAdmin] }, "billing").forSource("web");
  t.equal(deny.authorize(withLines({ "x-role": ["admin"] })).allowed, false, "one line: the deny");
  t.equal(deny.authorize(withLines({ "x-role": ["user"] })).allowed, true, "one line: the allow");
  for (const order of [["user", "admin"], ["admin", "user"], ["user", "admin", "user"]]) {
    const d = deny.authorize(withLines({ "x-role": order }));
    t.equal(d.allowed, false, `${order.join(" then ")}: an app reading one line may read admin (the joined value alone passed the deny)`);
  }
  t.match(deny.authorize(withLines({ "x-role": ["user", "admin"] })).reason, /^Repeated header lines: L7 intention web => billing allows some readings of them and denies others/);
  t.match(deny.authorize(withLines({ "x-role": Array.from({ length: 33 }, () => "user") })), { allowed: false, reason: /more than 32 lines/ }, "past 32 lines of a field it reads, refused");
  t.equal(deny.authorize(withLines({ "x-role": ["user", "user"] })).allowed, true, "lines that every reading agrees on pass");
  t.equal(deny.authorize(withLines({ "x-role": ["user"], "x-other": ["a", "b"] })).allowed, true, "repeated lines of a field no permission reads change nothing");

  const allow = new CompiledL7Intentions({ defaultAction: "deny", intentions: [allowUser] }, "billing").forSource("web");
  t.equal(allow.authorize(withLines({ "x-role": ["user"] })).allowed, true);
  t.equal(allow.authorize(withLines({ "x-role": ["user", "admin"] })).allowed, false, "an allow on user: joined it does not match, first line it does: refused");
  t.equal(allow.authorize(req("GET", "/", { "x-role": "user, admin" })).allowed, false, "a caller without `lines` (one joined line reaches the app) is judged on it alone");
});

t.test("a field whose header() is its first line only (a native app's Authorization): each line, and with joinedReading the lines joined, are judged", async (t) => {
  const it: Intention = {
    source: "web",
    destination: "billing",
    action: "allow",
    permissions: [
      { action: "deny", headers: [{ name: "authorization", exact: "Bearer admin" }], methods: [] },
      { action: "allow", headers: [{ name: "authorization", regex: "Bearer [a-z]+" }], methods: [] },
    ],
  };
  const a = new CompiledL7Intentions({ defaultAction: "deny", intentions: [it] }, "billing").forSource("web");
  /** node:http's view: `header` is the first line; `lines` every line of two or more. */
  const firstLine = (lines: readonly string[], joinedReading: boolean): L7Request => ({
    method: "GET",
    path: "/",
    header: (n) => (n === "authorization" ? lines[0] : undefined),
    lines: (n) => (n === "authorization" && lines.length > 1 ? lines : undefined),
    joinedReading,
  });
  t.match(a.authorize(firstLine(["Bearer user", "Bearer admin"], true)), { allowed: false, reason: /^Repeated header lines: / }, "the second line is judged though header() gives the first");
  t.match(a.authorize(firstLine(["Bearer user", "Bearer other"], false)), { allowed: true }, "without joinedReading: each line passes the allow");
  t.match(a.authorize(firstLine(["Bearer user", "Bearer other"], true)), { allowed: false, reason: /^Repeated header lines: / }, "with it the lines joined are judged too, which the allow's regex does not match");
  t.match(a.authorize(firstLine(["Bearer user"], true)), { allowed: true }, "one line: judged as before");
  t.match(a.authorize(firstLine(Array.from({ length: 32 }, () => "Bearer user"), true)), { allowed: false, reason: /^Repeated header lines: / }, "32 lines are judged (joined, they do not match the regex)");
  t.match(a.authorize(firstLine(Array.from({ length: 33 }, () => "Bearer user"), true)), { allowed: false, reason: /more than 32 lines/ }, "the joined reading does not count against the 32-line limit, nor lift it");
});

t.test("several repeated fields: an app reads each its own way, so their lines combine freely", async (t) => {
  // Deny admins of tenant acme; allow the rest.
  const denyAcmeAdmin: Intention = { source: "web", destination: "billing", action: "allow", permissions: [
    { action: "deny", headers: [{ name: "x-role", exact: "admin" }, { name: "x-tenant", exact: "acme" }], methods: [] },
    { action: "allow", headers: [], methods: [] },
  ] };
  const deny = new CompiledL7Intentions({ defaultAction: "deny", intentions: [denyAcmeAdmin] }, "billing").forSource("web");
  t.equal(deny.authorize(withLines({ "x-role": ["admin"], "x-tenant": ["acme"] })).allowed, false, "one line each: the deny");
  // Joined, line 1 with line 1, line 2 with line 2: none is admin of acme. An app reading the
  // first x-role and the last x-tenant is.
  const crossed = deny.authorize(withLines({ "x-role": ["admin", "user"], "x-tenant": ["other", "acme"] }));
  t.match(crossed, { allowed: false, reason: /^Repeated header lines: / }, "admin (first line) of acme (last line): refused");
  t.equal(deny.authorize(withLines({ "x-role": ["admin", "admin"], "x-tenant": ["other", "beta"] })).allowed, true, "no reading of x-tenant is acme: allowed");
  t.equal(deny.authorize(withLines({ "x-role": ["user", "guest"], "x-tenant": ["acme", "acme"] })).allowed, true, "no reading of x-role is admin: allowed");
  t.equal(deny.authorize(withLines({ "x-role": ["user"], "x-tenant": ["acme", "other"] })).allowed, true, "x-role is one line and not admin: x-tenant's lines cannot matter");

  // An allow that every reading reaches before an ambiguous permission decides alone.
  const allowFirst: Intention = {
    ...denyAcmeAdmin,
    permissions: [
      { action: "allow", path: { kind: "exact", value: "/health" }, headers: [], methods: [] },
      { action: "deny", headers: [{ name: "x-role", exact: "admin" }], methods: [] },
      { action: "allow", headers: [], methods: [] },
    ],
  };
  const first = new CompiledL7Intentions({ defaultAction: "deny", intentions: [allowFirst] }, "billing").forSource("web");
  t.equal(first.authorize({ ...withLines({ "x-role": ["user", "admin"] }), path: "/health" }).allowed, true, "a permission with no header condition that matches ends the walk");
  t.equal(first.authorize(withLines({ "x-role": ["user", "admin"] })).allowed, false, "elsewhere the ambiguous deny still refuses");
  // Two permissions that decide the same way whatever the readings: no ambiguity.
  const bothDeny: Intention = {
    ...denyAcmeAdmin,
    permissions: [
      { action: "deny", headers: [{ name: "x-role", exact: "admin" }], methods: [] },
      { action: "deny", headers: [{ name: "x-role", present: true }], methods: [] },
    ],
  };
  const same = new CompiledL7Intentions({ defaultAction: "deny", intentions: [bothDeny] }, "billing").forSource("web");
  t.match(same.authorize(withLines({ "x-role": ["user", "admin"] })), { allowed: false, reason: /^Matched L7 intention: web => billing \(permission 2: deny\)$/ }, "every reading denies: the joined reading's reason, not an ambiguity");
});
