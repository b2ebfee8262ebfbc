// Config entries (`meshproxy config write`, the dev state directory, the Consul chain's nodes) on
// arbitrary and mutated input: parseEntry and parsePermissions return a value or throw EntryError
// naming the field, never another exception, and take time linear in the input.
import t from "tap";
import fc from "fast-check";
import { fuzzParams } from "./params.js";
import { assertLinear, deepNest, mutated, type Json } from "./mutate.js";
import { EntryError, parseEntry, parsePermissions, parseUpstreamSettings } from "../../src/controlplane/chain/entries.js";

const UPSTREAM: Json = {
  ConnectTimeoutMs: 5000,
  Limits: { MaxConnections: 10, MaxPendingRequests: 5, MaxConcurrentRequests: 20 },
  PassiveHealthCheck: { Interval: "10s", MaxFailures: 5, EnforcingConsecutive5xx: 100, MaxEjectionPercent: 10, BaseEjectionTime: 30_000_000_000 },
};

/** One of each kind, with every field meshproxy reads set. */
const VALID: readonly Json[] = [
  {
    Kind: "service-defaults",
    Name: "api",
    Protocol: "http",
    LocalConnectTimeoutMs: 1000,
    LocalRequestTimeoutMs: 15000,
    UpstreamConfig: { Defaults: UPSTREAM, Overrides: [{ Name: "db", ...(UPSTREAM as Record<string, Json>) }] },
  },
  { Kind: "proxy-defaults", Name: "global", Config: { protocol: "http" } },
  {
    Kind: "service-router",
    Name: "api",
    Routes: [
      {
        Match: {
          HTTP: {
            PathRegex: "/users/[0-9]+",
            Header: [{ Name: "x-canary", Exact: "always" }, { Name: "x-v", Regex: "v[0-9]", Invert: true }, { Name: "x-p", Present: true }],
            QueryParam: [{ Name: "debug", Exact: "1" }, { Name: "id", Regex: "[0-9]+" }],
            Methods: ["GET", "post"],
          },
        },
        Destination: {
          Service: "api",
          ServiceSubset: "v2",
          RequestTimeout: "10s",
          IdleTimeout: "1m30s",
          NumRetries: 2,
          RetryOnConnectFailure: true,
          RetryOnStatusCodes: [503],
          RetryOn: ["5xx", "reset"],
          RequestHeaders: { Add: { "x-a": "1" }, Set: { "x-b": "2" }, Remove: ["x-c"] },
          ResponseHeaders: { Set: { "x-canary": "v2" } },
        },
      },
      { Match: { HTTP: { PathPrefix: "/" } }, Destination: { PrefixRewrite: "/v2/" } },
    ],
  },
  {
    Kind: "service-splitter",
    Name: "api",
    Splits: [
      { Weight: 95, ServiceSubset: "v1" },
      { Weight: 5, ServiceSubset: "v2", RequestHeaders: { Set: { "x-canary": "v2" } } },
    ],
  },
  {
    Kind: "service-resolver",
    Name: "api",
    DefaultSubset: "v1",
    Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2", OnlyPassing: true } },
    Redirect: { Service: "api2", ServiceSubset: "v1", Datacenter: "dc2" },
    Failover: { v2: { ServiceSubset: "v1" }, "*": { Targets: [{ Service: "api", Datacenter: "dc2" }] } },
    ConnectTimeout: "5s",
    RequestTimeout: "15s",
    LoadBalancer: {
      Policy: "ring_hash",
      RingHashConfig: { MinimumRingSize: 1024, MaximumRingSize: 8192 },
      LeastRequestConfig: { ChoiceCount: 2 },
      HashPolicies: [{ Field: "header", FieldValue: "x-user" }, { SourceIP: true, Terminal: true }],
    },
  },
];

const PERMISSIONS: Json = [
  { Action: "deny", HTTP: { PathExact: "/secret" } },
  { Action: "allow", HTTP: { PathPrefix: "/", Methods: ["GET"], Header: [{ Name: "x-role", Regex: "auditor|admin" }] } },
  { action: "allow", http: { path_regex: "/reports/.*" } },
];

/** True when `parse` returned or threw EntryError; false (a failed property) for anything else. */
function parsesOrEntryError(parse: () => unknown): boolean {
  try {
    parse();
    return true;
  } catch (e) {
    if (e instanceof EntryError) return true;
    throw e;
  }
}

t.test("the valid entries parse", async (t) => {
  for (const v of VALID) t.doesNotThrow(() => parseEntry(v, "entry.json"), JSON.stringify(v).slice(0, 60));
  t.doesNotThrow(() => parsePermissions(PERMISSIONS, "intentions.json: intentions[0].permissions"));
});

