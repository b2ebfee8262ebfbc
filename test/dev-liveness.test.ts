// The dev catalog's health check: an instance is healthy while the process that registered it
// runs, and a pid alone does not say that. A thread id, a reused pid and a zombie all answer
// kill(pid, 0); each must read critical (the soak's hour of 503s came from a killed instance whose
// pid had become a thread of another sidecar).
import t from "tap";
import { spawn, spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { once } from "node:events";
import { writeFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { DevControlPlane } from "../src/controlplane/dev/dev.js";
import { openStateDir, parseCatalogEntry, registerInstance } from "../src/controlplane/dev/state.js";
import { ownPidNamespace, ownStartTime, processAlive } from "../src/controlplane/dev/process-identity.js";
import { listSidecars, sidecarsDir } from "../src/controlplane/dev/sidecars.js";
import { STALE_MS, withLock } from "../src/controlplane/dev/lock.js";
import { hostname } from "node:os";
import type { Snapshot } from "../src/config/snapshot.js";
import { createLogger } from "../src/telemetry/log.js";
import { tempDir } from "./helpers/mesh.js";

const ownStart = ownStartTime();
if (ownStart === undefined) throw new Error("this test needs /proc (Linux)");

/** Accepted by kill(pid, 0): the check the catalog used to trust. */
function answersSignalZero(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e instanceof Error && "code" in e && e.code === "EPERM";
  }
}

/** One of this process's threads that is not its main thread. */
function threadId(): number {
  const tid = readdirSync("/proc/self/task").map(Number).find((n) => n !== process.pid);
  if (tid === undefined) throw new Error("no second thread in /proc/self/task");
  return tid;
}

t.test("this process, with and without its start time, is alive", async (t) => {
  t.ok(processAlive({ pid: process.pid, startTime: ownStart }));
  t.ok(processAlive({ pid: process.pid }), "an entry without a start time (written where there is no /proc) keeps the pid check");
});

t.test("a thread id is not a process, though kill(tid, 0) succeeds", async (t) => {
  const tid = threadId();
  t.ok(answersSignalZero(tid), `kill(${tid}, 0) succeeds: the hole this closes`);
  t.notOk(processAlive({ pid: tid }), "a thread id without a start time");
  t.notOk(processAlive({ pid: tid, startTime: ownStart }), "a thread id with the process's own start time");
});

t.test("a live pid started at another time is another process (a reused pid)", async (t) => {
  t.notOk(processAlive({ pid: process.pid, startTime: ownStart + 1 }));
  t.notOk(processAlive({ pid: process.pid, startTime: 0 }));
});

t.test("a zombie is dead", async (t) => {
  // perl forks a child that exits at once, prints its pid and sleeps without ever reaping it. (A
  // shell that forked `sleep 0` and exec'd into a sleep once left no process at all to find, in
  // CI: the shell can reap its child before the exec.)
  const parent = spawn("perl", ["-e", '$| = 1; $SIG{CHLD} = "DEFAULT"; my $p = fork(); exit 0 unless $p; print "$p\n"; sleep 30'], { stdio: ["ignore", "pipe", "inherit"] });
  t.teardown(() => parent.kill("SIGKILL"));
  const [chunk] = (await once(parent.stdout, "data")) as [Buffer];
  const zombie = Number(chunk.toString().trim());
  t.ok(Number.isSafeInteger(zombie) && zombie > 0, `zombie pid ${zombie}`);
  const state = () => {
    try {
      const s = readFileSync(`/proc/${zombie}/stat`, "latin1");
      return s.slice(s.lastIndexOf(")") + 2).split(" ")[0];
    } catch {
      return "gone";
    }
  };
  // The child exits at once; its state turns Z when it has (polling /proc is the only signal).
  for (let i = 0; i < 500 && state() !== "Z"; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(state(), "Z", "the child is a zombie");
  t.ok(answersSignalZero(zombie), "kill(zombie, 0) succeeds");
  t.notOk(processAlive({ pid: zombie }));
});

t.test("a registration from another pid namespace cannot be judged here: it reads alive", async (t) => {
  // Two containers sharing a state directory each run meshproxy as pid 1 (README, "Two pods").
  const own = ownPidNamespace();
  if (own === undefined) throw new Error("this test needs /proc/self/ns/pid");
  t.match(own, /^pid:\[\d+\]$/, "this process's namespace is known");
  const dead = spawnSync("true").pid;
  t.ok(processAlive({ pid: dead, startTime: 1, pidNamespace: "pid:[1]" }), "a pid of another namespace, though no such pid is alive here");
  t.notOk(processAlive({ pid: dead, startTime: 1, pidNamespace: own }), "the same pid in this namespace is judged: dead");
});

t.test("a pid that is gone is dead", async (t) => {
  const dead = spawnSync("true").pid;
  t.notOk(processAlive({ pid: dead }));
  t.notOk(processAlive({ pid: dead, startTime: ownStart }));
});

t.test("the dev control plane lists only the instance whose process is the one that registered it", async (t) => {
  const dir = await tempDir(t);
  await openStateDir(dir);
  const base = { service: "db", address: "127.0.0.1", protocol: "tcp" as const, meta: {} };
  await registerInstance(dir, { ...base, id: "db-live", port: 1001, pid: process.pid, startTime: ownStart });
  await registerInstance(dir, { ...base, id: "db-thread", port: 1002, pid: threadId() });
  await registerInstance(dir, { ...base, id: "db-reused", port: 1003, pid: process.pid, startTime: ownStart - 1 });
  await registerInstance(dir, { ...base, id: "db-dead", port: 1004, pid: spawnSync("true").pid });
  const logger = createLogger({ level: "error", json: true, write: () => {} });
  const cp = new DevControlPlane({ dataDir: dir, request: { service: "web", upstreams: [{ name: "db", bind: { host: "127.0.0.1", port: 0 } }] }, logger, datacenter: "dc1", pollMs: 60_000 });
  let snapshot: Snapshot | null = null;
  await cp.start({ snapshot: (s) => (snapshot = snapshot ?? s), error: (e) => t.fail(`control plane error: ${e.message}`) });
  await cp.stop();
  if (snapshot === null) throw new Error("no snapshot");
  const s: Snapshot = snapshot;
  const endpoints = Object.values(s.clusters).flatMap((c) => c.endpoints);
  t.same(
    endpoints.map((e) => [e.id, e.healthy]).sort(),
    [["db-dead", false], ["db-live", true], ["db-reused", false], ["db-thread", false]],
  );
});

t.test("a catalog entry's startTime is a whole number or absent", async (t) => {
  const entry = { id: "a", service: "db", address: "127.0.0.1", port: 1, pid: 1, protocol: "tcp" };
  t.equal(parseCatalogEntry(JSON.stringify(entry), "f").startTime, undefined);
  t.equal(parseCatalogEntry(JSON.stringify({ ...entry, startTime: 42 }), "f").startTime, 42);
  t.throws(() => parseCatalogEntry(JSON.stringify({ ...entry, startTime: "42" }), "f"), { name: "StateError", message: /startTime must be a whole number/ });
  t.throws(() => parseCatalogEntry(JSON.stringify({ ...entry, startTime: -1 }), "f"), /startTime/);
  t.equal(parseCatalogEntry(JSON.stringify({ ...entry, pidNamespace: "pid:[4026531836]" }), "f").pidNamespace, "pid:[4026531836]");
  t.throws(() => parseCatalogEntry(JSON.stringify({ ...entry, pidNamespace: "../x" }), "f"), { name: "StateError", message: /pidNamespace must look like/ });
});

t.test("a sidecar record whose pid is now another process is reported stale and skipped", async (t) => {
  const dir = await tempDir(t);
  await mkdir(sidecarsDir(dir), { recursive: true });
  const rec = (id: string, extra: object) => writeFile(join(sidecarsDir(dir), `${id}.json`), JSON.stringify({ id, service: "web", admin: "127.0.0.1:19000", pid: process.pid, ...extra }));
  await rec("live", { startTime: ownStart });
  await rec("reused", { startTime: ownStart + 7 });
  await rec("thread", { pid: threadId() });
  const { sidecars, problems } = await listSidecars(dir);
  t.same(sidecars.map((s) => s.id), ["live"]);
  t.equal(problems.length, 2);
  t.match(problems.join("\n"), /reused\.json: stale \(process \d+ is gone or is another process now\)/);
});

t.test("a catalog entry whose process fields do not parse is not an instance: skipped and reported, never healthy", async (t) => {
  // Someone (or a bug) writes an entry that names a live process badly: it must not turn into a
  // healthy endpoint, nor hide the good one beside it.
  const dir = await tempDir(t);
  await openStateDir(dir);
  const base = { service: "db", address: "127.0.0.1", protocol: "tcp", meta: {}, pid: process.pid };
  await registerInstance(dir, { ...base, protocol: "tcp" as const, id: "db-live", port: 1001, startTime: ownStart });
  const catalog = join(dir, "catalog");
  await writeFile(join(catalog, "db-ns.json"), JSON.stringify({ ...base, id: "db-ns", port: 1002, pidNamespace: "../../proc/1/ns/pid" }));
  await writeFile(join(catalog, "db-start.json"), JSON.stringify({ ...base, id: "db-start", port: 1003, startTime: "when it started" }));
  await writeFile(join(catalog, "db-neg.json"), JSON.stringify({ ...base, id: "db-neg", port: 1004, startTime: -5 }));
  const errors: string[] = [];
  const logger = createLogger({ level: "error", json: true, write: () => {} });
  const cp = new DevControlPlane({ dataDir: dir, request: { service: "web", upstreams: [{ name: "db", bind: { host: "127.0.0.1", port: 0 } }] }, logger, datacenter: "dc1", pollMs: 60_000 });
  let snapshot: Snapshot | null = null;
  await cp.start({ snapshot: (s) => (snapshot = snapshot ?? s), error: (e) => void errors.push(e.message) });
  await cp.stop();
  if (snapshot === null) throw new Error("no snapshot");
  const s: Snapshot = snapshot;
  const endpoints = Object.values(s.clusters).flatMap((c) => c.endpoints);
  t.same(endpoints.map((e) => [e.id, e.healthy]), [["db-live", true]], "only the entry that parses is an instance");
  const all = errors.join("\n");
  t.match(all, /db-ns\.json: pidNamespace must look like/, "the bad namespace is reported with its file");
  t.match(all, /db-start\.json: startTime must be a whole number/, "the bad start time too");
  t.match(all, /db-neg\.json: startTime must be a whole number/, "and a negative one");
});

t.test("an intention lock whose holder names a thread id or a reused pid is broken at once, not after the stale age", async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, "intentions.json");
  for (const holder of [{ pid: threadId() }, { pid: process.pid, startTime: ownStart + 3 }]) {
    await writeFile(`${file}.lock`, JSON.stringify({ ...holder, host: hostname(), token: "someone-else" }));
    const started = Date.now();
    const got = await withLock(file, async () => "edited");
    const took = Date.now() - started;
    t.equal(got, "edited", `the edit ran (holder ${JSON.stringify(holder)})`);
    t.ok(took < STALE_MS / 2, `without waiting out the ${STALE_MS} ms stale age (${took} ms)`);
  }
});
