// The subset of go-bexpr that service-resolver subset filters use, evaluated over the fields of
// a health ServiceEntry that a subset can reasonably select on. An expression is parsed and
// type-checked once (the schema is fixed, so an unknown selector or an operator the field does
// not support is a compile-time error, where go-bexpr would fail every evaluation), then
// evaluated per instance without allocating.
//
// Grammar (go-bexpr's, keywords lower-case):
//   or    := and ("or" and)*
//   and   := not ("and" not)*
//   not   := "not" not | "(" or ")" | match
//   match := selector ("==" | "!=") value | selector "is" ["not"] "empty"
//          | value ["not"] "in" selector | selector ["not"] ("contains" | "matches") value
//   selector := Ident ("." Ident | "." Digits | "[" string "]")*
//   value := bare word (an identifier path) | number | "double-quoted" | `raw`
// Deliberately left out: go-bexpr's JSON-pointer selectors ("/Service/Meta/x"), inline list
// selectors, and its ordering operators (<, >), which Consul's subset docs never use.
import { RegexError, compileRegex, type CompiledRegex } from "../../http/regex.js";

export interface FilterTarget {
  readonly service: {
    readonly meta: Readonly<Record<string, string>>;
    readonly tags: readonly string[];
    readonly id: string;
    readonly name: string;
    readonly address: string;
    readonly port: number;
  };
  readonly node: { readonly meta: Readonly<Record<string, string>>; readonly name: string; readonly datacenter: string };
}

/** A filter that cannot be compiled. `position` is the 0-based offset into the expression. */
export class FilterError extends Error {
  constructor(
    readonly position: number,
    readonly expected: string,
    readonly found: string,
  ) {
    super(`invalid filter at position ${position}: expected ${expected}, found ${found}`);
    this.name = "FilterError";
  }
}

type Predicate = (e: FilterTarget) => boolean;

type Field =
  | { readonly type: "string"; readonly get: (e: FilterTarget) => string }
  | { readonly type: "number"; readonly get: (e: FilterTarget) => number }
  | { readonly type: "list"; readonly get: (e: FilterTarget) => readonly string[] }
  | { readonly type: "map"; readonly get: (e: FilterTarget) => Readonly<Record<string, string>> }
  /** A map entry; undefined when the key is absent. */
  | { readonly type: "entry"; readonly get: (e: FilterTarget) => string | undefined };

// Own-property lookup: a key like "constructor" must not find Object.prototype's.
function entry(map: Readonly<Record<string, string>>, key: string): string | undefined {
  return Object.hasOwn(map, key) ? map[key] : undefined;
}

const SELECTORS = "Service.ID, Service.Service, Service.Address, Service.Port, Service.Tags, Service.Meta[.<key>], Node.Node, Node.Datacenter, Node.Meta[.<key>]";

function resolveSelector(path: readonly string[]): Field | null {
  const [root, field, key, ...rest] = path;
  if (rest.length > 0) return null;
  if (root === "Service") {
    if (key !== undefined && field !== "Meta") return null;
    switch (field) {
      case "ID":
        return { type: "string", get: (e) => e.service.id };
      case "Service":
        return { type: "string", get: (e) => e.service.name };
      case "Address":
        return { type: "string", get: (e) => e.service.address };
      case "Port":
        return { type: "number", get: (e) => e.service.port };
      case "Tags":
        return { type: "list", get: (e) => e.service.tags };
      case "Meta":
        return key === undefined ? { type: "map", get: (e) => e.service.meta } : { type: "entry", get: (e) => entry(e.service.meta, key) };
      default:
        return null;
    }
  }
  if (root === "Node") {
    if (key !== undefined && field !== "Meta") return null;
    switch (field) {
      case "Node":
        return { type: "string", get: (e) => e.node.name };
      case "Datacenter":
        return { type: "string", get: (e) => e.node.datacenter };
      case "Meta":
        return key === undefined ? { type: "map", get: (e) => e.node.meta } : { type: "entry", get: (e) => entry(e.node.meta, key) };
      default:
        return null;
    }
  }
  return null;
}