t.test("mutated entries: a value or an EntryError", async (t) => {
  const anyMutated = fc.oneof(...VALID.map((v) => mutated(v)));
  fc.assert(
    fc.property(anyMutated, (v) => parsesOrEntryError(() => parseEntry(v, "entry.json"))),
    fuzzParams(),
  );
  t.pass("held");
});

t.test("mutated permissions and upstream settings: a value or an EntryError", async (t) => {
  fc.assert(fc.property(mutated(PERMISSIONS), (v) => parsesOrEntryError(() => parsePermissions(v, "p"))), fuzzParams(0.5));
  fc.assert(fc.property(mutated(UPSTREAM), (v) => parsesOrEntryError(() => parseUpstreamSettings(v, "u"))), fuzzParams(0.5));
  t.pass("held");
});

t.test("arbitrary JSON: a value or an EntryError", async (t) => {
  const kinds = fc.constantFrom("service-defaults", "proxy-defaults", "service-router", "service-splitter", "service-resolver", "nope");
  const entryish = fc.tuple(kinds, fc.dictionary(fc.string(), fc.jsonValue({ maxDepth: 4 }))).map(([Kind, rest]): unknown => ({ ...rest, Kind, Name: "global" }));
  fc.assert(fc.property(fc.oneof(fc.jsonValue({ maxDepth: 5 }), entryish), (v) => parsesOrEntryError(() => parseEntry(v, "entry.json"))), fuzzParams());
  fc.assert(fc.property(fc.jsonValue({ maxDepth: 5 }), (v) => parsesOrEntryError(() => parsePermissions(v, "p"))), fuzzParams(0.5));
  t.pass("held");
});

t.test("huge and deep values: an EntryError with a bounded message", async (t) => {
  const router = (route: Json): Json => ({ Kind: "service-router", Name: "api", Routes: [route] });
  const cases: [string, Json][] = [
    ["a deep array where a string goes", { Kind: deepNest(100_000, "array"), Name: "x" }],
    ["a deep object where a number goes", router({ Destination: { NumRetries: deepNest(100_000, "object") } })],
    ["a deep value in a header map", router({ Destination: { RequestHeaders: { Set: { "x-a": deepNest(100_000, "array") } } } })],
    ["a deep value in a duration", router({ Destination: { RequestTimeout: deepNest(100_000, "object") } })],
    ["a huge string where a number goes", router({ Destination: { NumRetries: "9".repeat(1_000_000) } })],
    ["a huge protocol", { Kind: "service-defaults", Name: "api", Protocol: "h".repeat(1_000_000) }],
    ["a huge kind", { Kind: "k".repeat(1_000_000), Name: "x" }],
  ];
  for (const [what, v] of cases) {
    try {
      parseEntry(v, "entry.json");
      t.fail(`${what}: accepted`);
    } catch (e) {
      t.ok(e instanceof EntryError, `${what}: an EntryError`);
      if (e instanceof Error) t.ok(e.message.length < 1_000, `${what}: a ${e.message.length}-character message`);
    }
  }
});

t.test("parsing is linear in the entry", async (t) => {
  const routes = (n: number) => JSON.stringify({ Kind: "service-router", Name: "api", Routes: Array.from({ length: n }, (_, i) => ({ Match: { HTTP: { PathPrefix: `/r${i}`, Header: [{ Name: "x", Exact: "y" }] } }, Destination: { Service: `s${i}` } })) });
  const run = (s: string) => void parsesOrEntryError(() => parseEntry(JSON.parse(s), "entry.json"));
  assertLinear(t, "many routes", routes, run, 500);
  const splits = (n: number) => JSON.stringify({ Kind: "service-splitter", Name: "api", Splits: Array.from({ length: n }, (_, i) => ({ Weight: 100 / n, ServiceSubset: `v${i}` })) });
  assertLinear(t, "many splits", splits, run, 500);
  const subsets = (n: number) => JSON.stringify({ Kind: "service-resolver", Name: "api", Subsets: Object.fromEntries(Array.from({ length: n }, (_, i) => [`v${i}`, { Filter: `Service.Meta.version == v${i}` }])) });
  assertLinear(t, "many subsets", subsets, run, 500);
  const headers = (n: number) => JSON.stringify({ Kind: "service-splitter", Name: "api", Splits: [{ Weight: 100, RequestHeaders: { Set: Object.fromEntries(Array.from({ length: n }, (_, i) => [`x-h${i}`, "v"])) } }] });
  assertLinear(t, "many header mutations", headers, run, 500);
  assertLinear(t, "a long duration", (n) => JSON.stringify({ Kind: "service-resolver", Name: "api", ConnectTimeout: "1s".repeat(n) }), run, 10_000);
  assertLinear(t, "a long bad duration", (n) => JSON.stringify({ Kind: "service-resolver", Name: "api", ConnectTimeout: `${"1".repeat(n)}x` }), run, 50_000);
});
