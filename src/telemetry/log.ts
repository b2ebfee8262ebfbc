// Leveled logging, one line per event: hclog-like text by default, JSON with -log-json; on
// stderr by default (where Consul and Envoy log), on stdout with -log-dest stdout (a container's
// log collector reads one stream, and "JSON logs on stdout" is what it is usually set up for).
// Fields are passed separately from the message so JSON output stays machine-readable.

export const LEVELS = ["trace", "debug", "info", "warn", "error"] as const;
export type Level = (typeof LEVELS)[number];

export type Fields = Readonly<Record<string, string | number | boolean | null | undefined>>;

export interface Logger {
  trace(msg: string, fields?: Fields): void;
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  enabled(level: Level): boolean;
  child(name: string): Logger;
}

export function isLevel(s: string): s is Level {
  return (LEVELS as readonly string[]).includes(s);
}

/** Accepts Consul's spellings too (`INFO`, `warning`, `err`). */
export function parseLevel(s: string): Level | null {
  const l = s.toLowerCase();
  if (l === "warning") return "warn";
  if (l === "err") return "error";
  return isLevel(l) ? l : null;
}

interface Sink {
  level: number;
  json: boolean;
  write: (line: string) => void;
}

class SinkLogger implements Logger {
  constructor(
    private readonly sink: Sink,
    private readonly name: string,
  ) {}

  enabled(level: Level): boolean {
    return LEVELS.indexOf(level) >= this.sink.level;
  }

  child(name: string): Logger {
    return new SinkLogger(this.sink, this.name ? `${this.name}.${name}` : name);
  }

  private log(level: Level, msg: string, fields?: Fields): void {
    if (!this.enabled(level)) return;
    const ts = new Date().toISOString();
    if (this.sink.json) {
      this.sink.write(JSON.stringify({ "@timestamp": ts, "@level": level, "@module": this.name, "@message": msg, ...fields }) + "\n");
      return;
    }
    let line = `${ts} [${level.toUpperCase()}]${level.length === 4 ? " " : ""} ${this.name}: ${msg}`;
    if (fields) {
      for (const [k, v] of Object.entries(fields)) {
        if (v === undefined) continue;
        const s = String(v);
        line += /[\s"=]/.test(s) || s === "" ? ` ${k}=${JSON.stringify(s)}` : ` ${k}=${s}`;
      }
    }
    this.sink.write(line + "\n");
  }

  trace(msg: string, fields?: Fields): void {
    this.log("trace", msg, fields);
  }
  debug(msg: string, fields?: Fields): void {
    this.log("debug", msg, fields);
  }
  info(msg: string, fields?: Fields): void {
    this.log("info", msg, fields);
  }
  warn(msg: string, fields?: Fields): void {
    this.log("warn", msg, fields);
  }
  error(msg: string, fields?: Fields): void {
    this.log("error", msg, fields);
  }
}

/** Where the process's log lines go (-log-dest). */
export const LOG_DESTINATIONS = ["stderr", "stdout"] as const;
export type LogDestination = (typeof LOG_DESTINATIONS)[number];

export function parseLogDestination(s: string): LogDestination | null {
  return LOG_DESTINATIONS.find((d) => d === s.toLowerCase()) ?? null;
}

export interface LogOptions {
  level?: Level;
  json?: boolean;
  /** Default stderr; ignored when `write` is given. */
  dest?: LogDestination;
  write?: (line: string) => void;
}

/** Changing the level at run time (admin POST /logging): every child logger follows. */
export interface LevelControl {
  setLevel(level: Level): void;
  level(): Level;
}

/** The root logger, plus a handle to change its level at run time (admin /logging). */
export function createLogger(opts: LogOptions = {}): Logger & LevelControl {
  const sink: Sink = {
    level: LEVELS.indexOf(opts.level ?? "info"),
    json: opts.json ?? false,
    write: opts.write ?? (opts.dest === "stdout" ? (line) => void process.stdout.write(line) : (line) => void process.stderr.write(line)),
  };
  const root = new SinkLogger(sink, "meshproxy");
  return Object.assign(root, {
    setLevel: (level: Level) => void (sink.level = LEVELS.indexOf(level)),
    level: () => LEVELS[sink.level] ?? "info",
  });
}

export const silentLogger: Logger = createLogger({ level: "error", write: () => {} });

/**
 * The rejection handler for work started where no caller can take its failure (a timer, a
 * signal, an event): the failure is logged with what was being done, never left as an
 * unhandled rejection (which would end the process) and never dropped unseen.
 */
export function logRejection(log: Logger, what: string, level: "debug" | "warn" | "error" = "error"): (e: unknown) => void {
  return (e) => log[level](`${what} failed`, { error: e instanceof Error ? e.message : String(e) });
}
