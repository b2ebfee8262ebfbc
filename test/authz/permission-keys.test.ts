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
  ["a header condition meshproxy does not evaluate (IgnoreCase)", { action: "deny", http: { header: [{ name: "x-role", exact: "admin", ignore_case: true }] } }],
  ["a header condition meshproxy does not evaluate (Contains)", { action: "allow", http: { header: [{ name: "x-role", exact: "admin", contains: "adm" }] } }],
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
  t.throws(() => parseIntentionMatch(match({ Action: "deny", HTTP: { Header: [{ Name: "x-role", Exact: "admin", IgnoreCase: true }] } }), "api"), WireError);
  t.throws(() => parseIntentionMatch(match({ Action: "allow", HTTP: { PathPrefix: "/a", Header: [{ Name: "x-role", Contains: "adm", Prefix: "a" }] } }), "api"), WireError);
  t.throws(() => parseIntentionMatch(match({ Action: "allow", HTTP: { PathPrefx: "/a" } }), "api"), WireError);
  // Zero values of fields a newer agent writes say nothing and are read as absent.
  const ok = parseIntentionMatch(match({ Action: "deny", HTTP: { PathExact: "/a", Header: [{ Name: "x", Exact: "1", IgnoreCase: false, Contains: "" }] }, JWT: null }), "api");
  t.equal(ok[0]!.permissions.length, 1);
  // A JWT requirement is still read, and made deny.
  const jwt = parseIntentionMatch(match({ Action: "allow", HTTP: { PathPrefix: "/a" }, JWT: { Providers: [{ Name: "okta" }] } }), "api");
  t.equal(jwt[0]!.permissions[0]!.action, "deny");
});