type Op = "==" | "!=" | "is empty" | "is not empty" | "in" | "not in" | "contains" | "not contains" | "matches" | "not matches";

interface Operand {
  readonly pos: number;
  /** Set when the operand is written as an identifier path (a selector, or a bare-word value). */
  readonly path: readonly string[] | null;
  /** The value it denotes as a value: the literal's contents, or the bare word as written. */
  readonly value: string;
}

const IDENT_START = /[a-zA-Z]/;
// go-bexpr's Identifier: [a-zA-Z][a-zA-Z0-9_/]*
const IDENT_CHAR = /[a-zA-Z0-9_/]/;
const DIGIT = /[0-9]/;
const SPACE = /[ \t\r\n]/;
const HEX = /^[0-9a-fA-F]*$/;
/** `"`, `\` and newline end a run of plain characters in a quoted string. */
const QUOTED_STOP: ReadonlySet<number> = new Set([0x22, 0x5c, 0x0a]);
/**
 * Parentheses and `not` nest the parser's recursion (and `not` the filter's); past this depth an
 * expression is refused rather than allowed to overflow the stack. Filters people write nest two
 * or three deep; go-bexpr has no explicit limit, only Go's growable stack.
 */
export const MAX_FILTER_NESTING = 256;
/** How much of the offending word an error quotes. */
const MAX_FOUND = 40;
const SIMPLE_ESCAPES: ReadonlyMap<string, string> = new Map([
  ["a", "\x07"],
  ["b", "\b"],
  ["f", "\f"],
  ["n", "\n"],
  ["r", "\r"],
  ["t", "\t"],
  ["v", "\v"],
  ["\\", "\\"],
  ['"', '"'],
]);

class Parser {
  private pos = 0;
  private depth = 0;

  constructor(private readonly src: string) {}

  parse(): Predicate {
    const p = this.or();
    this.skipSpace();
    if (this.pos < this.src.length) this.fail(this.src[this.pos] === ")" ? '"and", "or" or end of input (unmatched ")")' : '"and", "or" or end of input');
    return p;
  }

  private fail(expected: string, at = this.pos): never {
    throw new FilterError(at, expected, this.describe(at));
  }

  private describe(at: number): string {
    if (at >= this.src.length) return "end of input";
    const word = /^[a-zA-Z0-9_/]+/.exec(this.src.slice(at, at + MAX_FOUND + 1));
    const found = word !== null ? word[0] : this.src.slice(at, at + 1);
    return JSON.stringify(found.length > MAX_FOUND ? `${found.slice(0, MAX_FOUND)}...` : found);
  }

  private skipSpace(): void {
    while (this.pos < this.src.length && SPACE.test(this.src[this.pos] ?? "")) this.pos++;
  }

  /** True (and consumed) when `kw` stands at the cursor as a whole word. */
  private keyword(kw: string): boolean {
    if (!this.src.startsWith(kw, this.pos)) return false;
    const after = this.src[this.pos + kw.length];
    if (after !== undefined && IDENT_CHAR.test(after)) return false;
    this.pos += kw.length;
    return true;
  }

  /** A keyword ahead, after optional whitespace; the cursor moves only when it is there. */
  private peekKeyword(kw: string): boolean {
    const save = this.pos;
    this.skipSpace();
    if (this.keyword(kw)) return true;
    this.pos = save;
    return false;
  }

  // A chain of `or` (or `and`) is one flat list, not nested closures: a filter of 100,000 clauses
  // must not need 100,000 stack frames to evaluate.
  private or(): Predicate {
    const first = this.and();
    if (!this.peekKeyword("or")) return first;
    const all = [first];
    do all.push(this.and());
    while (this.peekKeyword("or"));
    return (e) => {
      for (const p of all) if (p(e)) return true;
      return false;
    };
  }

