// A permission meshproxy only partly understands must never turn into an allow. Unknown keys in
// an L7 permission were ignored: `path_prefx` (a typo) left `{}`, an allow on every request; an
// `IgnoreCase` beside `Exact` left a case-sensitive deny that `ADMIN` passed; a `jwt` requirement
// in intentions.json was dropped, an allow without a token.
import t from "tap";
import { parseIntentions, StateError } from "../../src/controlplane/dev/state.js";
import { parseIntentionMatch, WireError } from "../../src/controlplane/consul/wire.js";
import { CompiledL7Intentions } from "../../src/authz/l7.js";

function file(permission: unknown): string {
  return JSON.stringify({ default_action: "deny", intentions: [{ source: "web", destination: "api", permissions: [permission] }] });
}

const refusedInFile: readonly [string, unknown][] = [
  ["a misspelt path matcher in an allow", { action: "allow", http: { path_prefx: "/public" } }],
  ["a misspelt methods list in an allow", { action: "allow", http: { path_prefix: "/public", methodz: ["GET"] } }],
  ["an unknown matcher kind", { action: "allow", http: { path_contains: "/public" } }],
  ["a misspelt header condition", { action: "deny", http: { header: [{ name: "x-role", exact: "admin", ignorecase: true }] } }],
  ["a header condition Consul does not have", { action: "allow", http: { header: [{ name: "x-role", contains: "adm", not_contains: "x" }] } }],
  ["a JWT requirement", { action: "allow", http: { path_prefix: "/public" }, jwt: { providers: [{ name: "okta" }] } }],
  ["an unknown key on the permission", { action: "allow", http: {}, when: "never" }],
];

t.test("intentions.json: a permission key meshproxy does not evaluate is an error naming it", async (t) => {
  for (const [name, p] of refusedInFile) {
    t.throws(() => parseIntentions(file(p), "intentions.json"), StateError, name);
  }
  // Every key it does evaluate, in both spellings, still parses.
  const ok = parseIntentions(
    file({ action: "allow", http: { path_prefix: "/a", methods: ["GET"], header: [{ name: "x", exact: "1", invert: true }] } }),
    "intentions.json",
  );
  t.equal(ok.intentions[0]!.permissions!.length, 1);
  const pascal = parseIntentions(file({ Action: "deny", HTTP: { PathExact: "/a", Methods: ["GET"], Header: [{ Name: "x", Present: true }] } }), "intentions.json");
  t.equal(pascal.intentions[0]!.permissions!.length, 1);
});

t.test("the typo that used to allow every request to a deny-by-default service", async (t) => {
  let policy;
  try {
    policy = parseIntentions(file({ action: "allow", http: { path_prefx: "/public" } }), "intentions.json");
  } catch (e) {
    t.type(e, StateError);
    t.match((e as Error).message, /path_prefx: unknown key/);
    return;
  }
  const d = new CompiledL7Intentions(policy, "api").forSource("web").authorize({ method: "DELETE", path: "/admin", header: () => undefined });
  t.notOk(d.allowed, "DELETE /admin must not be allowed by a permission written for /public");
});

function match(permission: unknown): unknown {
  return {
    api: [{ SourceNS: "default", SourceName: "web", DestinationNS: "default", DestinationName: "api", Permissions: [permission], Precedence: 9 }],
  };
}

t.test("Consul's answer: an unknown condition is a broken answer, never a looser permission", async (t) => {
  t.throws(() => parseIntentionMatch(match({ Action: "deny", HTTP: { Header: [{ Name: "x-role", Exact: "admin", CaseFold: true }] } }), "api"), WireError);
  t.throws(() => parseIntentionMatch(match({ Action: "allow", HTTP: { PathPrefx: "/a" } }), "api"), WireError);
  // Zero values of fields a newer agent writes say nothing and are read as absent.
  const ok = parseIntentionMatch(match({ Action: "deny", HTTP: { PathExact: "/a", Header: [{ Name: "x", Exact: "1", CaseFold: false, NotContains: "" }] }, JWT: null }), "api");
  t.equal(ok[0]!.permissions.length, 1);
  // A JWT requirement is still read, and made deny.
  const jwt = parseIntentionMatch(match({ Action: "allow", HTTP: { PathPrefix: "/a" }, JWT: { Providers: [{ Name: "okta" }] } }), "api");
  t.equal(jwt[0]!.permissions[0]!.action, "deny");
});

