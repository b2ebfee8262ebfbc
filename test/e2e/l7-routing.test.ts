// service-router, service-splitter and service-resolver end to end: route match rules, first
// match wins, prefix rewrite, header mutations, destinations (subset, other service) and split
// weights, through real sidecars on the dev control plane configured with `meshproxy config
// write`. Every app echoes what arrived (path, headers) and every route stamps `x-route` on the
// request, so each assertion checks which route matched and what the app really received.
//
//   client ─▶ web ─▶ api (subsets v1, v2: one instance each) / other (one instance)
import t from "tap";
import { startSidecar, tempDir } from "../helpers/mesh.js";
import { configDump, configWrite, splitWeights, until } from "../helpers/l7.js";
import { client, routeCount, scriptedApp, tally } from "../helpers/l7-apps.js";
import type { Dispatcher } from "undici";

const dir = await tempDir(t);
const get = client(t);

const stamp = (name: string) => ({ RequestHeaders: { Set: { "x-route": name } } });
const ROUTES = [
  { Match: { HTTP: { PathExact: "/exact" } }, Destination: stamp("exact") },
  { Match: { HTTP: { PathPrefix: "/prefix/" } }, Destination: stamp("prefix") },
  { Match: { HTTP: { PathRegex: "/regex/[0-9]+" } }, Destination: stamp("regex") },
  { Match: { HTTP: { Header: [{ Name: "x-t-present", Present: true }] } }, Destination: stamp("hdr-present") },
  { Match: { HTTP: { Header: [{ Name: "x-t-exact", Exact: "abc" }] } }, Destination: stamp("hdr-exact") },
  { Match: { HTTP: { Header: [{ Name: "x-t-prefix", Prefix: "pre" }] } }, Destination: stamp("hdr-prefix") },
  { Match: { HTTP: { Header: [{ Name: "x-t-suffix", Suffix: "suf" }] } }, Destination: stamp("hdr-suffix") },
  { Match: { HTTP: { Header: [{ Name: "x-t-regex", Regex: "v[0-9]+" }] } }, Destination: stamp("hdr-regex") },
  { Match: { HTTP: { PathPrefix: "/invert", Header: [{ Name: "x-t-invert", Exact: "no", Invert: true }] } }, Destination: stamp("hdr-invert") },
  { Match: { HTTP: { QueryParam: [{ Name: "qp", Present: true }] } }, Destination: stamp("q-present") },
  { Match: { HTTP: { QueryParam: [{ Name: "qe", Exact: "1" }] } }, Destination: stamp("q-exact") },
  { Match: { HTTP: { QueryParam: [{ Name: "qr", Regex: "[a-z]+" }] } }, Destination: stamp("q-regex") },
  { Match: { HTTP: { PathPrefix: "/m", Methods: ["PUT", "DELETE"] } }, Destination: stamp("methods") },
  { Match: { HTTP: { PathPrefix: "/first" } }, Destination: stamp("first-a") },
  { Match: { HTTP: { PathPrefix: "/first/deeper" } }, Destination: stamp("first-b") },
  { Match: { HTTP: { PathPrefix: "/multi", Header: [{ Name: "x-a", Exact: "1" }, { Name: "x-b", Exact: "2" }] } }, Destination: stamp("multi") },
  { Match: { HTTP: { PathPrefix: "/rewrite/" } }, Destination: { PrefixRewrite: "/v2/", ...stamp("rewrite") } },
  {
    Match: { HTTP: { PathPrefix: "/mut" } },
    Destination: {
      RequestHeaders: { Add: { "x-add": "added" }, Set: { "x-set": "set", "x-route": "mut" }, Remove: ["x-remove"] },
      ResponseHeaders: { Add: { "x-resp-add": "r" }, Set: { "x-resp-set": "s" }, Remove: ["x-app-secret"] },
    },
  },
  { Match: { HTTP: { PathPrefix: "/subset" } }, Destination: { ServiceSubset: "v2", ...stamp("subset") } },
  { Match: { HTTP: { PathPrefix: "/other" } }, Destination: { Service: "other", ...stamp("other") } },
];

await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
await configWrite(t, dir, { Kind: "service-defaults", Name: "other", Protocol: "http" });
await configWrite(t, dir, {
  Kind: "service-resolver",
  Name: "api",
  DefaultSubset: "v1",
  Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2" } },
});
await configWrite(t, dir, { Kind: "service-router", Name: "api", Routes: ROUTES });

