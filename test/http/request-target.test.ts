// Request targets as the sidecars see them before routing and authorization: absolute-form
// becomes origin-form (RFC 9112 §3.2), and L7 permissions parsed from intentions.json in both of
// Consul's key styles survive a write by the intention CLI.
import t from "tap";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { originForm } from "../../src/http/match.js";
import { parseIntentions, readIntentions, writeIntentions } from "../../src/controlplane/dev/state.js";

t.test("originForm", async (t) => {
  const cases: Array<[string, string]> = [
    ["/a/b?c=1", "/a/b?c=1"],
    ["http://api/admin", "/admin"],
    ["http://api:8080/admin?x=1", "/admin?x=1"],
    ["HTTPS://API/a", "/a"],
    ["http://api", "/"],
    ["http://api?x=1", "/?x=1"],
    ["http://user@api/x/../admin", "/x/../admin"],
    ["*", "*"],
    ["api:443", "api:443"],
  ];
  for (const [target, want] of cases) t.equal(originForm(target), want, `${target} → ${want}`);
});

t.test("intentions.json permissions: snake_case and PascalCase, checked, and kept by a rewrite", async (t) => {
  const text = JSON.stringify({
    default_action: "deny",
    intentions: [
      { source: "web", destination: "api", permissions: [{ action: "allow", http: { path_prefix: "/invoices", methods: ["get"], header: [{ name: "X-Role", exact: "a", invert: true }] } }] },
      { source: "*", destination: "api", Permissions: [{ Action: "deny", HTTP: { PathRegex: "/admin/.*" } }, { Action: "allow", HTTP: {} }] },
      { source: "ops", destination: "db", action: "allow" },
    ],
  });
  const p = parseIntentions(text, "intentions.json");
  t.same(p.intentions[0]?.permissions, [{ action: "allow", path: { kind: "prefix", value: "/invoices" }, headers: [{ name: "x-role", exact: "a", invert: true }], methods: ["GET"] }], "snake_case");
  t.same(p.intentions[1]?.permissions, [
    { action: "deny", path: { kind: "regex", value: "/admin/.*" }, headers: [], methods: [] },
    { action: "allow", headers: [], methods: [] },
  ], "PascalCase; an empty HTTP block matches everything");
  t.equal(p.intentions[2]?.permissions, undefined, "an L4 intention has none");

  const dir = await mkdtemp(join(tmpdir(), "meshproxy-perm-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeIntentions(dir, p);
  t.same(await readIntentions(dir), p, "writeIntentions then readIntentions gives the same policy back");

  const bad = (it: Record<string, unknown>) => () => parseIntentions(JSON.stringify({ intentions: [{ source: "web", destination: "api", ...it }] }), "f");
  t.throws(bad({ action: "allow", permissions: [{ action: "allow", http: {} }] }), /intentions\[0\]: omit action when permissions are given/, "action beside permissions");
  t.throws(bad({ permissions: [{ action: "maybe", http: {} }] }), /permissions\[0\]\.Action: want "allow" or "deny"/, "a bad permission action");
  t.throws(bad({ permissions: [{ action: "allow" }] }), /permissions\[0\]\.HTTP: is required/, "no HTTP block");
  t.throws(bad({ permissions: [{ action: "allow", http: { path_exact: "/a", path_prefix: "/b" } }] }), /at most one of PathExact, PathPrefix, PathRegex/, "two path matches");
  t.throws(bad({ permissions: [{ action: "allow", http: { path_regex: "(a" } }] }), /intentions\[0\]\.permissions\[0\]\.path\.regex: invalid regular expression/, "a regex that does not compile");
  t.throws(bad({ permissions: [{ action: "allow", http: { header: [{ name: "x", exact: "1", prefix: "2" }] } }] }), /permissions\[0\]\.headers\[0\]: needs exactly one of/, "a header matcher with two conditions");
});