// Consul 1.16's IntentionHTTPHeaderPermission adds Contains and IgnoreCase (Envoy's StringMatcher
// contains and ignore_case). Dropped, IgnoreCase left a deny on "admin" that ADMIN passed.
function decide(permissions: unknown[], headers: Record<string, string>): boolean {
  const policy = parseIntentions(JSON.stringify({ default_action: "deny", intentions: [{ source: "web", destination: "api", permissions }] }), "intentions.json");
  return new CompiledL7Intentions(policy, "api").forSource("web").authorize({ method: "GET", path: "/", header: (n) => headers[n] }).allowed;
}

t.test("ignore_case and contains on header permissions are evaluated as Envoy does", async (t) => {
  const denyAdmin = [
    { action: "deny", http: { header: [{ name: "x-role", exact: "admin", ignore_case: true }] } },
    { action: "allow", http: {} },
  ];
  t.notOk(decide(denyAdmin, { "x-role": "ADMIN" }), "a deny with ignore_case refuses ADMIN");
  t.notOk(decide(denyAdmin, { "x-role": "aDmIn" }), "and aDmIn");
  t.ok(decide(denyAdmin, { "x-role": "user" }), "and lets user through");
  // ASCII folding only, as Envoy: \u00c0 is not a case of \u00e0 there.
  t.ok(decide([{ action: "allow", http: { header: [{ name: "x-t", exact: "\u00e0b", ignore_case: true }] } }], { "x-t": "\u00e0B" }), "B folds to b");
  t.notOk(decide([{ action: "allow", http: { header: [{ name: "x-t", exact: "\u00e0b", ignore_case: true }] } }], { "x-t": "\u00c0b" }), "Latin-1 letters do not fold");
  const containsAcme = [{ action: "allow", http: { header: [{ name: "x-tenant", contains: "acme" }] } }];
  t.ok(decide(containsAcme, { "x-tenant": "eu-acme-1" }), "contains matches inside the value");
  t.notOk(decide(containsAcme, { "x-tenant": "eu-ACME-1" }), "case-sensitive without ignore_case");
  t.notOk(decide(containsAcme, {}), "an absent header does not contain it");
  t.ok(decide([{ action: "allow", http: { header: [{ name: "x-tenant", contains: "acme", ignore_case: true }] } }], { "x-tenant": "eu-ACME-1" }), "contains with ignore_case");
  t.ok(decide([{ action: "allow", http: { header: [{ name: "x-tenant", contains: "acme", invert: true }] } }], { "x-tenant": "globex" }), "inverted contains");
  // The same from Consul's answer, PascalCase.
  const wire = parseIntentionMatch(match({ Action: "deny", HTTP: { Header: [{ Name: "x-role", Exact: "admin", IgnoreCase: true }] } }), "api");
  t.same(wire[0]!.permissions[0]!.headers[0], { name: "x-role", exact: "admin", ignoreCase: true }, "Consul's IgnoreCase is read");
});

t.test("ignore_case where Envoy would ignore it (present, regex) and two kinds in one matcher are refused", async (t) => {
  t.throws(() => decide([{ action: "deny", http: { header: [{ name: "x-role", regex: "admin", ignore_case: true }] } }, { action: "allow", http: {} }], { "x-role": "ADMIN" }), /ignore_case: applies to exact, prefix, suffix and contains only/);
  t.throws(() => decide([{ action: "deny", http: { header: [{ name: "x-role", present: true, ignore_case: true }] } }], {}), /ignore_case/);
  t.throws(() => decide([{ action: "allow", http: { header: [{ name: "x-role", exact: "admin", contains: "adm" }] } }], {}), /exactly one of present, exact, prefix, suffix, contains, regex/);
});
