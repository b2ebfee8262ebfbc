// Matchers shared by service-router routes and L7 intention permissions. Consul hands both to
// Envoy as the same HeaderMatcher / path matcher / `:method` regex, so both must agree on every
// edge case; keeping one implementation is how they stay in agreement.
// Everything is compiled once per Snapshot; the per-request functions allocate nothing.
import type { HeaderMatch, PathMatch } from "../config/http.js";

/** A bad matcher; `field` is relative to the matcher's owner, e.g. `match.headers[0].regex`. */
export class MatchCompileError extends Error {
  constructor(
    readonly field: string,
    readonly reason: string,
  ) {
    super(`${field}: ${reason}`);
    this.name = "MatchCompileError";
  }
}

/** The only part of a request the shared matchers read. */
export interface HeaderSource {
  /** `name` is lower-case; repeated field lines arrive as one comma-joined value, as Envoy matches them. */
  header(name: string): string | undefined;
}

// RE2 (what Envoy's safe_regex and Go's regexp run) has no lookaround and no backreferences;
// JS has both. Rejecting them keeps "accepted here" equal to "accepted by Envoy", and keeps out
// the constructs that make JS regexes backtrack exponentially.
const LOOKAROUND = ["(?=", "(?!", "(?<=", "(?<!"];

/**
 * Compiles an RE2-syntax pattern to a JS RegExp. `anchored` gives a full match (Envoy's
 * safe_regex); otherwise it is a search (Go's regexp.MatchString, as go-bexpr uses).
 * A leading RE2 flag group `(?i)`, `(?s)`, `(?m)` becomes a JS flag, `(?P<name>` becomes
 * `(?<name>`; scoped flag groups such as `(?i:...)` are rejected. Throws an Error saying what is wrong.
 */
export function compileRegex(source: string, anchored: boolean): RegExp {
  let body = source;
  let flags = "";
  const lead = /^\(\?([imsU]+)\)/.exec(body);
  if (lead !== null) {
    const given = lead[1] ?? "";
    if (given.includes("U")) throw new Error("the ungreedy flag (?U) is not supported");
    flags = [...new Set(given)].join("");
    body = body.slice(lead[0].length);
  }
  let out = "";
  let inClass = false;
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    if (c === "\\") {
      const n = body[i + 1] ?? "";
      if (!inClass && ((n >= "1" && n <= "9") || n === "k")) throw new Error(`backreferences (\\${n}) are not supported (RE2 syntax)`);
      out += c + n;
      i++;
      continue;
    }
    if (inClass) {
      if (c === "]") inClass = false;
      out += c;
      continue;
    }
    if (c === "[") inClass = true;
    if (c === "(" && body[i + 1] === "?") {
      if (LOOKAROUND.some((l) => body.startsWith(l, i))) throw new Error("lookaround assertions are not supported (RE2 syntax)");
      if (body.startsWith("(?P<", i)) {
        out += "(?<";
        i += 3;
        continue;
      }
    }
    out += c;
  }
  // No `u` flag: RE2 accepts escaped punctuation such as `\-` outside a class, which `u` rejects.
  try {
    // Under (?m) `^`/`$` would be line anchors, so the full match uses input-boundary assertions.
    if (!anchored) return new RegExp(out, flags);
    return new RegExp(flags.includes("m") ? `(?<![\\s\\S])(?:${out})(?![\\s\\S])` : `^(?:${out})$`, flags);
  } catch (e) {
    throw new Error(e instanceof Error ? e.message : String(e));
  }
}

