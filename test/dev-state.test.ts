// The dev state directory's rules, in process: a new directory is laid out whole, a used one is
// never re-created (missing means deleted), the readers say which file and what to do, and the
// edit lock serialises concurrent read-modify-writes.
import t from "tap";
import { mkdir, readFile, readdir, rm, stat, symlink, writeFile } from "node:fs/promises";
import { execFileSync } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { join } from "node:path";
import { ENTRY_KINDS } from "../src/controlplane/chain/entries.js";
import { editIntentions, ensureCa, entryFile, openStateDir, readEntries, readIntentions, StateError } from "../src/controlplane/dev/state.js";
import { withLock } from "../src/controlplane/dev/lock.js";
import { registerSidecar } from "../src/controlplane/dev/sidecars.js";
import { tempDir } from "./helpers/mesh.js";

t.test("a new directory gets the whole layout and the allow default", async (t) => {
  const dir = join(await tempDir(t), "s");
  t.same(await openStateDir(dir), { created: true }, "laid out");
  t.same((await readdir(dir)).sort(), ["catalog", "config", "intentions.json"], "catalog/, config/, intentions.json");
  t.same((await readdir(join(dir, "config"))).sort(), [...ENTRY_KINDS].sort(), "every config entry kind has its directory");
  t.same(await readIntentions(dir), { defaultAction: "allow", intentions: [] }, "the allow default, written out");
  t.same(await openStateDir(dir), { created: false }, "opening it again changes nothing");
});

t.test("a hand-written intentions.json or a CA put in place before the first start is kept", async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, "intentions.json"), JSON.stringify({ default_action: "deny" }));
  await mkdir(join(dir, "ca"), { mode: 0o700 });
  await writeFile(join(dir, "ca", "marker"), "x");
  t.same(await openStateDir(dir), { created: true }, "still a new directory: laid out");
  t.equal((await readIntentions(dir)).defaultAction, "deny", "deny stays deny");
  t.same(await readdir(join(dir, "ca")), ["marker"], "ca/ untouched");
  t.same((await readEntries(dir)).problems, [], "and config/ is complete");
});

t.test("in a used directory, a missing intentions.json or config directory is an error, not a default", async (t) => {
  const dir = await tempDir(t);
  await openStateDir(dir);
  await ensureCa(dir);
  await rm(join(dir, "intentions.json"));
  t.same(await openStateDir(dir), { created: false }, "nothing is re-created");
  await t.rejects(readIntentions(dir), { name: "StateError", message: /intentions\.json: missing \(deleted\?\)\. .*nothing is allowed without it/ }, "the reader says it is missing");
  await t.rejects(editIntentions(dir, (p) => ({ policy: p, result: null })), StateError, "and an edit does not write a fresh allow-all file");
  await t.rejects(readFile(join(dir, "intentions.json")), { code: "ENOENT" }, "still missing");

  await rm(join(dir, "config", "service-router"), { recursive: true });
  const r = await readEntries(dir);
  t.match(r.problems.map((p) => p.message), [/config\/service-router: missing \(deleted\?\); restore it, or create it empty/], "a missing kind directory is a problem");
  await rm(join(dir, "config"), { recursive: true });
  t.match((await readEntries(dir)).problems.map((p) => p.message), [/\/config: missing \(deleted\?\)/], "a missing config/ is one problem");
  await mkdir(join(dir, "config"));
  t.equal((await readEntries(dir)).problems.length, ENTRY_KINDS.length, "an empty config/ still lacks its kinds");
});

t.test("a FIFO or a device in a state file's place is an error naming the file, never a read that waits for a writer", async (t) => {
  const dir = await tempDir(t);
  await openStateDir(dir);
  const intentions = join(dir, "intentions.json");
  await rm(intentions);
  execFileSync("mkfifo", [intentions]);
  const fifo = await Promise.race([readIntentions(dir).then(() => "read", (e: unknown) => e), sleep(5000).then(() => "stuck")]);
  t.match(fifo, { name: "StateError", message: /intentions\.json: cannot be read \(not a regular file \(a FIFO\); name a file\)/ }, "intentions.json a FIFO: refused at once");
  await rm(intentions);
  await symlink("/dev/zero", intentions);
  await t.rejects(readIntentions(dir), { name: "StateError", message: /intentions\.json: cannot be read \(not a regular file \(a device\)/ }, "a link to /dev/zero: refused, not read without end");
  await rm(intentions);
  await writeFile(intentions, JSON.stringify({ default_action: "deny" }));
  t.equal((await readIntentions(dir)).defaultAction, "deny", "a good file is read again");

  const entry = join(dir, "config", "service-defaults", "db.json");
  execFileSync("mkfifo", [entry]);
  const r = await Promise.race([readEntries(dir), sleep(5000).then(() => null)]);
  t.match(r?.problems.map((p) => p.message), [/db\.json: cannot be read \(not a regular file \(a FIFO\)/], "a config entry that is a FIFO is a problem of its own");
});

t.test("entry names become paths only when they are names", async (t) => {
  const dir = await tempDir(t);
  t.throws(() => entryFile(dir, "service-router", "../../intentions"), StateError, "no ..");
  t.throws(() => entryFile(dir, "service-router", "a/b"), StateError, "no /");
  t.equal(entryFile(dir, "proxy-defaults", "global"), join(dir, "config", "proxy-defaults", "global.json"));
});

t.test("the edit lock: 40 concurrent read-modify-writes in one process, none lost", async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, "counter");
  await writeFile(file, "0");
  await Promise.all(
    Array.from({ length: 40 }, () =>
      withLock(file, async () => {
        const n = Number(await readFile(file, "utf8"));
        await new Promise((r) => setImmediate(r)); // let the others try meanwhile
        await writeFile(file, String(n + 1));
      }),
    ),
  );
  t.equal(await readFile(file, "utf8"), "40", "every increment landed");
  t.same((await readdir(dir)).sort(), ["counter"], "no lock or temp file left behind");
});

t.test("the edit lock is released when the edit throws", async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, "f");
  await t.rejects(withLock(file, async () => Promise.reject(new Error("boom"))), /boom/);
  t.same(await readdir(dir), [], "no lock left");
  t.equal(await withLock(file, async () => 7), 7, "and the next edit takes it at once");
});

t.test("a new directory is private (0700) whichever write comes first, the sidecars/ listing included", async (t) => {
  if (process.platform === "win32") return;
  const base = await tempDir(t);
  const viaOpen = join(base, "opened");
  await openStateDir(viaOpen);
  t.equal((await stat(viaOpen)).mode & 0o777, 0o700, "openStateDir makes it 0700");
  // A sidecar lists its admin address before its control plane opens the directory.
  const viaSidecar = join(base, "listed");
  await registerSidecar(viaSidecar, { id: "web-sidecar-proxy-1", service: "web", admin: "127.0.0.1:19000", pid: process.pid });
  t.equal((await stat(viaSidecar)).mode & 0o777, 0o700, "registerSidecar makes it 0700 too (it was 0755)");
  t.same(await openStateDir(viaSidecar), { created: true }, "and it is then laid out, accepted as private");
});
