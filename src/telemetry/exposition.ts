// Prometheus text exposition format 0.0.4, read strictly enough that whatever we pass on parses
// in Prometheus: a line it would reject makes the whole input invalid, because a scraper that
// meets one bad line drops the entire scrape, ours included.
// https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format

export type MetricType = "counter" | "gauge" | "histogram" | "summary" | "untyped";

const TYPES: readonly string[] = ["counter", "gauge", "histogram", "summary", "untyped"] satisfies MetricType[];

function isMetricType(s: string): s is MetricType {
  return TYPES.includes(s);
}

/** One metric family: its HELP and TYPE (as written) and its sample lines, in input order. */
export interface Family {
  readonly name: string;
  /** Null when the input had no TYPE line: the family is untyped and is written without one. */
  type: MetricType | null;
  /** The HELP text still escaped as on the wire, or null. */
  help: string | null;
  readonly samples: string[];
}

export class ExpositionError extends Error {
  constructor(
    readonly line: number,
    why: string,
  ) {
    super(`line ${line}: ${why}`);
    this.name = "ExpositionError";
  }
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;

function isDigit(c: number): boolean {
  return c >= 48 && c <= 57;
}

/** [a-zA-Z0-9_] and, in a metric name, `:`. Char codes: a regex per character made a page's parse mostly garbage. */
function isNameChar(c: number, colon: boolean): boolean {
  return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || isDigit(c) || c === 95 || (colon && c === 58);
}
// What Go's strconv.ParseFloat accepts in practice from exporters, minus hex floats. A sign
// goes with a number or Inf only: Go reads "+NaN" and "-nan" as syntax errors.
const FLOAT = /^(?:[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|inf(?:inity)?)|nan)$/i;
// Prometheus' lexer takes digits only (no sign), read with ParseInt into an int64.
const TIMESTAMP = /^\d+$/;
const MAX_TIMESTAMP = 2n ** 63n - 1n;

/** A literal written as a number (not Inf or NaN) that float64 cannot hold: Go's ParseFloat says ErrRange. */
function overflows(value: string): boolean {
  // The regex only for the rare non-finite value, not for every sample of every scrape.
  return !Number.isFinite(Number(value)) && !/inf|nan/i.test(value);
}

/** Names a family's samples can have. Histogram and summary samples carry suffixes. */
export function sampleNames(name: string, type: MetricType | null): string[] {
  if (type === "histogram") return [`${name}_bucket`, `${name}_sum`, `${name}_count`];
  if (type === "summary") return [name, `${name}_sum`, `${name}_count`];
  return [name];
}

/** Every name a family occupies in Prometheus: its own and its samples'. */
export function occupiedNames(f: Pick<Family, "name" | "type">): string[] {
  return [...new Set([f.name, ...sampleNames(f.name, f.type)])];
}

/**
 * Checks a sample line and returns its metric name. Labels: `name="value"`, comma separated,
 * values escaped with `\\`, `\"` and `\n` only, no label twice.
 */
function parseSample(line: string, n: number): string {
  let i = 0;
  while (i < line.length && isNameChar(line.charCodeAt(i), true)) i++;
  const name = line.slice(0, i);
  if (i === 0 || isDigit(line.charCodeAt(0))) throw new ExpositionError(n, `"${truncate(line)}" does not start with a metric name`);
  let j = i;
  while (line[j] === " " || line[j] === "\t") j++;
  const labelled = line[j] === "{";
  if (labelled) {
    i = j;
    i++;
    // Few labels per sample: a list is cheaper than a Set made for every line.
    const seen: string[] = [];
    for (;;) {
      while (line[i] === " " || line[i] === "\t") i++;
      if (line[i] === "}") break;
      const start = i;
      while (i < line.length && isNameChar(line.charCodeAt(i), false)) i++;
      const label = line.slice(start, i);
      if (i === start || isDigit(line.charCodeAt(start))) throw new ExpositionError(n, `${name}: bad label name at "${truncate(line.slice(start))}"`);
      // Prometheus adds __name__ from the metric name: a second one makes the sample invalid, and
      // one invalid sample fails the whole scrape.
      if (label === "__name__") throw new ExpositionError(n, `${name}: label "__name__" is the metric name; Prometheus refuses it as a label`);
      if (seen.includes(label)) throw new ExpositionError(n, `${name}: label "${label}" given twice`);
      seen.push(label);
      while (line[i] === " " || line[i] === "\t") i++;
      if (line[i] !== "=") throw new ExpositionError(n, `${name}: want = after label "${label}"`);
      i++;
      while (line[i] === " " || line[i] === "\t") i++;
      if (line[i] !== '"') throw new ExpositionError(n, `${name}: label "${label}": want a quoted value`);
      i++;
      for (;;) {
        const c = line[i];
        if (c === undefined) throw new ExpositionError(n, `${name}: label "${label}": unterminated value`);
        if (c === '"') break;
        if (c === "\\") {
          const e = line[i + 1];
          if (e !== "\\" && e !== '"' && e !== "n") throw new ExpositionError(n, `${name}: label "${label}": invalid escape \\${e ?? ""}`);
          i++;
        }
        i++;
      }
      i++;
      while (line[i] === " " || line[i] === "\t") i++;
      if (line[i] === ",") {
        i++;
        continue;
      }
      if (line[i] !== "}") throw new ExpositionError(n, `${name}: want , or } after label "${label}"`);
      break;
    }
    i++;
  }
  const rest = line.slice(i);
  if (!labelled && rest !== "" && rest[0] !== " " && rest[0] !== "\t") throw new ExpositionError(n, `${name}: want a space before the value`);
  // Spaces and tabs only: the line is passed on as it came, and Prometheus' lexer takes no other
  // blank (String.prototype.trim would also drop a vertical tab, a no-break space, a BOM).
  const value = rest.replace(/^[ \t]+|[ \t]+$/g, "");
  const fields = value.split(/[ \t]+/);
  if (fields.length < 1 || fields.length > 2 || fields[0] === "") throw new ExpositionError(n, `${name}: want "value" or "value timestamp", got "${truncate(value)}"`);
  if (!FLOAT.test(fields[0]!)) throw new ExpositionError(n, `${name}: "${truncate(fields[0]!)}" is not a number`);
  if (overflows(fields[0]!)) throw new ExpositionError(n, `${name}: "${truncate(fields[0]!)}" is out of float64 range`);
  if (fields[1] !== undefined && (!TIMESTAMP.test(fields[1]) || BigInt(fields[1]) > MAX_TIMESTAMP)) {
    throw new ExpositionError(n, `${name}: "${truncate(fields[1])}" is not a millisecond timestamp (0 to 2^63-1)`);
  }
  return name;
}

function truncate(s: string): string {
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/**
 * Parses an exposition into families in first-seen order. Samples of one family that were split
 * by other lines are gathered into it, so each family can be written whole. Comments other than
 * HELP and TYPE are dropped. Throws ExpositionError on the first line Prometheus would reject.
 */
export function parseExposition(text: string): Family[] {
  const families = new Map<string, Family>();
  // Sample name → the family it belongs to, for the suffixed names of histograms and summaries.
  const owner = new Map<string, Family>();
  const family = (name: string): Family => {
    let f = families.get(name);
    if (!f) {
      f = { name, type: null, help: null, samples: [] };
      families.set(name, f);
      owner.set(name, f);
    }
    return f;
  };
  const lines = text.split("\n");
  for (let k = 0; k < lines.length; k++) {
    const n = k + 1;
    const raw = lines[k]!;
    const line = raw.charCodeAt(raw.length - 1) === 13 ? raw.slice(0, -1) : raw;
    if (line.trim() === "") continue;
    if (line.startsWith("#")) {
      const m = /^#[ \t]+(HELP|TYPE)[ \t]+(\S+)(?:[ \t]+(.*))?$/.exec(line);
      if (!m) continue; // a plain comment
      const [, keyword, name, arg] = m;
      if (!METRIC_NAME.test(name!)) throw new ExpositionError(n, `# ${keyword}: "${truncate(name!)}" is not a metric name`);
      const f = family(name!);
      if (keyword === "HELP") {
        if (f.help !== null) throw new ExpositionError(n, `second # HELP for ${name}`);
        if (/\\(?![\\n])/.test((arg ?? "").replace(/\\\\/g, ""))) throw new ExpositionError(n, `# HELP ${name}: invalid escape; only \\\\ and \\n are allowed`);
        f.help = arg ?? "";
        continue;
      }
      const type = (arg ?? "").trim();
      if (!isMetricType(type)) throw new ExpositionError(n, `# TYPE ${name}: "${truncate(type)}" is not counter, gauge, histogram, summary or untyped`);
      if (f.type !== null) throw new ExpositionError(n, `second # TYPE for ${name}`);
      if (f.samples.length > 0) throw new ExpositionError(n, `# TYPE ${name} after its samples`);
      f.type = type;
      // A suffixed name another family already has (an untyped `x_count` before a summary `x`)
      // stays with that family, as Prometheus reads it.
      for (const s of sampleNames(name!, f.type)) if (!families.has(s) || s === name) owner.set(s, f);
      continue;
    }
    const name = parseSample(line, n);
    const f = owner.get(name) ?? family(name);
    f.samples.push(line);
  }
  return [...families.values()].filter((f) => f.samples.length > 0 || f.type !== null || f.help !== null);
}

/** Writes families back in the text format: HELP, TYPE, then the samples, each family whole. */
export function formatFamilies(families: Iterable<Family>): string {
  let out = "";
  for (const f of families) {
    if (f.help !== null) out += `# HELP ${f.name} ${f.help}\n`;
    if (f.type !== null) out += `# TYPE ${f.name} ${f.type}\n`;
    for (const s of f.samples) out += `${s}\n`;
  }
  return out;
}