/** Wraps compileRegex's failure in a MatchCompileError naming the field. */
export function compileRegexField(source: string, field: string): RegExp {
  try {
    return compileRegex(source, true);
  } catch (e) {
    throw new MatchCompileError(field, `invalid regular expression ${JSON.stringify(source)}: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/** One shape for every kind keeps the per-request call sites monomorphic. */
export interface CompiledPathMatch {
  readonly kind: "any" | "exact" | "prefix" | "regex";
  readonly value: string;
  readonly re: RegExp | null;
}

const ANY_PATH: CompiledPathMatch = { kind: "any", value: "", re: null };

/** `field` names the PathMatch itself, e.g. `match.path`. */
export function compilePathMatch(p: PathMatch | undefined, field: string): CompiledPathMatch {
  if (p === undefined) return ANY_PATH;
  switch (p.kind) {
    case "exact":
    case "prefix":
      return { kind: p.kind, value: p.value, re: null };
    case "regex":
      return { kind: "regex", value: p.value, re: compileRegexField(p.value, `${field}.regex`) };
  }
}

/** `path` excludes the query string, as Envoy's path matchers see it. Case-sensitive, as Envoy. */
export function pathMatches(m: CompiledPathMatch, path: string): boolean {
  switch (m.kind) {
    case "any":
      return true;
    case "exact":
      return path === m.value;
    case "prefix":
      return path.startsWith(m.value);
    case "regex":
      return m.re !== null && m.re.test(path);
  }
}

export interface CompiledHeaderMatch {
  /** Lower-case. */
  readonly name: string;
  readonly kind: "present" | "exact" | "prefix" | "suffix" | "regex";
  readonly value: string;
  readonly re: RegExp | null;
  readonly invert: boolean;
}

/**
 * Consul allows exactly one of Present/Exact/Prefix/Suffix/Regex per header matcher; `present:
 * false` is Consul's zero value, i.e. not set. `field` names the matcher, e.g. `match.headers[2]`.
 */
export function compileHeaderMatch(h: HeaderMatch, field: string): CompiledHeaderMatch {
  if (typeof h.name !== "string" || h.name.length === 0) throw new MatchCompileError(`${field}.name`, "must be a non-empty header name");
  const set: string[] = [];
  if (h.present === true) set.push("present");
  if (h.exact !== undefined) set.push("exact");
  if (h.prefix !== undefined) set.push("prefix");
  if (h.suffix !== undefined) set.push("suffix");
  if (h.regex !== undefined) set.push("regex");
  if (set.length !== 1) {
    throw new MatchCompileError(field, `needs exactly one of present, exact, prefix, suffix, regex (has ${set.length === 0 ? "none" : set.join(", ")})`);
  }
  const name = h.name.toLowerCase();
  const invert = h.invert === true;
  if (h.present === true) return { name, kind: "present", value: "", re: null, invert };
  if (h.exact !== undefined) return { name, kind: "exact", value: h.exact, re: null, invert };
  if (h.prefix !== undefined) return { name, kind: "prefix", value: h.prefix, re: null, invert };
  if (h.suffix !== undefined) return { name, kind: "suffix", value: h.suffix, re: null, invert };
  const regex = h.regex ?? "";
  return { name, kind: "regex", value: regex, re: compileRegexField(regex, `${field}.regex`), invert };
}

/** `field` names the list, e.g. `match.headers`. */
export function compileHeaderMatches(hs: readonly HeaderMatch[], field: string): readonly CompiledHeaderMatch[] {
  return hs.map((h, i) => compileHeaderMatch(h, `${field}[${i}]`));
}

/**
 * Envoy's HeaderMatcher: a missing header fails every matcher except an inverted present
 * match — `invert` flips the result of matching a value, it does not turn "absent" into a
 * match (Envoy documents this; treat_missing_header_as_empty, which Consul never sets, is the
 * opt-out).
 */
export function headerMatches(m: CompiledHeaderMatch, value: string | undefined): boolean {
  if (value === undefined) return m.kind === "present" && m.invert;
  let r: boolean;
  switch (m.kind) {
    case "present":
      r = true;
      break;
    case "exact":
      r = value === m.value;
      break;
    case "prefix":
      r = value.startsWith(m.value);
      break;
    case "suffix":
      r = value.endsWith(m.value);
      break;
    case "regex":
      r = m.re !== null && m.re.test(value);
      break;
  }
  return r !== m.invert;
}

/** All must match (AND), as Envoy's route and RBAC matchers combine them. */
export function headersMatch(ms: readonly CompiledHeaderMatch[], req: HeaderSource): boolean {
  for (const m of ms) if (!headerMatches(m, req.header(m.name))) return false;
  return true;
}

/** Upper-cased once here; null means any method. */
export function compileMethods(methods: readonly string[]): ReadonlySet<string> | null {
  return methods.length === 0 ? null : new Set(methods.map((m) => m.toUpperCase()));
}

const LOWER = /[a-z]/;

export function methodMatches(set: ReadonlySet<string> | null, method: string): boolean {
  if (set === null || set.has(method)) return true;
  // node:http already upper-cases methods; the fallback only runs for other callers.
  return LOWER.test(method) && set.has(method.toUpperCase());
}
