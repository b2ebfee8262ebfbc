// The URL parsers an app behind a sidecar might use, each asked which path a request target
// names: WHATWG URL and Node's legacy url.parse in-process, Python's urllib.parse and Go's
// net/url (ParseRequestURI, what net/http's server uses) in one child process each per batch.
// Go is compiled at test time; without `go` (Debian's golang-go) the Go view is skipped
// locally and the test fails in CI, where .ci/run installs it.
import { execFile, spawn, spawnSync } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse as legacyParse } from "node:url";
import { promisify } from "node:util";

/** Each parser's path for one target: raw (as the parser exposes it) or percent-decoded (bytes as latin1). */
export interface ParserViews {
  readonly whatwg: string | null;
  readonly legacy: string | null;
  readonly pythonSplit: string | null;
  /** urlparse, which also splits `;params` off the last segment. */
  readonly pythonParse: string | null;
  /** urllib.parse.unquote_to_bytes of urlsplit's path. */
  readonly pythonDecoded: string | null;
  /** net/url's URL.Path (decoded); undefined when Go is not available. */
  readonly goDecoded: string | null | undefined;
}

const PYTHON = String.raw`
import sys, json
from urllib.parse import urlsplit, urlparse, unquote_to_bytes
for line in sys.stdin:
    t = json.loads(line)
    try:
        s = urlsplit(t).path
        p = urlparse(t).path
        d = unquote_to_bytes(s).decode("latin-1")
        print(json.dumps([s, p, d]))
    except Exception as e:
        print(json.dumps(None))
`;

const GO = `package main

import (
	"bufio"
	"encoding/json"
	"net/url"
	"os"
)

func latin1(s string) string {
	r := make([]rune, len(s))
	for i := 0; i < len(s); i++ {
		r[i] = rune(s[i])
	}
	return string(r)
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<26)
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	for in.Scan() {
		var t string
		if json.Unmarshal(in.Bytes(), &t) != nil {
			enc.Encode(nil)
			continue
		}
		u, err := url.ParseRequestURI(t)
		if err != nil {
			enc.Encode(nil)
			continue
		}
		enc.Encode(latin1(u.Path))
	}
	out.Flush()
}
`;

/** Percent-decodes bytewise (latin1), as the decoded views are given. Bad escapes stay. */
export function pctDecode(s: string): string {
  return s.replace(/%([0-9a-fA-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}

function whatwg(t: string): string | null {
  try {
    return new URL(t, "http://app").pathname;
  } catch {
    return null;
  }
}

function legacy(t: string): string | null {
  try {
    return legacyParse(t).pathname;
  } catch {
    return null;
  }
}

async function runBatch(cmd: string, args: string[], targets: readonly string[]): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    child.once("error", reject);
    child.once("close", (code) => {
      if (code !== 0) return reject(new Error(`${cmd} exited ${code}: ${Buffer.concat(err).toString()}`));
      const lines = Buffer.concat(out).toString().split("\n").filter((l) => l !== "");
      if (lines.length !== targets.length) return reject(new Error(`${cmd} answered ${lines.length} lines for ${targets.length} targets`));
      resolve(lines.map((l) => JSON.parse(l) as unknown));
    });
    child.stdin.end(targets.map((x) => JSON.stringify(x)).join("\n") + "\n");
  });
}

function runOne(cmd: string, args: string[], target: string): unknown {
  const r = spawnSync(cmd, args, { input: JSON.stringify(target) + "\n" });
  if (r.status !== 0) throw new Error(`${cmd} exited ${r.status}: ${r.stderr.toString()}`);
  return JSON.parse(r.stdout.toString().trim()) as unknown;
}

function str(v: unknown): string | null {
  return typeof v === "string" ? v : null;
}

export class UrlParsers {
  private constructor(
    private readonly python: string[],
    private readonly goBinary: string | null,
  ) {}

  /** Whether Go's view is included. */
  get hasGo(): boolean {
    return this.goBinary !== null;
  }

  /** Prepares the child processes' programs; `dir` is removed by the caller. */
  static async start(dir: string): Promise<UrlParsers> {
    const py = join(dir, "parsers.py");
    await writeFile(py, PYTHON);
    const probe = spawnSync("python3", ["--version"]);
    if (probe.status !== 0) throw new Error("python3 is needed for the differential URL-parser test");
    let goBinary: string | null = null;
    const haveGo = spawnSync("go", ["version"]).status === 0;
    if (haveGo) {
      const src = join(dir, "parsers.go");
      await writeFile(src, GO);
      // A cache that outlives the run: the first build compiles net/url and friends (~10 s).
      const cache = join(tmpdir(), "meshproxy-test-gocache");
      await mkdir(cache, { recursive: true });
      const gopath = await mkdtemp(join(tmpdir(), "meshproxy-gopath-"));
      try {
        goBinary = join(dir, "parsers");
        await promisify(execFile)("go", ["build", "-o", goBinary, src], { env: { ...process.env, GOCACHE: cache, GOPATH: gopath, GO111MODULE: "off", GOFLAGS: "" } });
      } finally {
        await rm(gopath, { recursive: true, force: true });
      }
    } else if (process.env["CI"]) {
      throw new Error("`go` is not installed: the differential test needs Go's net/url in CI (apt-get install -y golang-go; .ci/run installs it)");
    }
    return new UrlParsers(["python3", py], goBinary);
  }

  /** Every parser's view of each target, one child process per parser for the whole batch. */
  async views(targets: readonly string[]): Promise<Map<string, ParserViews>> {
    const [cmd, ...args] = this.python;
    const [py, go] = await Promise.all([runBatch(cmd!, args, targets), this.goBinary ? runBatch(this.goBinary, [], targets) : Promise.resolve(null)]);
    const out = new Map<string, ParserViews>();
    targets.forEach((x, i) => out.set(x, this.assemble(x, py[i], go ? go[i] : undefined)));
    return out;
  }

  /** One target's views without batching (for shrunk counterexamples). */
  viewsOf(target: string): ParserViews {
    const [cmd, ...args] = this.python;
    return this.assemble(target, runOne(cmd!, args, target), this.goBinary ? runOne(this.goBinary, [], target) : undefined);
  }

  private assemble(target: string, py: unknown, go: unknown): ParserViews {
    const p = Array.isArray(py) ? py : [null, null, null];
    return {
      whatwg: whatwg(target),
      legacy: legacy(target),
      pythonSplit: str(p[0]),
      pythonParse: str(p[1]),
      pythonDecoded: str(p[2]),
      goDecoded: go === undefined ? undefined : str(go),
    };
  }
}