  private and(): Predicate {
    const first = this.not();
    if (!this.peekKeyword("and")) return first;
    const all = [first];
    do all.push(this.not());
    while (this.peekKeyword("and"));
    return (e) => {
      for (const p of all) if (!p(e)) return false;
      return true;
    };
  }

  private not(): Predicate {
    this.skipSpace();
    const start = this.pos;
    if (this.keyword("not")) {
      const inner = this.nested(start, () => this.not());
      return (e) => !inner(e);
    }
    if (this.src[this.pos] === "(") {
      const open = this.pos;
      this.pos++;
      const inner = this.nested(open, () => this.or());
      this.skipSpace();
      if (this.src[this.pos] !== ")") this.fail(`"and", "or" or ")" (to close "(" at position ${open})`);
      this.pos++;
      return inner;
    }
    return this.match();
  }

  private nested(at: number, parse: () => Predicate): Predicate {
    if (++this.depth > MAX_FILTER_NESTING) this.fail(`at most ${MAX_FILTER_NESTING} levels of parentheses and "not"`, at);
    const p = parse();
    this.depth--;
    return p;
  }

  private match(): Predicate {
    const left = this.operand('a selector, a value, "not" or "("');
    this.skipSpace();
    const opPos = this.pos;
    let op: Op;
    if (this.src.startsWith("==", this.pos)) {
      this.pos += 2;
      op = "==";
    } else if (this.src.startsWith("!=", this.pos)) {
      this.pos += 2;
      op = "!=";
    } else if (this.keyword("is")) {
      this.skipSpace();
      const negated = this.keyword("not");
      this.skipSpace();
      if (!this.keyword("empty")) this.fail(negated ? '"empty"' : '"empty" or "not empty"');
      op = negated ? "is not empty" : "is empty";
    } else if (this.keyword("in")) {
      op = "in";
    } else if (this.keyword("contains")) {
      op = "contains";
    } else if (this.keyword("matches")) {
      op = "matches";
    } else if (this.keyword("not")) {
      this.skipSpace();
      if (this.keyword("in")) op = "not in";
      else if (this.keyword("contains")) op = "not contains";
      else if (this.keyword("matches")) op = "not matches";
      else this.fail('"in", "contains" or "matches"');
    } else {
      this.fail('an operator: "==", "!=", "is empty", "is not empty", "in", "not in", "contains", "not contains", "matches" or "not matches"');
    }

    if (op === "in" || op === "not in") {
      // Value first: `v2 in Service.Tags` is `Service.Tags contains v2`.
      this.skipSpace();
      const selector = this.operand("a selector");
      return this.build(selector, op === "in" ? "contains" : "not contains", left, opPos);
    }
    if (op === "is empty" || op === "is not empty") return this.build(left, op, null, opPos);
    this.skipSpace();
    return this.build(left, op, this.operand("a value (a word, a number or a quoted string)"), opPos);
  }

  private operand(expected: string): Operand {
    const start = this.pos;
    const c = this.src[this.pos];
    if (c === '"') return { pos: start, path: null, value: this.quoted() };
    if (c === "`") {
      const end = this.src.indexOf("`", this.pos + 1);
      if (end === -1) this.fail("a closing \"`\" (unterminated raw string)", this.src.length);
      this.pos = end + 1;
      return { pos: start, path: null, value: this.src.slice(start + 1, end) };
    }
    if (c !== undefined && (DIGIT.test(c) || c === "-")) return { pos: start, path: null, value: this.number() };
    if (c !== undefined && IDENT_START.test(c)) return { pos: start, path: this.path(), value: this.src.slice(start, this.pos) };
    return this.fail(expected);
  }

  private ident(): string {
    const start = this.pos;
    if (!IDENT_START.test(this.src[this.pos] ?? "")) this.fail("an identifier");
    this.pos++;
    while (IDENT_CHAR.test(this.src[this.pos] ?? "")) this.pos++;
    return this.src.slice(start, this.pos);
  }

