// Arbitraries shared by the parser fuzz tests: a valid JSON document with one or more of its
// values replaced by what an attacker or a typo would put there (a field removed, the wrong type,
// a huge or exotic string, a deep nest, a key that means something to JavaScript), and a timing
// check for "this parser is linear".
import fc from "fast-check";
import type { Test } from "tap";
import { fastestCpuMs } from "../helpers/cpu-time.js";

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/**
 * `[[[…]]]` or `{"a":{"a":…}}` `depth` levels deep, built without recursion. It names itself for
 * fast-check's report, whose printer would otherwise overflow the stack on it.
 */
export function deepNest(depth: number, kind: "array" | "object"): Json {
  let v: Json = "x";
  for (let i = 0; i < depth; i++) v = kind === "array" ? [v] : { a: v };
  Object.defineProperty(v, fc.toStringMethod, { value: () => `deepNest(${depth}, "${kind}")`, enumerable: false });
  return v;
}

/** Values that are wrong in some way for almost any field. */
export const hostileValue: fc.Arbitrary<Json> = fc.oneof(
  fc.constantFrom<Json>(null, true, false, 0, -1, 1.5, 1e308, -0, "", " ", "\u0000", "\u{1F600}", "\uD800", "__proto__", "constructor", "toString", "NaN", "-1", "9".repeat(400), [], {}, [null], { "": null }),
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.integer().map((n): Json => n),
  fc.double({ noNaN: true, noDefaultInfinity: true }).map((n): Json => n),
  fc.integer({ min: 1, max: 200_000 }).map((n): Json => "a".repeat(n)),
  fc.integer({ min: 1, max: 20_000 }).map((n) => deepNest(n, "array")),
  fc.integer({ min: 1, max: 20_000 }).map((n) => deepNest(n, "object")),
  fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.parse(JSON.stringify(v)) as Json),
);

/** Keys JavaScript treats specially, plus a near-miss of a real one. */
const hostileKey = fc.oneof(fc.constantFrom("__proto__", "constructor", "prototype", "toString", "hasOwnProperty", "", "\u0000"), fc.string({ unit: "binary", maxLength: 12 }));

type Path = readonly (string | number)[];

function paths(v: Json, at: Path = [], out: Path[] = []): Path[] {
  out.push(at);
  if (Array.isArray(v)) v.forEach((x, i) => paths(x, [...at, i], out));
  else if (v !== null && typeof v === "object") for (const [k, x] of Object.entries(v)) paths(x, [...at, k], out);
  return out;
}

type Mutation = { readonly op: "replace"; readonly value: Json } | { readonly op: "remove" } | { readonly op: "add"; readonly key: string; readonly value: Json } | { readonly op: "wrap" };

/** A copy of `v` with the mutation applied at `path` (the root itself for an empty path). */
function apply(v: Json, path: Path, m: Mutation): Json {
  if (path.length === 0) {
    switch (m.op) {
      case "replace":
        return m.value;
      case "remove":
        return null;
      case "wrap":
        return [v];
      case "add":
        if (v !== null && typeof v === "object" && !Array.isArray(v)) return withKey(v, m.key, m.value);
        return Array.isArray(v) ? [...v, m.value] : m.value;
    }
  }
  const [head, ...rest] = path;
  if (Array.isArray(v) && typeof head === "number") {
    const copy = [...v];
    if (rest.length === 0 && m.op === "remove") copy.splice(head, 1);
    else copy[head] = apply(v[head] ?? null, rest, m);
    return copy;
  }
  if (v !== null && typeof v === "object" && !Array.isArray(v) && typeof head === "string") {
    if (rest.length === 0 && m.op === "remove") {
      const copy: { [k: string]: Json } = {};
      for (const [k, x] of Object.entries(v)) if (k !== head) copy[k] = x;
      return copy;
    }
    return withKey(v, head, apply(v[head] ?? null, rest, m));
  }
  return v;
}

/** Own property even for `__proto__`, as JSON.parse makes it. */
function withKey(o: { [k: string]: Json }, key: string, value: Json): { [k: string]: Json } {
  const copy: { [k: string]: Json } = {};
  for (const [k, x] of Object.entries(o)) Object.defineProperty(copy, k, { value: x, enumerable: true, writable: true, configurable: true });
  Object.defineProperty(copy, key, { value, enumerable: true, writable: true, configurable: true });
  return copy;
}

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 5, arbitrary: hostileValue.map((value): Mutation => ({ op: "replace", value })) },
  { weight: 2, arbitrary: fc.constant<Mutation>({ op: "remove" }) },
  { weight: 2, arbitrary: fc.tuple(hostileKey, hostileValue).map(([key, value]): Mutation => ({ op: "add", key, value })) },
  { weight: 1, arbitrary: fc.constant<Mutation>({ op: "wrap" }) },
);

/** `valid` with one to three of its values (at any depth) mutated. */
export function mutated(valid: Json): fc.Arbitrary<Json> {
  const all = paths(valid);
  const step = fc.tuple(fc.integer({ min: 0, max: all.length - 1 }), mutation);
  return fc.array(step, { minLength: 1, maxLength: 3 }).map((steps) => {
    let v = valid;
    // Paths are taken from the original; after an earlier step one may lead nowhere, which
    // `apply` treats as a no-op.
    for (const [i, m] of steps) v = apply(v, all[i] ?? [], m);
    return v;
  });
}

class Raw {
  constructor(readonly text: string) {}
}

/** JSON.stringify without recursion, so a `deepNest` value can be written out as a file's text. */
export function jsonText(v: Json): string {
  const out: string[] = [];
  const stack: (Json | Raw)[] = [v];
  for (let x = stack.pop(); x !== undefined; x = stack.pop()) {
    if (x instanceof Raw) out.push(x.text);
    else if (Array.isArray(x)) {
      out.push("[");
      stack.push(new Raw("]"));
      for (let i = x.length - 1; i >= 0; i--) {
        stack.push(x[i] ?? null);
        if (i > 0) stack.push(new Raw(","));
      }
    } else if (x !== null && typeof x === "object") {
      out.push("{");
      stack.push(new Raw("}"));
      const entries = Object.entries(x);
      for (let i = entries.length - 1; i >= 0; i--) {
        const [k, val] = entries[i] ?? ["", null];
        stack.push(val, new Raw(`${JSON.stringify(k)}:`));
        if (i > 0) stack.push(new Raw(","));
      }
    } else out.push(JSON.stringify(x));
  }
  return out.join("");
}

/**
 * Asserts that `run` on an input of size 16n costs roughly 16x what size n does, not 256x. The
 * bound is 80x plus 30 ms: past a few megabytes of live objects even a plain Map fill grows
 * 30x for 16x here (caches, GC); a quadratic parser still fails it by a factor of three. Timed
 * in CPU time (helpers/cpu-time.ts), so a loaded machine does not stretch the large run.
 */
export function assertLinear(t: Test, what: string, make: (n: number) => string, run: (input: string) => void, n: number): void {
  const small = make(n);
  const large = make(16 * n);
  run(small); // warm up the JIT
  const a = fastestCpuMs(() => run(small));
  const b = fastestCpuMs(() => run(large));
  t.ok(b < 80 * a + 30, `${what}: ${small.length} chars in ${a.toFixed(2)} ms, ${large.length} in ${b.toFixed(2)} ms`);
}
