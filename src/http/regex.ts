// Every regular expression a user writes (service-router PathRegex, Header[].Regex and
// QueryParam[].Regex; L7 intention PathRegex and header Regex; go-bexpr's `matches`) runs on
// re2js, a port of Go's regexp: RE2 syntax exactly as Consul validates it and Envoy runs it,
// and matching in time linear in the input. A JS RegExp backtracks, so a pattern such as
// `/api/([a-z0-9]+)+/admin` would take seconds on a long path; on a proxy's request path that
// is a denial of service anyone who can send a request could trigger.
//
// re2js is loaded on the first pattern compiled, not at start: most sidecars never see a regex,
// and its ESM build costs ~10 MB of RSS on Node 20 the moment it is imported (its CommonJS
// build ~2.6 MB, measured; bench/PERF-LOG.md 2026-12-02 memory), so the CommonJS build is the
// one required, synchronously, because patterns are compiled inside synchronous Snapshot code.
import { createRequire } from "node:module";
import type * as Re2js from "re2js";
import type { RE2JS } from "re2js";

/** `require` as typed for the one package loaded through it: the types re2js ships for its CommonJS build. */
interface Re2jsRequire {
  (id: "re2js"): typeof Re2js;
}
const requireRe2js: Re2jsRequire = createRequire(import.meta.url);
let re2js: typeof Re2js | null = null;

/**
 * Envoy's default `re2.max_program_size.error_level`: a route or RBAC regex whose compiled
 * program is larger is refused. Matching costs O(input length x program size) in the worst
 * case, so this bound is what keeps a single regex from costing milliseconds per request on a
 * 16 KiB header (measured: a program of 2,400 took 130 ms on 16 KiB; 100 stays under 5 ms).
 * re2js counts a character class as one instruction where Envoy's C++ RE2 counts its UTF-8
 * byte ranges, so anything Envoy accepts is accepted here.
 */
export const ENVOY_MAX_PROGRAM_SIZE = 100;

/** How much of a pattern (or of re2js's message, which quotes it) an error repeats. */
const MAX_QUOTED = 120;

/** A pattern RE2 does not accept; `reason` says why, in Go's words plus a hint where one helps. */
export class RegexError extends Error {
  constructor(
    readonly pattern: string,
    readonly reason: string,
  ) {
    super(`invalid regular expression ${clip(JSON.stringify(pattern))}: ${reason}`);
    this.name = "RegexError";
  }
}

/** A compiled pattern; `test` is a full match or a search, as chosen when it was compiled. */
export interface CompiledRegex {
  readonly source: string;
  test(input: string): boolean;
}

/** Envoy's safe_regex: the pattern must match the whole input. */
class FullMatch implements CompiledRegex {
  constructor(
    readonly source: string,
    private readonly re: RE2JS,
  ) {}

  test(input: string): boolean {
    return this.re.testExact(input);
  }
}

/** Go's regexp.MatchString: a match anywhere in the input. */
class Search implements CompiledRegex {
  constructor(
    readonly source: string,
    private readonly re: RE2JS,
  ) {}

  test(input: string): boolean {
    return this.re.test(input);
  }
}

export interface RegexOptions {
  /** `full`: Envoy's safe_regex (route and RBAC matchers); `search`: Go's MatchString (go-bexpr). */
  readonly match: "full" | "search";
  /** Refuse a pattern whose program is larger; none when absent. */
  readonly maxProgramSize?: number;
}

/** Compiles an RE2 pattern. Throws RegexError for anything RE2 refuses, never anything else for a bad pattern. */
export function compileRegex(source: string, opts: RegexOptions): CompiledRegex {
  re2js ??= requireRe2js("re2js");
  let re: RE2JS;
  try {
    re = re2js.RE2JS.compile(source);
  } catch (e) {
    if (e instanceof re2js.RE2JSException) throw new RegexError(source, clip(e.message) + hint(e.message));
    // re2js refuses nesting deeper than 1,000 itself; this is the backstop should some other
    // shape still exhaust the stack.
    if (e instanceof RangeError) throw new RegexError(source, `too complex to compile (${e.message})`);
    throw e;
  }
  if (opts.maxProgramSize !== undefined) {
    const size = re.programSize();
    if (size > opts.maxProgramSize) {
      throw new RegexError(source, `RE2 program size ${size} is over the limit of ${opts.maxProgramSize} (Envoy's default re2.max_program_size.error_level); simplify the pattern`);
    }
  }
  return opts.match === "full" ? new FullMatch(source, re) : new Search(source, re);
}

/** What people porting a JS or PCRE pattern most often trip over, said plainly. */
function hint(message: string): string {
  if (/`\(\?[=!]|`\(\?<[=!]/.test(message)) return " (RE2 has no lookahead or lookbehind)";
  if (/`\\[1-9k]/.test(message)) return " (RE2 has no backreferences)";
  return "";
}

function clip(s: string): string {
  return s.length > MAX_QUOTED ? `${s.slice(0, MAX_QUOTED - 3)}...` : s;
}