const v1 = await scriptedApp(t, "api-v1", { echo: true });
const v2 = await scriptedApp(t, "api-v2", { echo: true });
const other = await scriptedApp(t, "other", { echo: true });
await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${v1.port}`, "-meta", "version=v1"]);
await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${v2.port}`, "-meta", "version=v2"]);
await startSidecar(t, dir, ["-service", "other", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${other.port}`]);
const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"]);
const API = web.upstreams["api"]!;
await until(async () => {
  const d = await configDump(web.adminAddr);
  if (routeCount(d, "api") !== ROUTES.length + 1 || typeof d !== "object" || d === null || !("clusters" in d)) return false;
  const clusters = Object.values(d.clusters as Record<string, { endpoints: unknown[] }>);
  return clusters.length === 3 && clusters.every((c) => c.endpoints.length === 1);
}, 15_000, "web to have the routes and an endpoint in each of v1, v2 and other");

interface Echo {
  readonly app: string;
  readonly method: string;
  readonly url: string;
  readonly headers: Record<string, string | undefined>;
}

async function call(path: string, opts: { method?: Dispatcher.HttpMethod; headers?: Record<string, string> } = {}): Promise<{ status: number; echo: Echo; headers: Record<string, string | string[] | undefined> }> {
  const r = await get(API, path, opts);
  if (r.status !== 200) throw new Error(`${opts.method ?? "GET"} ${path}: ${r.status} ${r.body}`);
  const v: unknown = JSON.parse(r.body);
  if (typeof v !== "object" || v === null || !("app" in v) || !("url" in v) || !("headers" in v) || !("method" in v)) throw new Error(`not an echo: ${r.body}`);
  return { status: r.status, echo: v as Echo, headers: r.headers };
}

/** Which route the request took: the `x-route` its route stamped, "catch-all" without one. */
async function routeOf(path: string, opts: { method?: Dispatcher.HttpMethod; headers?: Record<string, string> } = {}): Promise<string> {
  return (await call(path, opts)).echo.headers["x-route"] ?? "catch-all";
}

t.test("path matches: exact, prefix, regex (whole path, query ignored)", async (t) => {
  const cases: Array<[string, string]> = [
    ["/exact", "exact"],
    ["/exact?x=1", "exact"],
    ["/exact/", "catch-all"],
    ["/exactly", "catch-all"],
    ["/prefix/a/b", "prefix"],
    ["/prefix/", "prefix"],
    ["/prefix", "catch-all"],
    ["/regex/123", "regex"],
    ["/regex/12a", "catch-all"],
    ["/x/regex/1", "catch-all"],
  ];
  for (const [path, want] of cases) t.equal(await routeOf(path), want, `GET ${path} → ${want}`);
});

t.test("header matches: present, exact, prefix, suffix, regex, invert; all must match", async (t) => {
  const cases: Array<[Record<string, string>, string, string?]> = [
    [{ "x-t-present": "1" }, "hdr-present"],
    [{ "x-t-present": "" }, "hdr-present"],
    [{ "x-t-exact": "abc" }, "hdr-exact"],
    [{ "x-t-exact": "abcd" }, "catch-all"],
    [{ "x-t-exact": "ABC" }, "catch-all"],
    [{ "x-t-prefix": "pre-x" }, "hdr-prefix"],
    [{ "x-t-prefix": "xpre" }, "catch-all"],
    [{ "x-t-suffix": "x-suf" }, "hdr-suffix"],
    [{ "x-t-suffix": "sufx" }, "catch-all"],
    [{ "x-t-regex": "v12" }, "hdr-regex"],
    [{ "x-t-regex": "v12x" }, "catch-all"],
    [{ "x-t-invert": "yes" }, "hdr-invert", "/invert"],
    [{ "x-t-invert": "no" }, "catch-all", "/invert"],
    [{}, "catch-all", "/invert"],
    [{ "x-a": "1", "x-b": "2" }, "multi", "/multi"],
    [{ "x-a": "1" }, "catch-all", "/multi"],
    [{ "x-a": "1", "x-b": "3" }, "catch-all", "/multi"],
  ];
  for (const [headers, want, path = "/h"] of cases) t.equal(await routeOf(path, { headers }), want, `${path} with ${JSON.stringify(headers)} → ${want}`);
});

t.test("query parameter matches: present, exact, regex", async (t) => {
  const cases: Array<[string, string]> = [
    ["/q?qp", "q-present"],
    ["/q?a=1&qp=anything", "q-present"],
    ["/q?qpx=1", "catch-all"],
    ["/q?qe=1", "q-exact"],
    ["/q?qe=2", "catch-all"],
    ["/q?qr=abc", "q-regex"],
    ["/q?qr=ab1", "catch-all"],
  ];
  for (const [path, want] of cases) t.equal(await routeOf(path), want, `GET ${path} → ${want}`);
});

t.test("method matches", async (t) => {
  const cases: Array<[Dispatcher.HttpMethod, string]> = [
    ["PUT", "methods"],
    ["DELETE", "methods"],
    ["GET", "catch-all"],
    ["POST", "catch-all"],
  ];
  for (const [method, want] of cases) {
    const r = await call("/m", { method });
    t.equal(r.echo.headers["x-route"] ?? "catch-all", want, `${method} /m → ${want}`);
    t.equal(r.echo.method, method, `the app got a ${method}`);
  }
});

t.test("the first matching route wins", async (t) => {
  t.equal(await routeOf("/first/deeper/x"), "first-a", "/first/deeper/x takes /first, listed before /first/deeper");
  t.equal(await routeOf("/exact", { headers: { "x-t-present": "1" } }), "exact", "/exact with x-t-present takes the earlier path route");
  t.equal(await routeOf("/h", { headers: { "x-t-exact": "abc", "x-t-present": "1" } }), "hdr-present", "two header routes match: the earlier one wins");
});

t.test("prefix rewrite", async (t) => {
  const r = await call("/rewrite/a/b?x=1&y=2");
  t.equal(r.echo.url, "/v2/a/b?x=1&y=2", "the app sees /rewrite/ replaced by /v2/, query kept");
  t.equal(r.echo.headers["x-route"], "rewrite", "through the rewrite route");
  t.equal((await call("/prefix/a?z=1")).echo.url, "/prefix/a?z=1", "other routes leave the path alone");
});

t.test("request and response header add, set, remove", async (t) => {
  const r = await call("/mut", { headers: { "x-add": "original", "x-set": "original", "x-remove": "bye", "x-keep": "kept" } });
  t.equal(r.echo.headers["x-add"], "original, added", "Add appends to the client's value");
  t.equal(r.echo.headers["x-set"], "set", "Set replaces the client's value");
  t.notOk("x-remove" in r.echo.headers, "Remove drops the header");
  t.equal(r.echo.headers["x-keep"], "kept", "other headers pass untouched");
  t.equal(r.headers["x-resp-add"], "r", "response Add");
  t.equal(r.headers["x-resp-set"], "s", "response Set replaces the app's value");
  t.notOk("x-app-secret" in r.headers, "response Remove drops the app's header");
  t.equal(r.headers["x-app"], "api-v1", "the app's other headers pass");
  const plain = await call("/plain");
  t.equal(plain.headers["x-app-secret"], "s3cret", "control: without the mutation the app's header arrives");
  t.equal(plain.headers["x-resp-set"], "from-app", "control: and is not replaced");
});

t.test("destinations: a subset of the service, another service", async (t) => {
  t.equal((await call("/subset/x")).echo.app, "api-v2", "ServiceSubset v2 reaches the v2 instance");
  t.equal((await call("/anything")).echo.app, "api-v1", "the catch-all goes to the resolver's DefaultSubset v1");
  const o = await call("/other/x?k=v");
  t.equal(o.echo.app, "other", "Service other reaches the other service");
  t.equal(o.echo.url, "/other/x?k=v", "with the path unchanged");
  t.match(o.echo.headers["x-forwarded-client-cert"] ?? "", /URI=spiffe:\/\/[^;]+\/svc\/web$/, "other's sidecar saw web's identity");
});

t.test("splits: 100/0 is exact, 0/100 flips, 50/50 spreads; split-level header mutations", async (t) => {
  const setSplit = async (w1: number, w2: number) => {
    await configWrite(t, dir, {
      Kind: "service-splitter",
      Name: "api",
      Splits: [
        { Weight: w1, ServiceSubset: "v1", RequestHeaders: { Set: { "x-split": "to-v1" } }, ResponseHeaders: { Set: { "x-split-resp": "v1" } } },
        { Weight: w2, ServiceSubset: "v2", RequestHeaders: { Set: { "x-split": "to-v2" } } },
      ],
    });
    await until(async () => {
      const w = splitWeights(await configDump(web.adminAddr), "api");
      return w["v1"] === w1 * 100 && w["v2"] === w2 * 100;
    }, 10_000, `the ${w1}/${w2} split to apply`);
  };
  const apps = async (n: number) => {
    const out: string[] = [];
    for (let i = 0; i < n; i++) out.push((await call("/split")).echo.app);
    return out;
  };

  await setSplit(100, 0);
  const all1 = await call("/split");
  t.equal(all1.echo.headers["x-split"], "to-v1", "the v1 leg's request header reaches the app");
  t.equal(all1.headers["x-split-resp"], "v1", "the v1 leg's response header reaches the client");
  t.same(tally(await apps(60), (x) => x), { "api-v1": 60 }, "100/0: all 60 requests to v1");

  await setSplit(0, 100);
  const all2 = await call("/split");
  t.equal(all2.echo.headers["x-split"], "to-v2", "the v2 leg's request header");
  t.notOk("x-split-resp" in all2.headers, "and not the v1 leg's response header");
  t.same(tally(await apps(60), (x) => x), { "api-v2": 60 }, "0/100: all 60 requests to v2");

  await setSplit(50, 50);
  const c = tally(await apps(200), (x) => x);
  // Binomial(200, 0.5): sd 7.1; ±5 sd.
  t.ok((c["api-v1"] ?? 0) >= 65 && (c["api-v1"] ?? 0) <= 135, `50/50: v1 got ${c["api-v1"] ?? 0} of 200`);
  t.equal((c["api-v1"] ?? 0) + (c["api-v2"] ?? 0), 200, "and v2 the rest");
  t.equal(await routeOf("/subset/y"), "subset", "a route with its own subset ignores the splitter…");
  t.equal((await call("/subset/y")).echo.app, "api-v2", "…and still goes to v2");
});
