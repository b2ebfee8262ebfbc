// Matchers shared by service-router routes and L7 intention permissions. Consul hands both to
// Envoy as the same HeaderMatcher / path matcher / `:method` regex, so both must agree on every
// edge case; keeping one implementation is how they stay in agreement.
// Everything is compiled once per Snapshot; the per-request functions allocate nothing.
import type { HeaderMatch, PathMatch } from "../config/http.js";
import { ENVOY_MAX_PROGRAM_SIZE, RegexError, compileRegex, type CompiledRegex } from "./regex.js";

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

/**
 * A route or RBAC regex as Envoy's safe_regex runs it: a full match, at most Envoy's default
 * program size. Throws MatchCompileError naming the field.
 */
export function compileRegexField(source: string, field: string): CompiledRegex {
  try {
    return compileRegex(source, { match: "full", maxProgramSize: ENVOY_MAX_PROGRAM_SIZE });
  } catch (e) {
    if (e instanceof RegexError) throw new MatchCompileError(field, e.message);
    throw e;
  }
}

/**
 * ASCII letters only, as Envoy's ignore_case and case_sensitive: false compare (absl's
 * EqualsIgnoreCase). JavaScript's toLowerCase also folds Latin-1 letters, which Envoy does not.
 */
export function asciiLower(s: string): string {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 65 && c <= 90) return s.replace(/[A-Z]+/g, (m) => m.toLowerCase());
  }
  return s;
}

/** One shape for every kind keeps the per-request call sites monomorphic. */
export interface CompiledPathMatch {
  readonly kind: "any" | "exact" | "prefix" | "regex";
  /** ASCII lower-case when `fold`. */
  readonly value: string;
  readonly re: CompiledRegex | null;
  /** Compare without ASCII case (CaseInsensitive). */
  readonly fold: boolean;
}

const ANY_PATH: CompiledPathMatch = { kind: "any", value: "", re: null, fold: false };

/** `field` names the PathMatch itself, e.g. `match.path`. */
export function compilePathMatch(p: PathMatch | undefined, field: string): CompiledPathMatch {
  if (p === undefined) return ANY_PATH;
  switch (p.kind) {
    case "exact":
    case "prefix": {
      const fold = p.caseInsensitive === true;
      return { kind: p.kind, value: fold ? asciiLower(p.value) : p.value, re: null, fold };
    }
    case "regex":
      return { kind: "regex", value: p.value, re: compileRegexField(p.value, `${field}.regex`), fold: false };
  }
}

/** `path` excludes the query string, as Envoy's path matchers see it. Case-sensitive unless `fold`, as Envoy. */
export function pathMatches(m: CompiledPathMatch, path: string): boolean {
  switch (m.kind) {
    case "any":
      return true;
    case "exact":
      return (m.fold ? asciiLower(path) : path) === m.value;
    case "prefix":
      return (m.fold ? asciiLower(path) : path).startsWith(m.value);
    case "regex":
      return m.re !== null && m.re.test(path);
  }
}

export interface CompiledHeaderMatch {
  /** Lower-case. */
  readonly name: string;
  readonly kind: "present" | "exact" | "prefix" | "suffix" | "contains" | "regex";
  /** ASCII lower-case when `fold`. */
  readonly value: string;
  readonly re: CompiledRegex | null;
  readonly invert: boolean;
  /** Compare without ASCII case (IgnoreCase). */
  readonly fold: boolean;
}

/**
 * Consul allows exactly one of Present/Exact/Prefix/Suffix/Contains/Regex per header matcher;
 * `present: false` is Consul's zero value, i.e. not set. IgnoreCase is Envoy's StringMatcher
 * ignore_case, which has no meaning for present and none for a regex (Envoy ignores it there);
 * with either it is refused rather than read as a case-sensitive rule the writer did not mean.
 * `field` names the matcher, e.g. `match.headers[2]`.
 */
export function compileHeaderMatch(h: HeaderMatch, field: string): CompiledHeaderMatch {
  if (typeof h.name !== "string" || h.name.length === 0) throw new MatchCompileError(`${field}.name`, "must be a non-empty header name");
  const set: string[] = [];
  if (h.present === true) set.push("present");
  if (h.exact !== undefined) set.push("exact");
  if (h.prefix !== undefined) set.push("prefix");
  if (h.suffix !== undefined) set.push("suffix");
  if (h.contains !== undefined) set.push("contains");
  if (h.regex !== undefined) set.push("regex");
  if (set.length !== 1) {
    throw new MatchCompileError(field, `needs exactly one of present, exact, prefix, suffix, contains, regex (has ${set.length === 0 ? "none" : set.join(", ")})`);
  }
  const name = h.name.toLowerCase();
  const invert = h.invert === true;
  const fold = h.ignoreCase === true;
  if (fold && (h.present === true || h.regex !== undefined)) {
    throw new MatchCompileError(`${field}.ignore_case`, "applies to exact, prefix, suffix and contains only (write the regex case-insensitively, e.g. (?i))");
  }
  const text = (kind: "exact" | "prefix" | "suffix" | "contains", v: string): CompiledHeaderMatch => ({ name, kind, value: fold ? asciiLower(v) : v, re: null, invert, fold });
  if (h.present === true) return { name, kind: "present", value: "", re: null, invert, fold: false };
  if (h.exact !== undefined) return text("exact", h.exact);
  if (h.prefix !== undefined) return text("prefix", h.prefix);
  if (h.suffix !== undefined) return text("suffix", h.suffix);
  if (h.contains !== undefined) return text("contains", h.contains);
  const regex = h.regex ?? "";
  return { name, kind: "regex", value: regex, re: compileRegexField(regex, `${field}.regex`), invert, fold: false };
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
  const v = m.fold ? asciiLower(value) : value;
  let r: boolean;
  switch (m.kind) {
    case "present":
      r = true;
      break;
    case "exact":
      r = v === m.value;
      break;
    case "prefix":
      r = v.startsWith(m.value);
      break;
    case "suffix":
      r = v.endsWith(m.value);
      break;
    case "contains":
      r = v.includes(m.value);
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
