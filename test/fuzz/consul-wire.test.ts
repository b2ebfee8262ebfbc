// The Consul agent's JSON decoders (wire.ts, the discovery-chain decoder and the config-entry
// parser it calls, the default-action readers) against arbitrary JSON and against valid agent
// answers with fields removed or replaced (wrong types, huge numbers, deep nesting): each
// returns a value or throws its module's own error naming a field, never a TypeError or a
// RangeError, and in time linear in the input.
import t from "tap";
import fc from "fast-check";
import { fuzzParams } from "./params.js";
import { WireError, parseAgentServices, parseChain, parseHealth, parseIntentionMatch, parseLeaf, parseProxyRegistration, parseRoots } from "../../src/controlplane/consul/wire.js";
import { chainFromAgent } from "../../src/controlplane/consul/chain.js";
import { EntryError } from "../../src/controlplane/chain/entries.js";
import { defaultFromAgentSelf, parseAuthorize } from "../../src/controlplane/consul/default-action.js";
import { defaultDiscoveryChain } from "../helpers/consul-agent.js";
import { createRootCa, issueLeaf } from "../../src/identity/ca.js";
import { cpuMs, fastestCpuMs } from "../helpers/cpu-time.js";

type Decoder = (body: unknown) => unknown;

// Real certificates: the roots and leaf decoders check them as the proxy would (a PEM that parses,
// a key that matches), so a valid sample has to be one.
const ca = await createRootCa("a.consul");
const leaf = await issueLeaf(ca, { spiffeId: "spiffe://a.consul/ns/default/dc/dc1/svc/web", commonName: "web", ttlMs: 3_600_000 });
const ROOT = { ID: "3d:91", Name: "Consul CA Primary Cert", RootCert: ca.certPem, IntermediateCerts: null, Active: true, NotAfter: "2034-01-01T00:00:00Z" };

/** One valid answer per decoder, as the agent writes them. */
const DECODERS: ReadonlyArray<{ readonly name: string; readonly decode: Decoder; readonly valid: unknown }> = [
  { name: "roots", decode: parseRoots, valid: { ActiveRootID: "3d:91", TrustDomain: "a.consul", Roots: [ROOT] } },
  {
    name: "leaf",
    decode: parseLeaf,
    valid: { SerialNumber: "5f:02", CertPEM: leaf.certPem, PrivateKeyPEM: leaf.keyPem, Service: "web", ServiceURI: "spiffe://a.consul/ns/default/dc/dc1/svc/web", ValidAfter: "2024-01-01T00:00:00Z", ValidBefore: "2024-01-04T00:00:00Z" },
  },
  {
    name: "registration",
    decode: (b) => parseProxyRegistration(b),
    valid: {
      ID: "web-sidecar-proxy",
      Kind: "connect-proxy",
      Address: "127.0.0.1",
      Port: 21000,
      Proxy: {
        DestinationServiceName: "web",
        DestinationServiceID: "web-1",
        LocalServicePort: 8080,
        Config: { protocol: "http", local_connect_timeout_ms: 500 },
        Upstreams: [{ DestinationName: "db", LocalBindPort: 9191, Config: { connect_timeout_ms: 2000, limits: { max_connections: 10 }, passive_health_check: { interval: "10s", max_failures: 3 } } }],
      },
    },
  },
  { name: "agent services", decode: parseAgentServices, valid: { "web-sidecar-proxy": { ID: "web-sidecar-proxy", Kind: "connect-proxy", Proxy: { DestinationServiceID: "web-1" } } } },
  {
    name: "health",
    decode: (b) => parseHealth(b, "db"),
    valid: [
      {
        Node: { Node: "n1", Address: "10.0.0.1", Datacenter: "dc1", Meta: { zone: "a" } },
        Service: { ID: "db-1-sidecar-proxy", Service: "db-sidecar-proxy", Address: "10.0.0.5", Port: 21000, Tags: ["v1"], Meta: { version: "1" }, Proxy: { DestinationServiceName: "db" } },
        Checks: [{ Status: "passing" }, { Status: "warning" }],
      },
    ],
  },
  { name: "chain (wire)", decode: (b) => parseChain(b, "db"), valid: { Chain: defaultDiscoveryChain("db", "dc1", "a.consul") } },
  { name: "chain (compiled)", decode: (b) => chainFromAgent(b, "db"), valid: { Chain: routerChain() } },
  {
    name: "intentions match",
    decode: (b) => parseIntentionMatch(b, "web"),
    valid: {
      web: [
        {
          SourceNS: "default",
          SourceName: "api",
          DestinationNS: "default",
          DestinationName: "web",
          SourcePartition: "default",
          DestinationPartition: "default",
          Permissions: [
            { Action: "allow", HTTP: { PathPrefix: "/invoices", Methods: ["GET"], Header: [{ Name: "x-team", Exact: "a" }] } },
            { Action: "deny", HTTP: { PathRegex: "^/admin", Header: [{ Name: "x-debug", Present: true }] }, JWT: { Providers: [] } },
          ],
          Precedence: 9,
        },
        { SourceNS: "*", SourceName: "*", DestinationNS: "default", DestinationName: "web", SourcePeer: "other", Action: "deny", Precedence: 7 },
      ],
    },
  },
  { name: "authorize", decode: parseAuthorize, valid: { Authorized: true, Reason: "ACLs disabled, access is allowed by default" } },
  { name: "agent self", decode: defaultFromAgentSelf, valid: { DebugConfig: { DefaultIntentionPolicy: "", ACLResolverSettings: { ACLsEnabled: true, ACLDefaultPolicy: "deny" } } } },
];