  private path(): string[] {
    const parts = [this.ident()];
    for (;;) {
      if (this.src[this.pos] === ".") {
        this.pos++;
        // go-bexpr also takes `.<digits>` (a list index), which is what makes `v1.2` a bare word.
        const start = this.pos;
        while (DIGIT.test(this.src[this.pos] ?? "")) this.pos++;
        if (this.pos > start) {
          parts.push(this.src.slice(start, this.pos));
        } else {
          parts.push(this.ident());
        }
      } else if (this.src[this.pos] === "[") {
        this.pos++;
        this.skipSpace();
        const c = this.src[this.pos];
        if (c !== '"' && c !== "`") this.fail("a quoted key inside [ ]");
        parts.push(this.operand("a quoted key").value);
        this.skipSpace();
        if (this.src[this.pos] !== "]") this.fail('"]"');
        this.pos++;
      } else {
        return parts;
      }
    }
  }

  private number(): string {
    const start = this.pos;
    if (this.src[this.pos] === "-") this.pos++;
    if (!DIGIT.test(this.src[this.pos] ?? "")) this.fail("a digit");
    if (this.src[this.pos] === "0") this.pos++;
    else while (DIGIT.test(this.src[this.pos] ?? "")) this.pos++;
    if (this.src[this.pos] === ".") {
      this.pos++;
      if (!DIGIT.test(this.src[this.pos] ?? "")) this.fail("a digit after the decimal point");
      while (DIGIT.test(this.src[this.pos] ?? "")) this.pos++;
    }
    // go-bexpr: a number must be followed by whitespace, ")" or the end (so `1abc` is an error).
    const after = this.src[this.pos];
    if (after !== undefined && after !== ")" && !SPACE.test(after)) this.fail("whitespace, \")\" or end of input after a number");
    return this.src.slice(start, this.pos);
  }

  /** A Go double-quoted string (strconv.Unquote's escapes). */
  private quoted(): string {
    const open = this.pos;
    this.pos++;
    let out = "";
    for (;;) {
      const c = this.src[this.pos];
      if (c === undefined) this.fail(`a closing '"' (string opened at position ${open})`);
      if (c === '"') {
        this.pos++;
        return out;
      }
      if (c === "\n") this.fail(`a closing '"' before the end of the line (string opened at position ${open})`);
      if (c !== "\\") {
        // The run up to the next quote, escape or newline in one slice, not a character at a time.
        const start = this.pos;
        while (this.pos < this.src.length && !QUOTED_STOP.has(this.src.charCodeAt(this.pos))) this.pos++;
        out += this.src.slice(start, this.pos);
        continue;
      }
      const esc = this.src[this.pos + 1];
      const simple = esc === undefined ? undefined : SIMPLE_ESCAPES.get(esc);
      if (simple !== undefined) {
        out += simple;
        this.pos += 2;
        continue;
      }
      const hexLen = esc === "x" ? 2 : esc === "u" ? 4 : esc === "U" ? 8 : 0;
      if (hexLen > 0) {
        const hex = this.src.slice(this.pos + 2, this.pos + 2 + hexLen);
        if (hex.length !== hexLen || !HEX.test(hex)) this.fail(`${hexLen} hex digits after \\${esc ?? ""}`, this.pos + 2);
        const cp = parseInt(hex, 16);
        if (cp > 0x10ffff) this.fail("a Unicode code point", this.pos + 2);
        out += String.fromCodePoint(cp);
        this.pos += 2 + hexLen;
        continue;
      }
      const oct = this.src.slice(this.pos + 1, this.pos + 4);
      if (/^[0-7]{3}$/.test(oct)) {
        const v = parseInt(oct, 8);
        if (v > 255) this.fail("an octal escape of at most \\377", this.pos + 1);
        out += String.fromCharCode(v);
        this.pos += 4;
        continue;
      }
      this.fail('a valid escape (\\n, \\t, \\", \\\\, \\xHH, \\uHHHH, ...)', this.pos + 1);
    }
  }

