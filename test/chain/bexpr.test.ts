// Subset filters (go-bexpr over a health ServiceEntry): operators, precedence, errors.
import t from "tap";
import { FilterError, MAX_FILTER_NESTING, compileFilter, type FilterTarget } from "../../src/controlplane/chain/bexpr.js";

const V2: FilterTarget = {
  service: { meta: { version: "v2", "my-key": "a b", blank: "" }, tags: ["canary", "primary"], id: "api-2", name: "api", address: "10.0.0.2", port: 8080 },
  node: { meta: { zone: "us-east-1a" }, name: "node-2", datacenter: "dc1" },
};
const V1: FilterTarget = {
  service: { meta: { version: "v1" }, tags: [], id: "api-1", name: "api", address: "", port: 9090 },
  node: { meta: {}, name: "node-1", datacenter: "dc2" },
};

/** Which of V1, V2 the filter keeps. */
function keeps(expr: string): string[] {
  const f = compileFilter(expr);
  return [V1, V2].filter(f).map((e) => e.service.id);
}

function error(expr: string): FilterError {
  try {
    compileFilter(expr);
  } catch (e) {
    if (e instanceof FilterError) return e;
    throw e;
  }
  throw new Error(`${expr} compiled`);
}

t.test("== and != with bare, quoted and raw values", async (t) => {
  t.same(keeps("Service.Meta.version == v2"), ["api-2"], "bare word");
  t.same(keeps('Service.Meta.version == "v2"'), ["api-2"], "double-quoted");
  t.same(keeps("Service.Meta.version == `v2`"), ["api-2"], "raw string");
  t.same(keeps("Service.Meta.version==v1"), ["api-1"], "no spaces needed around ==");
  t.same(keeps("Service.Meta.version != v2"), ["api-1"], "!=");
  t.same(keeps('Service.Meta["my-key"] == "a b"'), ["api-2"], "indexed key with a dash, quoted value with a space");
  t.same(keeps("Service.Meta.missing == x"), [], "a missing key equals nothing");
  t.same(keeps("Service.Meta.missing != x"), ["api-1", "api-2"], "…and differs from everything");
  t.equal(error("Service.ID == api-1").position, 17, "a bare word stops at '-' (go-bexpr identifiers)…");
  t.same(keeps('Service.ID == "api-1"'), ["api-1"], "…so a dashed value must be quoted");
  t.same(keeps("Service.Service == api"), ["api-1", "api-2"], "Service.Service is the service name");
  t.same(keeps("Service.Meta.version != v2.1"), ["api-1", "api-2"], "a dotted bare word is a value");
  t.same(keeps('Service.Address == "10.0.0.2"'), ["api-2"]);
  t.same(keeps("Service.Port == 8080"), ["api-2"], "numbers compare numerically with Service.Port");
  t.same(keeps("Service.Port != 8080"), ["api-1"]);
  t.same(keeps('Node.Node == "node-1"'), ["api-1"]);
  t.same(keeps("Node.Datacenter == dc2"), ["api-1"]);
  t.same(keeps('Node.Meta.zone == "us-east-1a"'), ["api-2"]);
  t.same(keeps('Service.Meta.version == "\\x76\\u0032"'), ["api-2"], "Go string escapes are decoded");
});

t.test("is empty / is not empty", async (t) => {
  t.same(keeps("Service.Tags is empty"), ["api-1"], "an empty list");
  t.same(keeps("Service.Tags is not empty"), ["api-2"]);
  t.same(keeps("Node.Meta is empty"), ["api-1"], "an empty map");
  t.same(keeps("Service.Address is empty"), ["api-1"], "an empty string");
  t.same(keeps("Service.Meta.blank is empty"), ["api-1", "api-2"], "an empty map value (V2) and a missing key (V1) are both empty (go-bexpr)");
  t.same(keeps("Service.Meta.blank is not empty"), []);
  t.same(keeps("Service.Meta.version is not empty"), ["api-1", "api-2"], "a non-empty map value");
});

t.test("in / not in / contains / not contains", async (t) => {
  t.same(keeps("canary in Service.Tags"), ["api-2"], "list membership");
  t.same(keeps('"canary" not in Service.Tags'), ["api-1"]);
  t.same(keeps("Service.Tags contains primary"), ["api-2"], "contains is in, reversed");
  t.same(keeps("Service.Tags not contains primary"), ["api-1"]);
  t.same(keeps("can in Service.Tags"), [], "membership is whole elements, not substrings");
  t.same(keeps("version in Service.Meta"), ["api-1", "api-2"], "in a map: key membership");
  t.same(keeps("blank in Service.Meta"), ["api-2"]);
  t.same(keeps("Node.Meta contains zone"), ["api-2"]);
  t.same(keeps('"east" in Node.Meta.zone'), ["api-2"], "in a string: substring");
  t.same(keeps('Node.Meta.zone contains "east"'), ["api-2"]);
  t.same(keeps('"east" not in Node.Meta.zone'), ["api-1"], "a missing key contains nothing");
  t.same(keeps('"0.0" in Service.Address'), ["api-2"]);
});

t.test("matches / not matches (an unanchored RE2 search)", async (t) => {
  t.same(keeps('Service.Meta.version matches "^v[0-9]+$"'), ["api-1", "api-2"]);
  t.same(keeps('Service.Meta.version matches "2"'), ["api-2"], "unanchored, as Go's MatchString");
  t.same(keeps('Node.Meta.zone matches "^us-"'), ["api-2"]);
  t.same(keeps('Node.Meta.zone not matches "^us-"'), ["api-1"], "a missing key matches nothing");
  t.same(keeps('Service.ID not matches "-1$"'), ["api-2"]);
});