/** A compiled chain with a router, a splitter and two resolvers: the decoder's every branch. */
function routerChain(): Record<string, unknown> {
  const base = defaultDiscoveryChain("db", "dc1", "a.consul");
  const target = "db.default.default.dc1";
  const v2 = "v2.db.default.default.dc1";
  return {
    ...base,
    Protocol: "http",
    StartNode: "router:db",
    Nodes: {
      "router:db": {
        Type: "router",
        Name: "db",
        Routes: [
          { Definition: { Match: { HTTP: { PathPrefix: "/v2", Header: [{ Name: "x-v", Exact: "2" }] } }, Destination: { ServiceSubset: "v2", NumRetries: 2, RetryOn: ["5xx"] } }, NextNode: "splitter:db" },
          { Definition: { Match: { HTTP: { PathPrefix: "/" } }, Destination: { Service: "db" } }, NextNode: `resolver:${target}` },
        ],
      },
      "splitter:db": { Type: "splitter", Name: "db", Splits: [{ Weight: 90, NextNode: `resolver:${target}` }, { Weight: 10, NextNode: `resolver:${v2}`, Definition: { RequestHeaders: { Set: { "x-canary": "1" } } } }] },
      [`resolver:${target}`]: { Type: "resolver", Name: target, Resolver: { ConnectTimeout: "5s", Target: target, Failover: { Targets: [v2] } }, LoadBalancer: { Policy: "least_request", LeastRequestConfig: { ChoiceCount: 3 } } },
      [`resolver:${v2}`]: { Type: "resolver", Name: v2, Resolver: { ConnectTimeout: "5s", Target: v2, RequestTimeout: "2s" } },
    },
    Targets: {
      [target]: { ID: target, Service: "db", Namespace: "default", Datacenter: "dc1", Subset: {}, SNI: "db.default.dc1.internal.a.consul" },
      [v2]: { ID: v2, Service: "db", ServiceSubset: "v2", Namespace: "default", Datacenter: "dc1", Subset: { Filter: "Service.Meta.version == 2", OnlyPassing: true }, SNI: "v2.db.default.dc1.internal.a.consul" },
    },
  };
}

/** The decoders' own errors; anything else (TypeError, RangeError) is a bug. */
function expected(e: unknown): boolean {
  return (e instanceof WireError || e instanceof EntryError) && e.message.length > 0 && e.message.length < 2000;
}

function decodes(decode: Decoder, body: unknown): boolean {
  try {
    decode(body);
    return true;
  } catch (e) {
    if (expected(e)) return true;
    throw e;
  }
}

t.test("every valid sample decodes", async (t) => {
  for (const d of DECODERS) t.doesNotThrow(() => d.decode(d.valid), d.name);
});

/** Values the agent should never send, in the shapes that break decoders. */
const hostile = fc.oneof(
  fc.jsonValue({ maxDepth: 4 }),
  fc.constantFrom(1e308, -1e308, 2 ** 53 + 1, -0, 0.5, -1, "", "*", "__proto__", "constructor", [], {}, null, true),
  fc.string({ maxLength: 2000 }),
);