  private build(sel: Operand, op: Op, val: Operand | null, opPos: number): Predicate {
    if (sel.path === null) this.fail("a selector (e.g. Service.Meta.version)", sel.pos);
    const field = resolveSelector(sel.path);
    if (field === null) this.fail(`a known selector (${SELECTORS})`, sel.pos);
    const positive = this.positive(field, op, val, opPos, sel);
    const negated = op === "!=" || op === "is not empty" || op === "not contains" || op === "not matches";
    // For a missing map key go-bexpr answers false for ==, in, matches and is-not-empty and
    // true for their negations and is-empty; "positive" returns exactly that, so negating
    // it gives go-bexpr's answer for the negated operators too.
    return negated ? (e) => !positive(e) : positive;
  }

  private unsupported(field: Field, op: Op, opPos: number, sel: Operand): never {
    const ok: Record<Field["type"], string> = {
      string: "==, !=, is empty, in, contains, matches (and their negations)",
      entry: "==, !=, is empty, in, contains, matches (and their negations)",
      number: "== or !=",
      list: "is empty, in, contains (and their negations)",
      map: "is empty, in, contains (and their negations)",
    };
    return this.fail(`an operator ${sel.value} supports (${ok[field.type]}), not "${op}"`, opPos);
  }

  private positive(field: Field, op: Op, val: Operand | null, opPos: number, sel: Operand): Predicate {
    const v = val?.value ?? "";
    switch (op) {
      case "==":
      case "!=":
        switch (field.type) {
          case "string":
            return (e) => field.get(e) === v;
          case "entry":
            return (e) => field.get(e) === v;
          case "number": {
            // go-bexpr coerces the value to the field's type once; so do we.
            if (!/^-?[0-9]+$/.test(v)) this.fail(`an integer to compare with ${sel.value}`, val?.pos ?? opPos);
            const n = Number(v);
            return (e) => field.get(e) === n;
          }
          default:
            return this.unsupported(field, op, opPos, sel);
        }
      case "is empty":
      case "is not empty":
        switch (field.type) {
          case "string":
            return (e) => field.get(e).length === 0;
          case "entry":
            return (e) => (field.get(e) ?? "").length === 0;
          case "list":
            return (e) => field.get(e).length === 0;
          case "map":
            return (e) => Object.keys(field.get(e)).length === 0;
          default:
            return this.unsupported(field, op, opPos, sel);
        }
      case "in":
      case "not in":
      case "contains":
      case "not contains":
        switch (field.type) {
          case "string":
            return (e) => field.get(e).includes(v);
          case "entry":
            return (e) => field.get(e)?.includes(v) === true;
          case "list":
            return (e) => field.get(e).includes(v);
          case "map":
            return (e) => Object.hasOwn(field.get(e), v);
          default:
            return this.unsupported(field, op, opPos, sel);
        }
      case "matches":
      case "not matches": {
        if (field.type !== "string" && field.type !== "entry") return this.unsupported(field, op, opPos, sel);
        let re: CompiledRegex;
        try {
          // Go's regexp.MatchString: unanchored search. Go sets no program-size limit, and a
          // filter runs when endpoints change, not per request.
          re = compileRegex(v, { match: "search" });
        } catch (err) {
          if (err instanceof RegexError) return this.fail(`a valid regular expression (${err.reason})`, val?.pos ?? opPos);
          throw err;
        }
        if (field.type === "string") return (e) => re.test(field.get(e));
        return (e) => {
          const s = field.get(e);
          return s !== undefined && re.test(s);
        };
      }
    }
  }
}

/** Compiles a service-resolver subset Filter. Throws FilterError (with the position) if it is not valid. */
export function compileFilter(expr: string): (entry: FilterTarget) => boolean {
  return new Parser(expr).parse();
}
