// The subset-filter parser (go-bexpr) on arbitrary and mutated input: it returns a filter or
// throws FilterError with a position inside the input — never another exception, at compile
// time or when the filter runs — and it takes time linear in the expression.
import t from "tap";
import fc from "fast-check";
import { fuzzParams } from "./params.js";
import { assertLinear } from "./mutate.js";
import { FilterError, compileFilter, type FilterTarget } from "../../src/controlplane/chain/bexpr.js";

const TARGETS: readonly FilterTarget[] = [
  {
    service: { meta: { version: "v2", "a b": "", constructor: "x" }, tags: ["canary", ""], id: "api-2", name: "api", address: "10.0.0.2", port: 8080 },
    node: { meta: { zone: "us-east-1a" }, name: "node-2", datacenter: "dc1" },
  },
  { service: { meta: {}, tags: [], id: "", name: "", address: "", port: 0 }, node: { meta: {}, name: "", datacenter: "" } },
];

/** Compiles and runs the filter; false when the property is broken. */
function holds(expr: string): boolean {
  let f: (e: FilterTarget) => boolean;
  try {
    f = compileFilter(expr);
  } catch (e) {
    if (!(e instanceof FilterError)) throw e;
    return Number.isInteger(e.position) && e.position >= 0 && e.position <= expr.length;
  }
  for (const target of TARGETS) if (typeof f(target) !== "boolean") return false;
  return true;
}

const SELECTORS = ["Service.ID", "Service.Service", "Service.Address", "Service.Port", "Service.Tags", "Service.Meta", "Service.Meta.version", 'Service.Meta["a b"]', "Service.Meta.constructor", "Node.Node", "Node.Datacenter", "Node.Meta", "Node.Meta.zone", "Service.Nope", "Service.Meta.a.b"];
const VALUES = ["v2", '"v2"', "`v2`", '"\\x41\\u00e9\\101\\n"', "8080", "-1", "1.5", '"^v[0-9]+$"', '"(?i)V2"', '"(a)\\\\1"', '"("', "`\\pL+`", '""', "canary"];
const OPS = ["==", "!=", "is empty", "is not empty", "contains", "not contains", "matches", "not matches"];

const match = fc.oneof(
  fc.tuple(fc.constantFrom(...SELECTORS), fc.constantFrom(...OPS), fc.constantFrom(...VALUES)).map(([s, op, v]) => (op.startsWith("is") ? `${s} ${op}` : `${s} ${op} ${v}`)),
  fc.tuple(fc.constantFrom(...VALUES), fc.constantFrom("in", "not in"), fc.constantFrom(...SELECTORS)).map(([v, op, s]) => `${v} ${op} ${s}`),
);

/** Well-formed expressions (by the grammar), which the mutations below then break. */
const expression: fc.Arbitrary<string> = fc.letrec<{ expr: string }>((tie) => ({
  expr: fc.oneof(
    { depthSize: "small", maxDepth: 4 },
    match,
    tie("expr").map((e) => `not ${e}`),
    tie("expr").map((e) => `(${e})`),
    fc.tuple(tie("expr"), fc.constantFrom(" and ", " or ", "and", " or\n"), tie("expr")).map(([a, op, b]) => a + op + b),
  ),
}))["expr"];

const TOKENS = ["(", ")", '"', "`", "\\", "not", "and", "or", "in", "is", "empty", ".", "[", "]", "==", "!=", "-", "0", "\u{1F600}", "\uD800", "\n", " ", "matches"];

/** The expression with characters deleted, tokens inserted or a slice duplicated. */
const mutatedExpression = fc
  .tuple(expression, fc.array(fc.tuple(fc.nat(), fc.nat({ max: 3 }), fc.constantFrom(...TOKENS)), { minLength: 1, maxLength: 4 }))
  .map(([e, edits]) => {
    let s = e;
    for (const [pos, kind, token] of edits) {
      const at = s.length === 0 ? 0 : pos % (s.length + 1);
      if (kind === 0) s = s.slice(0, at) + s.slice(at + 1);
      else if (kind === 1) s = s.slice(0, at) + token + s.slice(at);
      else if (kind === 2) s = s.slice(0, at) + s.slice(at, at + 8).repeat(3) + s.slice(at + 8);
      else s = s.slice(0, at);
    }
    return s;
  });

t.test("well-formed expressions compile or are refused with a FilterError, and run", async (t) => {
  fc.assert(fc.property(expression, holds), fuzzParams());
  t.pass("held");
});

t.test("mutated expressions: a filter or a FilterError, never another exception", async (t) => {
  fc.assert(fc.property(mutatedExpression, holds), fuzzParams());
  t.pass("held");
});

t.test("arbitrary strings: a filter or a FilterError", async (t) => {
  fc.assert(fc.property(fc.oneof(fc.string({ unit: "binary", maxLength: 80 }), fc.array(fc.constantFrom(...TOKENS, ...SELECTORS, ...VALUES, " "), { maxLength: 20 }).map((p) => p.join(""))), holds), fuzzParams());
  t.pass("held");
});

t.test("huge and deeply nested expressions are refused or compiled, not a stack overflow", async (t) => {
  const clause = "Service.Meta.version == v2";
  for (const n of [10, 100, 1_000, 10_000, 100_000]) {
    t.ok(holds(`${"(".repeat(n)}${clause}${")".repeat(n)}`), `${n} nested parentheses`);
    t.ok(holds(`${"not ".repeat(n)}${clause}`), `${n} nested nots`);
    t.ok(holds(Array.from({ length: n }, () => clause).join(" or ")), `${n} clauses joined by or`);
    t.ok(holds(Array.from({ length: n }, () => clause).join(" and ")), `${n} clauses joined by and`);
  }
  t.ok(holds(`Service.Meta.version == "${"x".repeat(1_000_000)}"`), "a 1 MB quoted value");
  t.ok(holds(`Service.Meta.${"a".repeat(1_000_000)} == x`), "a 1 MB key");
  t.ok(holds(`Service.Meta.version matches "${"(?:a)".repeat(100_000)}"`), "a 500 kB regex");
});

t.test("parsing is linear in the expression", async (t) => {
  const run = (s: string) => void holds(s);
  const clause = "Service.Meta.version == v2";
  assertLinear(t, "or chain", (n) => Array.from({ length: n }, () => clause).join(" or "), run, 4_000);
  assertLinear(t, "a long quoted value", (n) => `Service.ID == "${"\\x41".repeat(n)}"`, run, 20_000);
  assertLinear(t, "a long raw value", (n) => `Service.ID == \`${"a".repeat(n)}\``, run, 50_000);
  assertLinear(t, "a long selector path", (n) => `Service${".1".repeat(n)} == x`, run, 20_000);
  assertLinear(t, "a long number", (n) => `Service.Port == ${"1".repeat(n)}`, run, 50_000);
  assertLinear(t, "an unterminated string", (n) => `Service.ID == "${"a".repeat(n)}`, run, 50_000);
  assertLinear(t, "whitespace", (n) => `${" ".repeat(n)}Service.ID == x${" ".repeat(n)}`, run, 50_000);
  assertLinear(t, "a bad character after a long word", (n) => `${"a".repeat(n)}!`, run, 50_000);
});
