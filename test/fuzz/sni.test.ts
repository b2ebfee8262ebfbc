// The mesh SNI grammar under fuzzing: every name Consul builds reads back as what it was built
// from; any other string is refused (never thrown on), and the only names accepted are exactly
// Consul's forms (formatting what was read gives the name back); time is linear.
import t from "tap";
import fc from "fast-check";
import { fuzzParams } from "./params.js";
import { assertLinear } from "./mutate.js";
import { formatMeshSni, parseMeshSni, serverNameMatches, type MeshSni } from "../../src/identity/sni.js";

const TD = "11111111-2222-3333-4444-555555555555.consul";
const label = fc.stringMatching(/^[a-z0-9_-]{1,12}$/);
const tricky = fc.constantFrom("internal", "internal-v1", "query", "external", "default", "consul", "dc1");
const anyLabel = fc.oneof(label, tricky);

const meshSni: fc.Arbitrary<MeshSni> = fc.oneof(
  fc.record({ kind: fc.constant("service" as const), subset: fc.option(anyLabel, { nil: null }), service: anyLabel, namespace: anyLabel, partition: anyLabel, datacenter: anyLabel, trustDomain: fc.constant(TD) }),
  fc.record({ kind: fc.constant("datacenter" as const), partition: anyLabel, datacenter: anyLabel, trustDomain: fc.constant(TD) }),
  fc.record({ kind: fc.constant("query" as const), query: anyLabel, datacenter: anyLabel, trustDomain: fc.constant(TD) }),
  fc.record({ kind: fc.constant("peered" as const), service: anyLabel, namespace: anyLabel, partition: anyLabel, peer: anyLabel, trustDomain: fc.constant(TD) }),
);

/** Strings near the grammar: labels, markers, dots, the trust domain, junk. */
const ATOMS = [".", ".", ".", "..", "web", "default", "dc1", "v1", "internal", "internal-v1", "query", "external", "peering", TD, `.${TD}`, "consul", "*", "-", "_", " ", "\u0000", "é", "A", "11111111-2222"];
// Declared after `anyLabel`: names built from labels are the ones most often accepted.
const nearName = fc.oneof(
  { weight: 1, arbitrary: fc.array(fc.constantFrom(...ATOMS), { maxLength: 16 }).map((a) => a.join("")) },
  { weight: 1, arbitrary: fc.string({ unit: "binary", maxLength: 80 }) },
  { weight: 3, arbitrary: fc.tuple(fc.array(fc.oneof({ weight: 12, arbitrary: anyLabel }, { weight: 1, arbitrary: fc.constantFrom("", "A", "*", "a b") }), { maxLength: 6 }), fc.constantFrom("internal", "internal-v1", "query", "external", "peering", "")).map(([labels, marker]) => [...labels, marker, TD].join(".")) },
  { weight: 1, arbitrary: fc.tuple(fc.string({ unit: "binary", maxLength: 40 }), fc.constantFrom(`.internal.${TD}`, `.internal-v1.${TD}`, `.query.${TD}`, `.external.${TD}`)).map(([a, b]) => a + b) },
);

t.test("what Consul builds reads back as what it was built from, in any case", async (t) => {
  fc.assert(
    fc.property(meshSni, fc.boolean(), (sni, upper) => {
      const name = formatMeshSni(sni);
      const read = parseMeshSni(upper ? name.toUpperCase() : name, TD);
      // The default partition has no label of its own: "default" in one is the same name.
      return JSON.stringify(read) === JSON.stringify(parseMeshSni(name, TD)) && read.kind !== "refused" && formatMeshSni(read) === name;
    }),
    fuzzParams(),
  );
  t.pass("round trips hold");
});

t.test("any string: a refusal or a reading that formats back to the very name", async (t) => {
  let accepted = 0;
  fc.assert(
    fc.property(nearName, (name) => {
      const r = parseMeshSni(name, TD);
      if (r.kind === "refused") return r.message.length > 0;
      accepted++;
      return formatMeshSni(r) === name.toLowerCase();
    }),
    fuzzParams(),
  );
  t.ok(accepted > 0, `${accepted} generated names were mesh names`);
});

t.test("a name under another trust domain is refused, however close", async (t) => {
  fc.assert(
    fc.property(meshSni, fc.constantFrom(`x${TD}`, TD.replace("1", "2"), "consul", `${TD}.evil`, "5555.consul"), (sni, other) => {
      const r = parseMeshSni(formatMeshSni(sni).replace(TD, other), TD);
      return r.kind === "refused" && r.reason === "wrong_trust_domain";
    }),
    fuzzParams(),
  );
  t.pass("refused");
});

t.test("a wildcard matches a name exactly when the name has labels of its own before the suffix", async (t) => {
  fc.assert(
    fc.property(fc.array(anyLabel, { maxLength: 4 }), label, nearName, (prefix, dc, junk) => {
      const suffix = `${dc}.internal.${TD}`;
      const name = [...prefix, suffix].join(".");
      if (serverNameMatches(`*.${suffix}`, name) !== prefix.length > 0) return false;
      // Junk either matches by having that suffix after a non-empty, dot-clean prefix, or not at all.
      const hit = serverNameMatches(`*.${suffix}`, junk);
      const lower = junk.toLowerCase();
      return !hit || (lower.endsWith(`.${suffix}`) && !lower.slice(0, -suffix.length - 1).split(".").includes(""));
    }),
    fuzzParams(),
  );
  t.pass("wildcards hold");
});

t.test("linear time on long names", async (t) => {
  const run = (name: string) => {
    parseMeshSni(name, TD);
    serverNameMatches(`*.dc1.internal.${TD}`, name);
  };
  assertLinear(t, "many labels", (n) => `${"a.".repeat(n)}internal.${TD}`, run, 5_000);
  assertLinear(t, "one long label", (n) => `${"a".repeat(n)}.default.dc1.internal.${TD}`, run, 20_000);
  assertLinear(t, "dots", (n) => `${".".repeat(n)}internal.${TD}`, run, 20_000);
});
