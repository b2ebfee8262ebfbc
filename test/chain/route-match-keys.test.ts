// A service-router match meshproxy only partly reads must not turn into a wider route. Unknown keys
// in a route's match were ignored: a misspelt `PathPrefx` left a match on every request, and every
// request of the service went to the route's destination. Consul's `config write` refuses unknown
// keys; so does meshproxy's, for the files it reads. Consul's newer CaseInsensitive is evaluated.
import t from "tap";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { EntryError, parseEntry, type ServiceRouter } from "../../src/controlplane/chain/entries.js";
import { CompiledRoutes, rewritePath } from "../../src/http/route-match.js";
import { NO_RETRIES, type Route } from "../../src/config/http.js";
import { runMeshproxy, tempDir } from "../helpers/mesh.js";

function router(match: unknown, source: "file" | "wire" = "file"): ServiceRouter {
  const e = parseEntry({ Kind: "service-router", Name: "api", Routes: [{ Match: match, Destination: { Service: "admin" } }] }, "entry.json", source);
  if (e.kind !== "service-router") throw new Error(e.kind);
  return e;
}

const refused: readonly [string, unknown][] = [
  ["a misspelt path matcher", { HTTP: { PathPrefx: "/admin" } }],
  ["a misspelt match block", { HTTPS: { PathPrefix: "/admin" } }],
  ["a misspelt header matcher", { HTTP: { Header: [{ Name: "x-canary", Exact: "1", Invrt: true }] } }],
  ["a header condition routes do not have (Contains is permissions' only)", { HTTP: { Header: [{ Name: "x-canary", Contains: "1" }] } }],
  ["a misspelt query matcher", { HTTP: { QueryParam: [{ Name: "v", Exakt: "2" }] } }],
];

t.test("a config file: an unknown key in a route's match is an error naming it", async (t) => {
  for (const [name, m] of refused) t.throws(() => router(m), EntryError, name);
  t.throws(() => router({ HTTP: { PathPrefx: "/admin" } }), /entry\.json\.Routes\[0\]\.Match\.HTTP\.PathPrefx: unknown key/);
  // Every key Consul has, in each spelling, still parses.
  t.doesNotThrow(() => router({ HTTP: { PathPrefix: "/a", CaseInsensitive: true, Methods: ["GET"], Header: [{ Name: "x", Exact: "1", Invert: true }], QueryParam: [{ Name: "v", Present: true }] } }));
  t.doesNotThrow(() => router({ http: { path_exact: "/a", case_insensitive: true, query_param: [{ name: "v", regex: "[0-9]" }] } }));
});

t.test("a Consul agent's entry: unknown fields at their zero value are read as absent, any other is an error", async (t) => {
  t.doesNotThrow(() => router({ HTTP: { PathPrefix: "/a", Future: "", Header: [{ Name: "x", Exact: "1", Future: false }] } }, "wire"));
  t.throws(() => router({ HTTP: { PathPrefix: "/a", Future: "on" } }, "wire"), EntryError);
});

function table(r: ServiceRouter): { routes: CompiledRoutes; route: Route } {
  const rr = r.routes[0]!;
  const route: Route = {
    match: { ...(rr.path ? { path: rr.path } : {}), headers: rr.headers, queryParams: rr.queryParams, methods: rr.methods },
    action: { splits: [], prefixRewrite: "/x/", timeoutMs: 0, idleTimeoutMs: 0, retry: NO_RETRIES, requestHeaders: { add: {}, set: {}, remove: [] }, responseHeaders: { add: {}, set: {}, remove: [] } },
  };
  return { routes: new CompiledRoutes({ routes: [route] }), route };
}

const req = (path: string) => ({ method: "GET", path, query: null, header: () => undefined });

t.test("CaseInsensitive: PathPrefix and PathExact match without ASCII case, and the prefix rewrite follows", async (t) => {
  const prefix = table(router({ HTTP: { PathPrefix: "/Admin/", CaseInsensitive: true } }));
  t.equal(prefix.routes.matchIndex(req("/ADMIN/users")), 0, "/ADMIN/users matches /Admin/");
  t.equal(prefix.routes.matchIndex(req("/admin/users")), 0, "/admin/users too");
  t.equal(prefix.routes.matchIndex(req("/\u00c0dmin/users")), -1, "Latin-1 letters do not fold (Envoy folds ASCII only)");
  t.equal(rewritePath(prefix.route, "/ADMIN/users"), "/x/users", "the matched prefix is rewritten whatever its case");
  const exact = table(router({ HTTP: { PathExact: "/Login", CaseInsensitive: true } }));
  t.equal(exact.routes.matchIndex(req("/LOGIN")), 0);
  t.equal(exact.routes.matchIndex(req("/LOGIN/x")), -1);
  const sensitive = table(router({ HTTP: { PathPrefix: "/Admin/" } }));
  t.equal(sensitive.routes.matchIndex(req("/ADMIN/users")), -1, "without it, case-sensitive as Envoy");
  t.throws(() => router({ HTTP: { PathRegex: "/admin/.*", CaseInsensitive: true } }), /CaseInsensitive: applies to PathExact and PathPrefix only/);
});

t.test("meshproxy config write refuses a misspelt route match, as consul config write does", async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, "router.json");
  await writeFile(file, JSON.stringify({ Kind: "service-router", Name: "api", Routes: [{ Match: { HTTP: { PathPrefx: "/admin" } }, Destination: { Service: "admin" } }] }));
  const p = runMeshproxy(t, ["config", "write", file, "-data-dir", join(dir, "state")]);
  t.equal(await p.exited, 1, "exits 1");
  t.match(p.stderrText(), /Routes\[0\]\.Match\.HTTP\.PathPrefx: unknown key/, "names the key");
});
