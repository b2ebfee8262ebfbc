// Request targets as the sidecars see them before routing and authorization (every rule of
// src/http/request-target.ts, one case each), and L7 permissions parsed from intentions.json in both of
// Consul's key styles survive a write by the intention CLI.
import t from "tap";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseRequestTarget } from "../../src/http/request-target.js";
import { parseIntentions, readIntentions, writeIntentions } from "../../src/controlplane/dev/state.js";

t.test("parseRequestTarget: every rule, rewritten or refused", async (t) => {
  // [target, canonical path + query or null for 400, why]
  const cases: Array<[string, string | null, string]> = [
    ["/a/b?c=1", "/a/b?c=1", "a clean target is kept as is"],
    ["/", "/", "the root"],
    ["/a/./b", "/a/b", "a . segment goes (RFC 3986 §5.2.4)"],
    ["/a/b/../c", "/a/c", "a .. segment removes its parent"],
    ["/../../admin", "/admin", "never above the root"],
    ["/a/..", "/", "a trailing .. leaves the directory"],
    ["/a/.", "/a/", "a trailing . leaves the directory"],
    ["/.well-known/x", "/.well-known/x", "segments that merely start with a dot stay"],
    ["/a/.hidden/..x", "/a/.hidden/..x", "…and segments that start with two"],
    ["/%61dmin", "/admin", "escaped unreserved characters are decoded (Envoy normalize_path)"],
    ["/%2e%2E/admin", "/admin", "…before dot segments are removed"],
    ["/a%3fb", "/a%3Fb", "other escapes stay, upper-cased"],
    ["/caf%c3%a9", "/caf%C3%A9", "escaped UTF-8 stays escaped"],
    ["/a//b", "/a/b", "slashes are merged (Envoy merge_slashes)"],
    ["//secret/x", "/secret/x", "a leading // would be an authority to WHATWG URL and Python"],
    ["/public\\..\\secret", "/secret", "backslashes are slashes (Istio BASE; WHATWG URL does the same)"],
    ["/public/..\\secret", "/secret", "…in any mix"],
    ["/a?x=/../%2F#", null, "a fragment anywhere: 400 (Envoy)"],
    ["/a?x=/../%2F\\[]|{}", "/a?x=/../%2F\\[]|{}", "the query is kept byte for byte"],
    ["/secret#x", null, "fragment: 400 (Envoy)"],
    ["/admin%2Fx", null, "escaped slash: 400 (Envoy REJECT_REQUEST)"],
    ["/admin%5cx", null, "escaped backslash: 400"],
    ["/a%2", null, "a truncated escape: 400"],
    ["/a%zz", null, "a bad escape: 400"],
    ["/a%00", null, "an escaped NUL: 400"],
    ["/a%0d%0a", null, "escaped CR LF: 400"],
    ["/secret;x", null, "; starts path parameters for servlets and Python's urlparse: 400"],
    ["/a b", null, "space: 400"],
    ["/a\tb", null, "tab: 400 (WHATWG URL and Python drop it)"],
    ["/caf\u00e9", null, "raw non-ASCII: 400"],
    ["/a?q=\u00e9", null, "…in the query too"],
    ["/a|b", null, "| is not allowed in a path (RFC 3986): 400"],
    ["/a{b}", null, "{ } are percent-encoded by WHATWG URL: 400"],
    ["/a\"b", null, "\" is percent-encoded by WHATWG URL: 400"],
    ["/a[0]", null, "[ ] only belong in a host: 400"],
    ["http://api/admin", "/admin", "absolute-form becomes origin-form (RFC 9112 §3.2.2)"],
    ["http://api:8080/admin?x=1", "/admin?x=1", "with a port and a query"],
    ["HTTPS://API/a", "/a", "scheme and host are case-insensitive"],
    ["http://api", "/", "no path is /"],
    ["http://api?x=1", "/?x=1", "…with a query"],
    ["http://[::1]:80/a/../b", "/b", "an IP literal, then the path is canonicalized too"],
    ["http://user@api/x", null, "userinfo: 400 (RFC 9110 §4.2.4)"],
    ["http://api\\@evil/x", null, "a backslash in the authority: 400 (WHATWG URL ends the host there)"],
    ["http://api#x/secret", null, "a fragment in the authority: 400"],
    ["http:///x", null, "an empty authority: 400"],
    ["ftp://api/x", null, "only http and https are proxied"],
    ["*", null, "asterisk-form: 400"],
    ["api:443", null, "authority-form outside CONNECT: 400"],
    ["", null, "empty: 400"],
    ["secret", null, "a relative path: 400"],
  ];
  for (const [target, want, why] of cases) {
    const r = parseRequestTarget(target);
    if (want === null) t.notOk(r.ok, `${JSON.stringify(target)} refused: ${why}${r.ok ? "" : ` (${r.reason})`}`);
    else t.equal(r.ok ? r.path + r.query : `refused: ${r.reason}`, want, `${JSON.stringify(target)} → ${want}: ${why}`);
  }
  const clean = "/orders/7?x=1";
  const r = parseRequestTarget(clean);
  t.ok(r.ok && r.path === "/orders/7" && r.query === "?x=1", "a clean target splits into path and query");
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