t.test("and, or, not and parentheses", async (t) => {
  t.same(keeps('Service.Meta.version == "v2" and "canary" in Service.Tags'), ["api-2"], "the brief's example");
  t.same(keeps("Service.Meta.version == v1 and Service.Port == 8080"), [], "and needs both");
  t.same(keeps("Service.Meta.version == v1 or Service.Port == 8080"), ["api-1", "api-2"], "or needs either");

  // a or b and c: `and` binds tighter. With a = v1, b = canary, c = dc2:
  // a or (b and c) keeps V1 (a) only; (a or b) and c would keep V1 only too — so use c = dc1:
  // a or (b and c) keeps V1 and V2, (a or b) and c keeps V2 only.
  t.same(keeps("Service.Meta.version == v1 or canary in Service.Tags and Node.Datacenter == dc1"), ["api-1", "api-2"], "and binds tighter than or");
  t.same(keeps("(Service.Meta.version == v1 or canary in Service.Tags) and Node.Datacenter == dc1"), ["api-2"], "parentheses override it");

  // not a and b: `not` binds tightest. a = v2, b = dc1: (not a) and b keeps nothing; not (a and b) keeps V1.
  t.same(keeps("not Service.Meta.version == v2 and Node.Datacenter == dc1"), [], "not binds tighter than and");
  t.same(keeps("not (Service.Meta.version == v2 and Node.Datacenter == dc1)"), ["api-1"], "parentheses again");
  t.same(keeps("not not Service.Meta.version == v2"), ["api-2"], "not not");
  t.same(keeps("  ( ( Service.Meta.version == v2 ) )  "), ["api-2"], "nested parentheses and surrounding space");
  t.same(keeps("Service.Meta.notes is empty and notable in Service.Tags or Service.Port == 9090"), ["api-1"], "keywords are whole words: `notes`, `notable` are not `not`");
});

t.test("errors carry the position and what was expected", async (t) => {
  const cases: [string, number, RegExp][] = [
    ["Service.Meta.version = v2", 21, /operator/],
    ["Service.Meta.version == ", 24, /value/],
    ["(Service.Meta.version == v2", 27, /"\)"/],
    ["Service.Meta.version == v2)", 26, /end of input/],
    ["Service.Meta.version == v2 and", 30, /selector/],
    ["", 0, /selector/],
    ["Service.Nope == x", 0, /known selector/],
    ["Service.Meta.a.b == x", 0, /known selector/],
    ["Service.Tags == x", 13, /operator Service\.Tags supports/],
    ["Service.Port contains 8", 13, /operator Service\.Port supports/],
    ["Service.Tags matches x", 13, /operator/],
    ["Service.Port == eighty", 16, /integer/],
    ['Service.Meta.v matches "("', 23, /regular expression/],
    ['"v2" == Service.Meta.version', 0, /a selector/],
    ["v2 in", 5, /selector/],
    ['Service.Meta.v == "open', 23, /closing/],
    ["Service.Meta.v == 1abc", 19, /after a number/],
    ["Service.Meta.v is full", 18, /"empty"/],
    ["Service.Meta.v not equals x", 19, /"in", "contains" or "matches"/],
    ["Service.Meta[version] == x", 13, /quoted key/],
    ['Service.Meta.v == "\\q"', 20, /valid escape/],
  ];
  for (const [expr, position, expected] of cases) {
    const e = error(expr);
    t.equal(e.position, position, `${JSON.stringify(expr)}: position ${position}`);
    t.match(e.expected, expected, `${JSON.stringify(expr)}: expected ${String(expected)}`);
    t.match(e.message, `at position ${position}: expected`, "the message says both");
  }
});

// Found by test/fuzz/bexpr.test.ts: each of these threw RangeError (call stack) before.
t.test("deep nesting is refused with a position; long chains compile and run", async (t) => {
  const clause = "Service.Meta.version == v2";
  const parens = error(`${"(".repeat(MAX_FILTER_NESTING + 1)}${clause}${")".repeat(MAX_FILTER_NESTING + 1)}`);
  t.equal(parens.position, MAX_FILTER_NESTING, "the parenthesis one past the limit");
  t.match(parens.expected, /at most 256 levels/, "says what the limit is");
  const nots = error(`${"not ".repeat(10_000)}${clause}`);
  t.equal(nots.position, 4 * MAX_FILTER_NESTING, "the not one past the limit");
  t.same(keeps(`${"(".repeat(MAX_FILTER_NESTING)}${clause}${")".repeat(MAX_FILTER_NESTING)}`), ["api-2"], "nesting up to the limit works");
  t.same(keeps(`${"not ".repeat(MAX_FILTER_NESTING)}${clause}`), ["api-2"], "an even number of nots up to the limit");

  const or = Array.from({ length: 100_000 }, (_, i) => (i === 99_999 ? clause : "Service.Meta.version == nope")).join(" or ");
  t.same(keeps(or), ["api-2"], "100,000 clauses joined by or: evaluated without recursion");
  const and = Array.from({ length: 100_000 }, () => clause).join(" and ");
  t.same(keeps(and), ["api-2"], "100,000 clauses joined by and");
  t.same(keeps("Service.Meta.version == v1 or Service.Meta.version == v2 and Service.Port == 9090"), ["api-1"], "and still binds tighter than or");
});

t.test("an error quotes a bounded part of the input", async (t) => {
  const e = error(`${"a".repeat(1_000_000)} == x`);
  t.ok(e.message.length < 300, `${e.message.length} characters`);
  t.match(e.found, /^"a{40}\.\.\."$/, "the first 40 characters of the offending word");
});
