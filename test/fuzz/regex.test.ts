// Compiling arbitrary patterns gives a compiled regex or a MatchCompileError naming the field,
// never another exception and never a hang; a compiled regex answers true or false for any input,
// in time linear in the input; and on the syntax JS and RE2 share, the answers agree with a JS
// RegExp anchored the same way (full match for routes and intentions, search for bexpr).
import t from "tap";
import fc from "fast-check";
import { fuzzParams } from "./params.js";
import { assertLinear } from "./mutate.js";
import { MatchCompileError, compileRegexField } from "../../src/http/match.js";
import { compileRegex, type CompiledRegex } from "../../src/http/regex.js";
import { cpuMs } from "../helpers/cpu-time.js";

/** Pattern soup: metacharacters, escapes, flag groups and classes in random order. */
const PIECES = [
  "a", "b", "/", ".", "*", "+", "?", "|", "(", ")", "[", "]", "{", "}", "^", "$", "\\", "-", ",", "1", "0", ":", "<", ">", "=", "!",
  "(?i)", "(?s)", "(?m)", "(?U)", "(?i:", "(?P<n>", "(?<n>", "(?=", "(?<=", "\\1", "\\k<n>", "\\pL", "\\p{Greek}", "\\PN", "[[:alpha:]]",
  "[^", "\\Q", "\\E", "\\z", "\\A", "\\b", "\\B", "\\d", "\\w", "\\s", "\\x{41}", "\\x4", "{2}", "{1,3}", "{1001}", "{,2}", "é", "\u{1F600}", "\uD800",
];
const patternSoup = fc.array(fc.constantFrom(...PIECES), { maxLength: 24 }).map((p) => p.join(""));
const anyPattern = fc.oneof(patternSoup, fc.string({ unit: "binary", maxLength: 40 }));
const anyInput = fc.oneof(fc.string({ unit: "binary", maxLength: 60 }), fc.array(fc.constantFrom("a", "b", "/", "A", "é", "\n"), { maxLength: 40 }).map((c) => c.join("")));

function compileOrError(pattern: string): CompiledRegex | MatchCompileError {
  try {
    return compileRegexField(pattern, "match.path.regex");
  } catch (e) {
    if (e instanceof MatchCompileError) return e;
    throw e;
  }
}

t.test("any pattern compiles or is a MatchCompileError; a compiled one answers a boolean for any input", async (t) => {
  let compiled = 0;
  let refused = 0;
  fc.assert(
    fc.property(anyPattern, fc.array(anyInput, { maxLength: 4 }), (pattern, inputs) => {
      const start = process.cpuUsage();
      const r = compileOrError(pattern);
      if (r instanceof MatchCompileError) {
        refused++;
        if (r.field !== "match.path.regex" || !r.message.startsWith("match.path.regex: invalid regular expression")) return false;
      } else {
        compiled++;
        for (const s of inputs) if (typeof r.test(s) !== "boolean") return false;
        const search = compileRegex(pattern, { match: "search" });
        for (const s of inputs) if (typeof search.test(s) !== "boolean") return false;
      }
      const spent = process.cpuUsage(start);
      return spent.user + spent.system < 1_000_000; // a second of CPU time: what a loaded machine cannot stretch
    }),
    fuzzParams(),
  );
  t.ok(compiled > 0 && refused > 0, `both outcomes were exercised (${compiled} compiled, ${refused} refused)`);
});

/**
 * Patterns in the syntax JS and RE2 read the same way. Quantifiers go on single characters only:
 * a quantified group is where JS backtracks exponentially, and the comparison would hang on JS.
 */
const sharedSyntax: fc.Arbitrary<string> = fc.letrec<{ re: string; atom: string }>((tie) => ({
  atom: fc.oneof(
    { depthSize: "small", maxDepth: 2 },
    fc.tuple(fc.constantFrom("a", "b", "/", ".", "[ab]", "[^a]", "[a-z]", "\\d", "\\w", "\\/"), fc.constantFrom("", "", "*", "+", "?", "{2}", "{1,2}", "*?")).map(([a, q]) => a + q),
    tie("re").map((r) => `(?:${r})`),
    tie("re").map((r) => `(${r})`),
  ),
  re: fc.tuple(fc.array(tie("atom"), { minLength: 1, maxLength: 4 }), fc.boolean()).map(([parts, alt]) => parts.join(alt ? "|" : "")),
}))["re"];

t.test("on shared syntax, full match and search agree with an anchored and an unanchored JS RegExp", async (t) => {
  fc.assert(
    fc.property(sharedSyntax, fc.array(fc.constantFrom("a", "b", "/", "1", "c"), { maxLength: 8 }).map((c) => c.join("")), (pattern, input) => {
      const full = compileRegex(pattern, { match: "full" }).test(input);
      const search = compileRegex(pattern, { match: "search" }).test(input);
      return full === new RegExp(`^(?:${pattern})$`).test(input) && search === new RegExp(pattern).test(input);
    }),
    fuzzParams(),
  );
  t.pass("agreed");
});

t.test("matching is linear in the input, for patterns that backtrack exponentially in JS", async (t) => {
  // Each input contains the pattern's literals, so no shortcut can reject it without matching.
  const cases: [string, (n: number) => string][] = [
    ["/api/([a-z0-9]+)+/admin", (n) => `/api/${"a".repeat(n)}/admi`],
    ["(a|aa)+b", (n) => `${"a".repeat(n)}cb`],
    ["(a*)*b", (n) => `${"a".repeat(n)}cb`],
    ["(?:.*a){20}", (n) => `${"a".repeat(19)}${"b".repeat(n)}`],
    ["(\\w+\\s?)+$", (n) => `${"ab ".repeat(n / 3)}!`],
  ];
  for (const [pattern, make] of cases) {
    const full = compileRegexField(pattern, "f");
    const search = compileRegex(pattern, { match: "search" });
    assertLinear(t, `full match of ${pattern}`, make, (s) => void full.test(s), 20_000);
    assertLinear(t, `search of ${pattern}`, make, (s) => void search.test(s), 20_000);
  }
});

t.test("compiling is linear in the pattern", async (t) => {
  const compile = (p: string) => void compileRegex(p, { match: "search" });
  assertLinear(t, "a long literal", (n) => "x".repeat(n), compile, 5_000);
  assertLinear(t, "a long alternation", (n) => "ab|".repeat(n) + "c", compile, 2_000);
  assertLinear(t, "a long class", (n) => `[${"a-c".repeat(n)}]`, compile, 2_000);
  assertLinear(t, "many groups", (n) => "(?:a)".repeat(n), compile, 2_000);
  // re2js grows a little faster than linearly here (about 45x for 16x); a bound, not a ratio.
  const ms = cpuMs(() => compile("(?:".repeat(128_000) + ")".repeat(128_000)));
  t.ok(ms < 2_000, `256,000 characters of non-capturing nesting compile in ${ms.toFixed(0)} ms`);
  assertLinear(t, "refused: an unclosed group after a long prefix", (n) => `${"a".repeat(n)}(`, (p) => void compileOrError(p), 5_000);
});