t.test("arbitrary JSON: a value or the module's own error", async (t) => {
  for (const d of DECODERS) {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 6 }), (v) => decodes(d.decode, v)),
      fuzzParams(0.5),
    );
    t.pass(d.name);
  }
});

type Path = ReadonlyArray<string | number>;

/** Every place in `v` a mutation can hit: each array element and object member, at any depth. */
function pathsOf(v: unknown, at: Path = []): Path[] {
  const children: Array<[string | number, unknown]> = Array.isArray(v) ? v.map((x, i): [number, unknown] => [i, x]) : typeof v === "object" && v !== null ? Object.entries(v) : [];
  const out: Path[] = [];
  for (const [k, x] of children) {
    const p = [...at, k];
    out.push(p, ...pathsOf(x, p));
  }
  return out;
}

/** A deep copy with the value at `path` replaced, or removed when `replacement` is undefined. */
function mutated(v: unknown, path: Path, replacement: unknown): unknown {
  if (path.length === 0) return replacement;
  const [head, ...rest] = path;
  if (Array.isArray(v) && typeof head === "number") {
    const items: readonly unknown[] = v;
    const copy: unknown[] = [...items];
    if (rest.length === 0 && replacement === undefined) copy.splice(head, 1);
    else copy[head] = mutated(v[head], rest, replacement);
    return copy;
  }
  if (typeof v === "object" && v !== null && typeof head === "string") {
    const copy: Record<string, unknown> = { ...v };
    if (rest.length === 0 && replacement === undefined) delete copy[head];
    else copy[head] = mutated(Reflect.get(v, head), rest, replacement);
    return copy;
  }
  return v;
}

t.test("valid answers with fields removed or replaced: a value or the module's own error", async (t) => {
  for (const d of DECODERS) {
    const paths = pathsOf(d.valid);
    const mutation = fc.record({ at: fc.nat(), remove: fc.boolean(), value: hostile });
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), (ms) => {
        let body: unknown = d.valid;
        for (const m of ms) body = mutated(body, paths[m.at % paths.length] ?? [], m.remove ? undefined : m.value);
        return decodes(d.decode, body);
      }),
      fuzzParams(),
    );
    t.pass(`${d.name} (${paths.length} places to mutate)`);
  }
});

function nested(depth: number): unknown {
  let v: unknown = "bottom";
  for (let i = 0; i < depth; i++) v = i % 2 === 0 ? [v] : { x: v };
  return v;
}

t.test("deep nesting anywhere is not a stack overflow", async (t) => {
  const deep = nested(100_000);
  for (const d of DECODERS) {
    for (const p of pathsOf(d.valid)) t.ok(decodes(d.decode, mutated(d.valid, p, deep)), `${d.name} at ${p.join(".")}`, { diagnostic: false });
  }
});

t.test("time is linear in the input: 20x the input costs well under 200x the time", async (t) => {
  /** CPU milliseconds for a decode of `body`, best of three. */
  const cost = (decode: Decoder, body: unknown): number => fastestCpuMs(() => void decodes(decode, body), 3);
  const match = (n: number) => ({ web: Array.from({ length: n }, (_, i) => ({ SourceName: `s${i}`, DestinationName: "web", Action: "allow", SourceNS: "default" })) });
  const small = cost((b) => parseIntentionMatch(b, "web"), match(500));
  const big = cost((b) => parseIntentionMatch(b, "web"), match(10_000));
  t.ok(big < Math.max(small, 0.5) * 200, `intentions: ${small.toFixed(2)} ms for 500, ${big.toFixed(2)} ms for 10000`);

  // A splitter listing itself: flattening must stop, not multiply (50 legs, 8 levels deep = 50^8).
  const chain = routerChain();
  const nodes = chain["Nodes"];
  const selfSplit = { Type: "splitter", Name: "db", Splits: Array.from({ length: 50 }, () => ({ Weight: 2, NextNode: "splitter:db" })) };
  const hostileChain = { Chain: { ...chain, Nodes: { ...(typeof nodes === "object" && nodes !== null ? nodes : {}), "splitter:db": selfSplit } } };
  const ms = cpuMs(() => void t.throws(() => chainFromAgent(hostileChain, "db"), WireError, "a self-referencing splitter is an error of the answer"));
  t.ok(ms < 2000, `and found in ${ms.toFixed(0)} ms of CPU`);
});
