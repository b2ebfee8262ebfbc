// The dev control plane's state readers against anything a file can hold: arbitrary JSON values
// (shaped like the real files, and not) and arbitrary bytes. Each returns a parsed value or
// throws StateError naming the file; nothing else may escape, since an escaping error would
// stop the re-reads that keep the last good configuration in force.
import t from "tap";
import fc from "fast-check";
import { fuzzParams } from "./params.js";
import { parseCaConfig, parseCatalogEntry, parseEntryFile, parseIntentions, StateError } from "../../src/controlplane/dev/state.js";
import { ENTRY_KINDS } from "../../src/controlplane/chain/entries.js";
import { firstSyntaxError } from "../../src/controlplane/json-error.js";

const FILE = "/state/intentions.json";

/** True when `read` returns, or throws a StateError whose message starts with the file. */
function readsOrStateError(file: string, read: () => unknown): boolean {
  try {
    read();
    return true;
  } catch (e) {
    if (e instanceof StateError && e.file === file && e.message.startsWith(`${file}: `)) return true;
    throw e;
  }
}

const bytes = fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b).toString("utf8"));
const name = fc.oneof(fc.constantFrom("web", "db", "*", "api-v2", "", "a/b", "..", "x".repeat(70)), fc.string({ maxLength: 8 }));
const anyValue = fc.oneof(fc.jsonValue({ maxDepth: 3 }), fc.constantFrom(undefined, null, "allow", "deny", 0, -1, 1.5, 65536, [], {}));
const action = fc.oneof(fc.constantFrom("allow", "deny", "ALLOW", "maybe"), anyValue);
const permission = fc.record(
  {
    action,
    http: fc.oneof(
      fc.record(
        {
          path_exact: fc.string({ maxLength: 8 }),
          path_prefix: fc.string({ maxLength: 8 }),
          path_regex: fc.oneof(fc.constantFrom("(a", "[", "a{2,1}", ".*", "\\\\", "(?P<x>a)", "a**"), fc.string({ maxLength: 8 })),
          methods: fc.oneof(fc.array(fc.constantFrom("GET", "get", "POST", ""), { maxLength: 3 }), anyValue),
          header: fc.oneof(fc.array(fc.dictionary(fc.constantFrom("name", "present", "exact", "prefix", "suffix", "regex", "invert"), anyValue), { maxLength: 2 }), anyValue),
        },
        { requiredKeys: [] },
      ),
      anyValue,
    ),
  },
  { requiredKeys: [] },
);
const intention = fc.oneof(
  fc.record(
    {
      source: fc.oneof(name, anyValue),
      destination: fc.oneof(name, anyValue),
      action,
      description: anyValue,
      permissions: fc.oneof(fc.array(permission, { maxLength: 3 }), anyValue),
      Permissions: fc.oneof(fc.array(permission, { maxLength: 2 }), anyValue),
    },
    { requiredKeys: [] },
  ),
  anyValue,
);
const policy = fc.oneof(
  fc.record({ default_action: action, intentions: fc.oneof(fc.array(intention, { maxLength: 4 }), anyValue), extra: anyValue }, { requiredKeys: [] }),
  anyValue,
);

t.test("parseIntentions: intentions-shaped JSON, any JSON, any bytes", async (t) => {
  fc.assert(fc.property(policy, (v) => readsOrStateError(FILE, () => parseIntentions(JSON.stringify(v) ?? "", FILE))), fuzzParams());
  fc.assert(fc.property(bytes, (text) => readsOrStateError(FILE, () => parseIntentions(text, FILE))), fuzzParams());
  t.pass("no reader threw anything but StateError");
});

t.test("parseIntentions never turns a file it cannot read into a policy", async (t) => {
  // Anything JSON.parse refuses is refused, with where it broke.
  fc.assert(
    fc.property(bytes, (text) => {
      let valid = true;
      try {
        JSON.parse(text);
      } catch {
        valid = false;
      }
      if (valid) return true;
      try {
        parseIntentions(text, FILE);
        return false;
      } catch (e) {
        return e instanceof StateError && /not valid JSON [\s\S]*; line \d+ column \d+\)/.test(e.message);
      }
    }),
    fuzzParams(),
  );
  t.pass("every unparsable file is a StateError with a line and column");
});

const catalog = fc.oneof(
  fc.record(
    {
      id: fc.oneof(name, anyValue),
      service: fc.oneof(name, anyValue),
      address: fc.oneof(fc.constantFrom("127.0.0.1", "::1", ""), anyValue),
      port: fc.oneof(fc.integer({ min: -2, max: 70000 }), anyValue),
      pid: fc.oneof(fc.integer({ min: -2, max: 2 ** 31 }), anyValue),
      protocol: fc.oneof(fc.constantFrom("tcp", "http", "http2", "grpc", "udp"), anyValue),
      meta: fc.oneof(fc.dictionary(fc.string({ maxLength: 4 }), fc.oneof(fc.string({ maxLength: 4 }), anyValue)), anyValue),
    },
    { requiredKeys: [] },
  ),
  anyValue,
);

