// The dev control plane's state directory as an attacker on the same machine meets it: a
// directory (or a file in it) another user owns or may write is refused by the proxy and by the
// CLI, exit 2, with the path, the problem and the command that fixes it; a CA key others may
// read likewise. And concurrent CLI edits never lose one.
import t from "tap";
import { chmod, chown, readFile, stat, utimes, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { ensureCa, openStateDir } from "../../src/controlplane/dev/state.js";
import { runMeshproxy, tempDir, type MeshProcess, type Teardown } from "../helpers/mesh.js";

const NOBODY = 65534;

/** A state directory that a proxy has used: layout, CA, intentions. */
async function usedStateDir(t: Teardown): Promise<string> {
  const dir = join(await tempDir(t), "state");
  await openStateDir(dir);
  await ensureCa(dir);
  return dir;
}

/** Exit code of a proxy that should refuse to start; "started" if it got as far as serving. */
async function proxyOutcome(p: MeshProcess): Promise<number | null | "started"> {
  return Promise.race([p.exited, p.waitForLog((l) => l["@message"] === "proxy ready", 20_000).then(() => "started" as const)]);
}

interface Case {
  readonly name: string;
  /** Makes the directory unsafe; returns the path the message must name. */
  readonly spoil: (dir: string) => Promise<string>;
  readonly problem: RegExp;
  /** The fix the message must print, given the path. */
  readonly fix: (path: string) => string;
}

const cases: Case[] = [
  {
    name: "the directory is owned by another user",
    spoil: async (dir) => (await chown(dir, NOBODY, NOBODY), dir),
    problem: /owned by uid 65534, not by the user running meshproxy \(uid 0\)/,
    fix: (p) => `run "chown -R 0 ${p}" (as root), or choose a -data-dir of your own`,
  },
  {
    name: "the directory is group-writable",
    spoil: async (dir) => (await chmod(dir, 0o770), dir),
    problem: /writable by its group \(mode 0770\)/,
    fix: (p) => `run "chmod go-w ${p}"`,
  },
  {
    name: "ca/ is world-writable",
    spoil: async (dir) => (await chmod(join(dir, "ca"), 0o757), join(dir, "ca")),
    problem: /writable by others \(mode 0757\)/,
    fix: (p) => `run "chmod go-w ${p}"`,
  },
  {
    name: "ca/ is owned by another user",
    spoil: async (dir) => (await chown(join(dir, "ca"), NOBODY, NOBODY), join(dir, "ca")),
    problem: /owned by uid 65534/,
    fix: (p) => `run "chown -R 0 ${p}"`,
  },
  {
    name: "the CA key is readable by the group",
    spoil: async (dir) => (await chmod(join(dir, "ca", "root.key"), 0o640), join(dir, "ca", "root.key")),
    problem: /the CA private key is readable by its group \(mode 0640\)/,
    fix: (p) => `run "chmod 600 ${p}"`,
  },
  {
    name: "intentions.json is writable by everyone",
    spoil: async (dir) => (await chmod(join(dir, "intentions.json"), 0o666), join(dir, "intentions.json")),
    problem: /writable by group and others \(mode 0666\)/,
    fix: (p) => `run "chmod go-w ${p}"`,
  },
  {
    name: "a config entry directory is owned by another user",
    spoil: async (dir) => (await chown(join(dir, "config", "service-router"), NOBODY, NOBODY), join(dir, "config", "service-router")),
    problem: /owned by uid 65534/,
    fix: (p) => `run "chown -R 0 ${p}"`,
  },
];

for (const c of cases) {
  t.test(`refused when ${c.name}: the proxy and the CLI exit 2 naming the path, the problem and the fix`, { timeout: 60_000 }, async (t) => {
    const dir = await usedStateDir(t);
    const path = await c.spoil(dir);
    const before = await readFile(join(dir, "intentions.json"), "utf8");

    const proxy = runMeshproxy(t, ["-service", "web", "-upstream", "db:0", "-data-dir", dir, "-log-json", "-admin-addr", "127.0.0.1:0"]);
    t.equal(await proxyOutcome(proxy), 2, "the proxy exits 2 instead of starting");
    const line = proxy.stderrText().split("\n").find((l) => l.startsWith("meshproxy: ")) ?? "";
    t.match(line, `${path}: `, `names the path: ${line}`);
    t.match(line, c.problem, "says what is wrong");
    t.match(line, c.fix(path), "prints the command that fixes it");

    const cli: Array<[string, string[]]> = [
      ["intention create", ["intention", "create", "-allow", "mallory", "db"]],
      ["intention list", ["intention", "list"]],
      ["config write", ["config", "write", join(dir, "..", "entry.json")]],
    ];
    await writeFile(join(dir, "..", "entry.json"), JSON.stringify({ Kind: "service-defaults", Name: "db", Protocol: "http" }));
    const runs = cli.map(([name, args]) => [name, runMeshproxy(t, [...args, "-data-dir", dir])] as const);
    for (const [name, p] of runs) {
      t.equal(await p.exited, 2, `${name} exits 2`);
      t.match(p.stderrText(), `meshproxy: data-dir: ${path}: `, `${name} names the path`);
      t.match(p.stderrText(), c.fix(path), `${name} prints the fix`);
    }
    t.equal(await readFile(join(dir, "intentions.json"), "utf8"), before, "intentions.json is untouched");
  });
}

t.test("a directory that is fine is used; a fresh one is made private", async (t) => {
  const parent = await tempDir(t);
  const dir = join(parent, "fresh");
  const p = runMeshproxy(t, ["intention", "list", "-data-dir", dir]);
  t.equal(await p.exited, 0, `a fresh directory works ${p.stderrText()}`);
  t.match(p.stdoutText(), /Default: allow/, "with the allow default, as before");
  t.equal((await stat(dir)).mode & 0o777, 0o700, "the directory is made 0700");
  t.equal((await stat(join(dir, "intentions.json"))).mode & 0o022, 0, "intentions.json is not group- or world-writable");
});

t.test("parallel writers: 20 intention creates at once, none lost", { timeout: 120_000 }, async (t) => {
  const dir = await usedStateDir(t);
  const sources = Array.from({ length: 20 }, (_, i) => `svc-${i}`);
  const runs = sources.map((s) => runMeshproxy(t, ["intention", "create", "-deny", s, "db", "-data-dir", dir]));
  const codes = await Promise.all(runs.map((r) => r.exited));
  t.same(codes, sources.map(() => 0), `every create exits 0 ${runs.map((r) => r.stderrText()).join("")}`);
  const written: unknown = JSON.parse(await readFile(join(dir, "intentions.json"), "utf8"));
  const got = typeof written === "object" && written !== null && "intentions" in written && Array.isArray(written.intentions) ? written.intentions.map((i: { source?: unknown }) => String(i.source)).sort() : [];
  t.same(got, [...sources].sort(), "all 20 intentions are in the file");
  const list = runMeshproxy(t, ["intention", "list", "-data-dir", dir]);
  t.equal(await list.exited, 0);
  t.equal(list.stdoutText().split("\n").filter((l) => /^svc-\d+\s+=>\s+db\s+deny\b/.test(l)).length, 20, "intention list shows all 20");
});

t.test("parallel writers: 20 config writes at once, all present", { timeout: 120_000 }, async (t) => {
  const dir = await usedStateDir(t);
  const parent = join(dir, "..");
  const names = Array.from({ length: 20 }, (_, i) => `svc-${i}`);
  for (const n of names) await writeFile(join(parent, `${n}.json`), JSON.stringify({ Kind: "service-defaults", Name: n, Protocol: "http" }));
  const runs = names.map((n) => runMeshproxy(t, ["config", "write", join(parent, `${n}.json`), "-data-dir", dir]));
  t.same(await Promise.all(runs.map((r) => r.exited)), names.map(() => 0), "every write exits 0");
  const list = runMeshproxy(t, ["config", "list", "-data-dir", dir]);
  t.equal(await list.exited, 0);
  t.same(list.stdoutText().trim().split("\n").sort(), names.map((n) => `service-defaults/${n}`).sort(), "all 20 entries are listed");
});

t.test("a lock left by a dead process, or one too old, is broken; the edit lands", { timeout: 60_000 }, async (t) => {
  const dir = await usedStateDir(t);
  const lock = join(dir, "intentions.json.lock");
  // A pid that surely is not running: a child that has exited.
  const child = spawn(process.execPath, ["-e", ""]);
  await once(child, "exit");
  await writeFile(lock, JSON.stringify({ pid: child.pid, host: hostname(), token: "dead" }));
  const p = runMeshproxy(t, ["intention", "create", "-deny", "web", "db", "-data-dir", dir]);
  t.equal(await p.exited, 0, `create succeeds past the dead holder's lock ${p.stderrText()}`);
  t.match(await readFile(join(dir, "intentions.json"), "utf8"), /"source": "web"/, "and its edit is in the file");

  // A live pid (this test) but an hour old: a holder in another pid namespace, or hung.
  await writeFile(lock, JSON.stringify({ pid: process.pid, host: hostname(), token: "old" }));
  const hourAgo = new Date(Date.now() - 3600_000);
  await utimes(lock, hourAgo, hourAgo);
  const q = runMeshproxy(t, ["intention", "create", "-deny", "api", "db", "-data-dir", dir]);
  t.equal(await q.exited, 0, `create succeeds past an old lock ${q.stderrText()}`);
  t.match(await readFile(join(dir, "intentions.json"), "utf8"), /"source": "api"/, "and its edit is in the file");
  t.equal(await readFile(lock, "utf8").catch(() => "gone"), "gone", "no lock is left behind");
});
