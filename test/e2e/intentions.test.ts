// Intentions end to end: the real `meshproxy intention` CLI edits the dev control plane's
// intentions.json and running sidecars enforce the change on new connections, without a restart.
import t from "tap";
import { rename, writeFile, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { echoServer, runMeshproxy, startSidecar, tempDir, type LogLine, type Sidecar, type Teardown } from "../helpers/mesh.js";
import { echoes, metric, nextLog, pollUntil } from "../helpers/peers.js";

interface CliRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  /** performance.now() when the process exited: the change is on disk by then. */
  readonly exitAt: number;
}

async function intention(t: Teardown, dir: string, ...args: string[]): Promise<CliRun> {
  const p = runMeshproxy(t, ["intention", ...args, "-data-dir", dir]);
  let exitAt = 0;
  p.child.once("exit", () => (exitAt = performance.now()));
  const code = await p.exited;
  return { code, stdout: p.stdoutText(), stderr: p.stderrText(), exitAt };
}

/** A db sidecar in front of an echo app, and one client sidecar per name with upstream db. */
async function mesh(t: Teardown, clients: string[]): Promise<{ dir: string; db: Sidecar; up: Record<string, string>; appConnections: number[] }> {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  // When (Date.now()) db's sidecar opened each connection to the app: it does so for a connection
  // it let in, so the first after a change that allows is the moment the change was enforced.
  const appConnections: number[] = [];
  echo.server.on("connection", () => appConnections.push(Date.now()));
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`]);
  const up: Record<string, string> = {};
  for (const c of clients) up[c] = (await startSidecar(t, dir, ["-service", c, "-upstream", "db:0"])).upstreams["db"]!;
  return { dir, db, up, appConnections };
}

/**
 * The README's promise is about the sidecar: a change applies to new connections "within a
 * second". So it is measured on the product's side, from the moment the CLI's write landed
 * (intentions.json's mtime) to the moment db enforced it (its refusal's log timestamp, or its
 * first connection to the app), not from when this process saw the CLI exit to when a client
 * attempt it started happened to finish.
 */
const changedAt = async (dir: string) => (await stat(join(dir, "intentions.json"))).mtimeMs;
const logged = (l: LogLine) => Date.parse(String(l["@timestamp"]));

const refused = (source: string) => (l: LogLine) => l["@message"] === "inbound connection refused" && l["reason"] === "denied_by_intention" && l["source"] === source;

t.test("create -deny cuts new connections within a second, delete restores them, no restart", { timeout: 60_000 }, async (t) => {
  const { dir, db, up, appConnections } = await mesh(t, ["web"]);
  const web = up["web"]!;
  t.ok(await echoes(web), "web reaches db before any intention exists");
  const readyLines = () => db.logs.filter((l) => l["@message"] === "proxy ready").length;

  const denied = nextLog(db, refused("web"));
  const create = await intention(t, dir, "create", "-deny", "web", "db");
  t.equal(create.code, 0, `intention create exits 0 ${create.stderr}`);
  t.equal(create.stdout, "Created: web => db (deny)\n", "and says what it created");
  const createdAt = await changedAt(dir);
  const toDeny = await pollUntil(async () => !(await echoes(web, "ping\n", 1000)), 10_000, create.exitAt);
  t.not(toDeny, null, "a new connection from web fails after the deny");
  const line = await denied;
  const denyTook = logged(line) - createdAt;
  t.ok(denyTook < 1500, `db refused web ${denyTook.toFixed(0)} ms after the deny was written (< 1500)`);
  t.equal(line["detail"], "Matched L4 intention: web => db (deny)", "db logs the refusal with the matching intention");
  t.equal(line["destination"], "db", "and the destination");
  t.ok(((await metric(db.adminAddr, "meshproxy_inbound_rejected_total", { reason: "denied_by_intention" })) ?? 0) >= 1, "the denied_by_intention counter moved");

  const del = await intention(t, dir, "delete", "web", "db");
  t.equal(del.code, 0, `intention delete exits 0 ${del.stderr}`);
  t.equal(del.stdout, "Intention deleted: web => db\n", "and says what it deleted");
  const deletedAt = await changedAt(dir);
  const toAllow = await pollUntil(() => echoes(web, "ping\n", 1000), 10_000, del.exitAt);
  t.not(toAllow, null, "web reaches db again after the delete");
  const letIn = appConnections.find((at) => at >= deletedAt);
  t.ok(letIn !== undefined && letIn - deletedAt < 1500, `db let web through to the app ${letIn === undefined ? "never" : (letIn - deletedAt).toFixed(0)} ms after the delete was written (< 1500)`);

  t.equal(db.child.exitCode, null, "db sidecar is still the same running process");
  t.equal(readyLines(), 1, "and never restarted (one 'proxy ready')");
});

t.test("list, check and create without -replace", async (t) => {
  const dir = await tempDir(t);

  const empty = await intention(t, dir, "list");
  t.equal(empty.code, 0, "list on a fresh directory exits 0");
  t.match(empty.stdout, /^Source\s+Destination\s+Action\s+Precedence\s+Description\nDefault: allow /, "header and the default policy, no rows");

  t.equal((await intention(t, dir, "create", "-allow", "web", "db")).code, 0, "create -allow web db");
  const dup = await intention(t, dir, "create", "-deny", "web", "db");
  t.equal(dup.code, 1, "creating the same pair again without -replace fails");
  t.equal(dup.stderr, "meshproxy: an intention web => db (allow) already exists; use -replace to change it\n", "and says why and what to do");
  let check = await intention(t, dir, "check", "web", "db");
  t.equal(check.code, 0, "the refused create changed nothing: check web db exits 0 (allowed)");
  t.equal(check.stdout, "Allowed: Matched L4 intention: web => db (allow)\n", "check names the intention that matched");

  const rep = await intention(t, dir, "create", "-deny", "-replace", "web", "db");
  t.equal(rep.code, 0, "create -replace succeeds");
  check = await intention(t, dir, "check", "web", "db");
  t.equal(check.code, 2, "check web db now exits 2 (denied)");
  t.equal(check.stdout, "Denied: Matched L4 intention: web => db (deny)\n", "with the replaced intention");
  check = await intention(t, dir, "check", "api", "db");
  t.equal(check.code, 0, "an unrelated source falls to the default");
  t.equal(check.stdout, "Allowed: No intention matched; default policy is allow\n", "and says so");

  t.equal((await intention(t, dir, "create", "-deny", "*", "db", "-description", "lock down db")).code, 0, "create -deny * db with a description");
  t.equal((await intention(t, dir, "create", "-allow", "api", "*")).code, 0, "create -allow api *");
  const list = await intention(t, dir, "list");
  t.equal(list.code, 0, "list exits 0");
  const rows = list.stdout.trimEnd().split("\n").map((r) => r.split(/\s{2,}/));
  t.same(
    rows.slice(1, -1),
    [
      ["web", "=>", "db", "deny", "9"],
      ["*", "=>", "db", "deny", "8", "lock down db"],
      ["api", "=>", "*", "allow", "6"],
    ],
    "rows come in precedence order (exact 9, *→exact 8, exact→* 6) with descriptions",
  );
  t.match(rows.at(-1)?.join("  "), /^Default: allow \(set "default_action" in .*intentions\.json\)$/, "the last line names the default and the file");

  const gone = await intention(t, dir, "delete", "nobody", "db");
  t.equal(gone.code, 1, "deleting a pair that does not exist fails");
  t.match(gone.stderr, /^meshproxy: no intention nobody => db in .*intentions\.json\n$/, "and says which file it looked in");
});

t.test("wildcard precedence: -deny '*' db with -allow web db lets web in and keeps others out", { timeout: 60_000 }, async (t) => {
  const { dir, db, up } = await mesh(t, ["web", "api"]);
  t.ok(await echoes(up["api"]!), "api reaches db under the default policy");

  t.equal((await intention(t, dir, "create", "-allow", "web", "db")).code, 0, "create -allow web db");
  const apiRefused = nextLog(db, refused("api"));
  const deny = await intention(t, dir, "create", "-deny", "*", "db");
  t.equal(deny.code, 0, "create -deny * db");
  const deniedAt = await changedAt(dir);
  t.not(await pollUntil(async () => !(await echoes(up["api"]!, "ping\n", 1000)), 10_000, deny.exitAt), null, "api is refused after the wildcard deny");
  const refusal = await apiRefused;
  const took = logged(refusal) - deniedAt;
  t.ok(took < 1500, `db refused api ${took.toFixed(0)} ms after the wildcard deny was written (< 1500)`);
  t.equal(refusal["detail"], "Matched L4 intention: * => db (deny)", "db refused api by the wildcard intention");

  for (let i = 0; i < 3; i++) t.ok(await echoes(up["web"]!), `web still reaches db (connection ${i + 1}): exact beats wildcard`);
  t.notOk(db.logs.some(refused("web")), "db never refused web");
  t.equal((await intention(t, dir, "check", "web", "db")).code, 0, "check web db agrees: allowed");
  t.equal((await intention(t, dir, "check", "api", "db")).code, 2, "check api db agrees: denied");
});

t.test("a broken intentions.json keeps the previous intentions in force, is logged and counted", { timeout: 60_000 }, async (t) => {
  const { dir, db, up } = await mesh(t, ["web", "api"]);
  const file = join(dir, "intentions.json");
  const deny = await intention(t, dir, "create", "-deny", "api", "db");
  t.equal(deny.code, 0, "create -deny api db");
  t.not(await pollUntil(async () => !(await echoes(up["api"]!, "ping\n", 1000)), 10_000, deny.exitAt), null, "api is refused");

  const errors = async () => (await metric(db.adminAddr, "meshproxy_control_plane_errors_total", { control_plane: "dev", resource: "intentions" })) ?? 0;
  const isCpError = (l: LogLine) => l["@message"] === "control plane error; serving on the last good snapshot" && String(l["error"]).includes("intentions.json");
  const before = await errors();
  const broken = '{ "default_action": "allow", "intentions": [ { "source": "api", ';

  let logged = nextLog(db, isCpError);
  await writeFile(file, broken); // a hand edit gone wrong
  let line = await logged;
  t.match(String(line["error"]), /not valid JSON.*the previous intentions stay in force/, "db logs an error naming the problem");
  t.equal(line["@level"], "error", "at error level");
  const afterFirst = await errors();
  t.ok(afterFirst > before, `meshproxy_control_plane_errors_total{resource="intentions"} went from ${before} to ${afterFirst}`);
  t.notOk(await echoes(up["api"]!), "api is still refused: the previous intentions are in force, not the default allow");
  t.ok(await echoes(up["web"]!), "web still gets through: db keeps serving");
  const cliOnBroken = await intention(t, dir, "create", "-allow", "web", "db");
  t.equal(cliOnBroken.code, 1, "the CLI refuses to edit a broken file");
  t.equal(await readFile(file, "utf8"), broken, "and leaves the hand edit alone");

  // Fix it (an atomic write, as an editor that saves via rename does): the new policy applies.
  await writeFile(`${file}.tmp`, JSON.stringify({ default_action: "allow", intentions: [] }));
  await rename(`${file}.tmp`, file);
  t.not(await pollUntil(() => echoes(up["api"]!, "ping\n", 1000), 10_000), null, "after the fix the new (empty) policy applies: api gets through");

  // The same mistake again is a new problem and must be reported again.
  logged = nextLog(db, isCpError, 5000);
  await writeFile(file, broken);
  line = await logged;
  t.match(String(line["error"]), /not valid JSON/, "breaking the file again is logged again");
  t.ok((await errors()) > afterFirst, "and counted again");
  t.ok(await echoes(up["api"]!), "while the last good policy (allow api) stays in force");
});