t.test("parseCatalogEntry: catalog-shaped JSON, any JSON, any bytes", async (t) => {
  const file = "/state/catalog/web-1.json";
  fc.assert(
    fc.property(catalog, (v) =>
      readsOrStateError(file, () => {
        const e = parseCatalogEntry(JSON.stringify(v) ?? "", file);
        // What is returned is what the rest of the control plane assumes.
        if (!(Number.isInteger(e.port) && e.port >= 1 && e.port <= 65535 && Number.isSafeInteger(e.pid) && e.pid >= 1)) throw new Error(`bad entry accepted: ${JSON.stringify(e)}`);
        if (Object.values(e.meta).some((m) => typeof m !== "string")) throw new Error("meta with a non-string accepted");
      }),
    ),
    fuzzParams(),
  );
  fc.assert(fc.property(bytes, (text) => readsOrStateError(file, () => parseCatalogEntry(text, file))), fuzzParams());
  t.pass("no reader threw anything but StateError");
});

const duration = fc.oneof(fc.constantFrom("5s", "1m30s", "250ms", "x", "", "-1s", "1e400h"), fc.integer(), anyValue);
const entry = fc.oneof(
  fc.record(
    {
      Kind: fc.oneof(fc.constantFrom(...ENTRY_KINDS), anyValue),
      Name: fc.oneof(name, fc.constant("global"), anyValue),
      Protocol: fc.oneof(fc.constantFrom("http", "tcp", "grpc", "HTTP", "udp"), anyValue),
      ConnectTimeout: duration,
      RequestTimeout: duration,
      Config: fc.oneof(fc.record({ protocol: fc.oneof(fc.constantFrom("http", "tcp"), anyValue) }, { requiredKeys: [] }), anyValue),
      UpstreamConfig: anyValue,
      Routes: fc.oneof(fc.array(fc.record({ Match: anyValue, Destination: anyValue }, { requiredKeys: [] }), { maxLength: 3 }), anyValue),
      Splits: fc.oneof(fc.array(fc.record({ Weight: fc.oneof(fc.double(), anyValue), Service: name, ServiceSubset: anyValue }, { requiredKeys: [] }), { maxLength: 3 }), anyValue),
      Subsets: fc.oneof(fc.dictionary(fc.string({ maxLength: 4 }), fc.record({ Filter: fc.oneof(fc.constantFrom('Service.Meta.version == "v2"', "(((", "a ==", ""), anyValue), OnlyPassing: anyValue }, { requiredKeys: [] })), anyValue),
      DefaultSubset: anyValue,
      Redirect: anyValue,
      Failover: anyValue,
      LoadBalancer: anyValue,
    },
    { requiredKeys: [] },
  ),
  anyValue,
);

t.test("parseEntryFile: entry-shaped JSON, any JSON, any bytes", async (t) => {
  const file = "/state/config/service-router/api.json";
  fc.assert(fc.property(entry, fc.constantFrom(...ENTRY_KINDS), (v, kind) => readsOrStateError(file, () => parseEntryFile(JSON.stringify(v) ?? "", file, kind, "api"))), fuzzParams());
  fc.assert(fc.property(bytes, (text) => readsOrStateError(file, () => parseEntryFile(text, file, "service-router", "api"))), fuzzParams());
  t.pass("no reader threw anything but StateError");
});

t.test("parseCaConfig: any JSON, any bytes", async (t) => {
  const file = "/state/ca/config.json";
  const cfg = fc.oneof(fc.record({ trust_domain: fc.oneof(fc.constantFrom("a.consul", "A B", ""), anyValue), datacenter: fc.oneof(name, anyValue), leaf_cert_ttl: duration }, { requiredKeys: [] }), anyValue);
  fc.assert(fc.property(cfg, (v) => readsOrStateError(file, () => parseCaConfig(JSON.stringify(v) ?? "", file))), fuzzParams());
  fc.assert(fc.property(bytes, (text) => readsOrStateError(file, () => parseCaConfig(text, file))), fuzzParams());
  t.pass("no reader threw anything but StateError");
});

t.test("firstSyntaxError agrees with JSON.parse", async (t) => {
  const mangled = fc.jsonValue({ maxDepth: 3 }).chain((v) => {
    const j = JSON.stringify(v);
    return fc.tuple(fc.nat(j.length), fc.constantFrom("", '"', ",", "}", "]", "{", "[", ":", "x", " ", "\\", "0", "-", "\n")).map(([k, c]) => j.slice(0, k) + c + j.slice(k + (c === "" ? 1 : 0)));
  });
  fc.assert(
    fc.property(fc.oneof(mangled, bytes), (text) => {
      let valid = true;
      try {
        JSON.parse(text);
      } catch {
        valid = false;
      }
      const at = firstSyntaxError(text);
      return valid ? at === -1 : at >= 0 && at <= text.length;
    }),
    fuzzParams(),
  );
  t.pass("the position finder accepts exactly what JSON.parse accepts");
});
