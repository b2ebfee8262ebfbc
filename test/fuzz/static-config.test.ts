// The static control plane's file on arbitrary and mutated input: parseStaticConfig returns a
// config or throws StaticConfigError naming the field, with a bounded message, never another
// exception; and it takes time linear in the file.
import t from "tap";
import fc from "fast-check";
import { fuzzParams } from "./params.js";
import { assertLinear, deepNest, jsonText, mutated, type Json } from "./mutate.js";
import { StaticConfigError, parseStaticConfig } from "../../src/controlplane/static/config.js";
import { cpuMs } from "../helpers/cpu-time.js";

const VALID: Json = {
  service: "web",
  datacenter: "dc1",
  trust_domain: "11111111-2222-3333-4444-555555555555.consul",
  identity: { cert_file: "certs/web.pem", key_file: "certs/web.key" },
  roots_files: ["certs/root.pem"],
  public_listener: { bind: "0.0.0.0:21000", local_app: "127.0.0.1:8080", protocol: "http", handshake_timeout_ms: 10000, local_connect_timeout_ms: 1000, idle_timeout_ms: 3600000 },
  upstreams: [
    {
      name: "db",
      bind: "127.0.0.1:8181",
      connect_timeout_ms: 5000,
      idle_timeout_ms: 3600000,
      endpoints: ["10.0.0.5:21000", { address: "10.0.0.6", port: 21000, healthy: true, meta: { version: "v2" } }, "[::1]:21000"],
    },
    { name: "billing", bind: ":8282", datacenter: "dc2", endpoints: ["billing.dc2.example.internal:21000"], sni: "billing.example", spiffe_id: "spiffe://td.consul/ns/default/dc/dc2/svc/billing" },
  ],
  intentions: {
    default_action: "deny",
    intentions: [
      { source: "frontend", destination: "web", action: "allow", description: "the UI calls web" },
      { source: "*", destination: "web", action: "deny" },
    ],
  },
};

/** True when parsing returned or threw a StaticConfigError with a bounded message. */
function parsesOrConfigError(text: string): boolean {
  try {
    parseStaticConfig(text, "/etc/meshproxy/proxy.json");
    return true;
  } catch (e) {
    if (e instanceof StaticConfigError) return e.message.length < 2_000;
    throw e;
  }
}

t.test("the valid file parses", async (t) => {
  t.doesNotThrow(() => parseStaticConfig(JSON.stringify(VALID), "/etc/meshproxy/proxy.json"));
});

t.test("mutated files: a config or a StaticConfigError", async (t) => {
  fc.assert(fc.property(mutated(VALID), (v) => parsesOrConfigError(jsonText(v))), fuzzParams());
  t.pass("held");
});

t.test("broken text: a config or a StaticConfigError", async (t) => {
  const valid = JSON.stringify(VALID, null, 2);
  const edits = fc.array(fc.tuple(fc.nat(), fc.nat({ max: 2 }), fc.constantFrom("{", "}", "[", "]", '"', ",", ":", "\\", "\u0000", "\u{1F600}", "\uD800", "\n", "null", "1e999", "-")), { minLength: 1, maxLength: 4 });
  const broken = edits.map((es) => {
    let s = valid;
    for (const [pos, kind, token] of es) {
      const at = pos % (s.length + 1);
      s = kind === 0 ? s.slice(0, at) + s.slice(at + 1) : kind === 1 ? s.slice(0, at) + token + s.slice(at) : s.slice(0, at);
    }
    return s;
  });
  fc.assert(fc.property(fc.oneof(broken, fc.string({ unit: "binary", maxLength: 200 }), fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v))), parsesOrConfigError), fuzzParams());
  t.pass("held");
});

t.test("huge and deep values: a StaticConfigError with a bounded message", async (t) => {
  const at = (key: string, value: Json): string => jsonText({ ...(VALID as Record<string, Json>), [key]: value });
  const cases: [string, string][] = [
    ["a deep array for the service", at("service", deepNest(100_000, "array"))],
    ["a deep object for the listener", at("public_listener", deepNest(100_000, "object"))],
    ["a deep object for an unknown key", at("extra", deepNest(100_000, "object"))],
    ["a huge unknown key", jsonText({ ...(VALID as Record<string, Json>), ["x".repeat(1_000_000)]: 1 })],
    ["a huge service name", at("service", "w".repeat(1_000_000))],
    ["a huge trust domain", at("trust_domain", `${"a".repeat(1_000_000)}!`)],
    ["a huge bind host", at("public_listener", { bind: `${"a-".repeat(500_000)}!:1`, local_app: "127.0.0.1:1" })],
    ["a huge spiffe id", at("upstreams", [{ name: "db", bind: ":1", endpoints: [], spiffe_id: `spiffe://${"a".repeat(1_000_000)}` }])],
    ["a huge meta key", at("upstreams", [{ name: "db", bind: ":1", endpoints: [{ address: "10.0.0.1", port: 1, meta: { ["k".repeat(1_000_000)]: 1 } }] }])],
    ["text that is not JSON, a megabyte in", `{"service": "${"w".repeat(1_000_000)}`],
  ];
  for (const [what, text] of cases) {
    const ms = cpuMs(() => {
      try {
        parseStaticConfig(text, "proxy.json");
        t.fail(`${what}: accepted`);
      } catch (e) {
        t.ok(e instanceof StaticConfigError, `${what}: a StaticConfigError`);
        if (e instanceof Error) t.ok(e.message.length < 1_000, `${what}: a ${e.message.length}-character message`);
      }
    });
    t.ok(ms < 2_000, `${what}: in ${ms.toFixed(0)} ms of CPU`);
  }
});

t.test("parsing is linear in the file", async (t) => {
  const run = (s: string) => void parsesOrConfigError(s);
  const withUpstreams = (n: number) =>
    JSON.stringify({ ...(VALID as Record<string, Json>), upstreams: Array.from({ length: n }, (_, i) => ({ name: `u${i}`, bind: `127.0.0.1:${(i % 60_000) + 1}`, endpoints: [`10.0.${i >> 8 & 255}.${i & 255}:21000`] })) });
  assertLinear(t, "many upstreams", withUpstreams, run, 300);
  const withIntentions = (n: number) =>
    JSON.stringify({ ...(VALID as Record<string, Json>), intentions: { default_action: "deny", intentions: Array.from({ length: n }, (_, i) => ({ source: `s${i}`, destination: "web", action: "allow" })) } });
  assertLinear(t, "many intentions", withIntentions, run, 500);
  assertLinear(t, "a long host name", (n) => JSON.stringify({ ...(VALID as Record<string, Json>), public_listener: { bind: `${"a-b.".repeat(n)}x!:1`, local_app: "127.0.0.1:1" } }), run, 20_000);
  assertLinear(t, "a long trust domain", (n) => JSON.stringify({ ...(VALID as Record<string, Json>), trust_domain: `${"a-".repeat(n)}!` }), run, 20_000);
  assertLinear(t, "a long unknown key", (n) => JSON.stringify({ ...(VALID as Record<string, Json>), ["x".repeat(n)]: 1 }), run, 20_000);
  assertLinear(t, "a long bad spiffe id", (n) => JSON.stringify({ ...(VALID as Record<string, Json>), upstreams: [{ name: "db", bind: ":1", endpoints: [], spiffe_id: `spiffe://${"a".repeat(n)}` }] }), run, 20_000);
});
