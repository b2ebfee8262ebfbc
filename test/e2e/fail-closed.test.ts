// Fail closed, end to end with real processes: a control plane whose first configuration cannot
// be read never serves (not ready, nothing listens, no byte reaches the app) and starts without a
// restart once the file is fixed; a file deleted while running keeps the last good intentions.
import t from "tap";
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { join } from "node:path";
import { createRootCa, issueLeaf } from "../../src/identity/ca.js";
import { serviceSpiffeId } from "../../src/identity/spiffe.js";
import { echoServer, runMeshproxy, startSidecar, tempDir, type LogLine, type MeshProcess, type Teardown } from "../helpers/mesh.js";
import { echoes, freePort, metric, nextLog, pollUntil } from "../helpers/peers.js";

const NOT_SERVING = "control plane error; not serving (not ready, no listeners) until the configuration is fixed";
const SERVING_LAST_GOOD = "control plane error; serving on the last good snapshot";

/** What a TCP client gets from `port`: "refused" (nothing listens) or the bytes it read. */
async function dial(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port });
    let got = "";
    s.setEncoding("utf8");
    s.on("data", (d: string) => (got += d));
    s.on("connect", () => s.end("hello?\n"));
    s.on("error", (e: NodeJS.ErrnoException) => resolve(e.code === "ECONNREFUSED" ? "refused" : `error ${e.code ?? e.message}`));
    s.on("close", () => resolve(got));
    s.setTimeout(5000, () => s.destroy());
  });
}

async function ready(adminAddr: string): Promise<number> {
  return (await fetch(`http://${adminAddr}/ready`)).status;
}

async function adminOf(p: MeshProcess): Promise<string> {
  return String((await p.waitForLog((l) => l["@message"] === "admin API listening"))["address"]);
}

/** Lays out a state directory the way a user's first command does. */
async function stateDir(t: Teardown): Promise<string> {
  const dir = await tempDir(t);
  const init = runMeshproxy(t, ["intention", "list", "-data-dir", dir]);
  if ((await init.exited) !== 0) throw new Error(`intention list failed: ${init.stderrText()}`);
  return dir;
}

/** Replaces a file the way editors save: a temp file renamed over it. */
async function save(file: string, text: string): Promise<void> {
  await writeFile(`${file}.tmp`, text);
  await rename(`${file}.tmp`, file);
}

t.test("dev: a default-deny intentions.json with a syntax error at startup serves nothing; the fix starts it with deny in force", { timeout: 60_000 }, async (t) => {
  const dir = await stateDir(t);
  const file = join(dir, "intentions.json");
  // Line 5 lacks the comma before it: the classic hand edit gone wrong.
  const broken = [
    "{",
    '  "default_action": "deny",',
    '  "intentions": [',
    '    { "source": "api", "destination": "db", "action": "allow" }',
    '    { "source": "ops", "destination": "db", "action": "allow" }',
    "  ]",
    "}",
    "",
  ].join("\n");
  await writeFile(file, broken);
  const echo = await echoServer(t);
  const [pub, up] = [await freePort(), await freePort()];
  const db = runMeshproxy(t, ["-service", "db", "-listen", `127.0.0.1:${pub}`, "-service-addr", `127.0.0.1:${echo.port}`, "-upstream", `cache:${up}`, "-data-dir", dir, "-log-json", "-admin-addr", "127.0.0.1:0"]);
  const admin = await adminOf(db);
  const err = await db.waitForLog((l) => l["@message"] === NOT_SERVING);
  t.equal(err["@level"], "error", "logged at error level");
  t.match(String(err["error"]), `${file}: not valid JSON (`, "the log names the file");
  t.match(String(err["error"]), /; line 5 column 5\)/, "and the line and column of the mistake");
  t.match(String(err["error"]), /the proxy is not serving \(not ready, no listeners\) until it is fixed$/, "and says what that means");

  t.equal(await ready(admin), 503, "/ready is 503");
  t.equal(await metric(admin, "envoy_server_state"), 3, "envoy_server_state is 3 (initializing)");
  t.ok(((await metric(admin, "meshproxy_control_plane_errors_total", { control_plane: "dev", resource: "intentions" })) ?? 0) >= 1, "meshproxy_control_plane_errors_total{resource=intentions} counts it");
  t.equal(await dial(pub), "refused", "the public listener refuses connections (nothing is bound)");
  t.equal(await dial(up), "refused", "the upstream listener refuses connections");
  t.equal(echo.connections(), 0, "no connection, so no byte, reached the app");
  t.notOk(db.logs.some((l) => l["@message"] === "proxy ready"), "never reported ready");
  t.notOk(db.logs.some((l) => l["@message"] === SERVING_LAST_GOOD), "never claims a last good snapshot it does not have");

  // The fix: the same policy, valid. The proxy starts on its own, within a couple of seconds.
  const fixedAt = performance.now();
  const readyLine = nextLog(db, (l) => l["@message"] === "proxy ready", 10_000);
  await save(file, broken.replace('"allow" }\n    {', '"allow" },\n    {'));
  const line = await readyLine;
  const took = performance.now() - fixedAt;
  t.ok(took < 3000, `ready ${took.toFixed(0)} ms after the fix (< 3000)`);
  t.equal(line["public"], `127.0.0.1:${pub}`, "listening where asked");
  t.equal(await ready(admin), 200, "/ready is 200");
  t.equal(db.child.exitCode, null, "the same process: no restart");

  // The deny default is in force: web has no intention, api has an allow.
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  const api = await startSidecar(t, dir, ["-service", "api", "-upstream", "db:0"]);
  const denied = nextLog(db, (l) => l["@message"] === "inbound connection refused" && l["source"] === "web");
  t.notOk(await echoes(web.upstreams["db"]!), "web is refused: the default deny applies");
  t.equal((await denied)["reason"], "denied_by_intention", "by intention");
  t.ok(await echoes(api.upstreams["db"]!), "api is allowed by its intention");
});

t.test("dev: intentions.json deleted while running keeps the last good intentions; nothing recreates it as allow-all", { timeout: 60_000 }, async (t) => {
  const dir = await stateDir(t);
  const file = join(dir, "intentions.json");
  await save(file, JSON.stringify({ default_action: "deny", intentions: [{ source: "api", destination: "db", action: "allow" }] }));
  const echo = await echoServer(t);
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`]);
  const web = (await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"])).upstreams["db"]!;
  const api = (await startSidecar(t, dir, ["-service", "api", "-upstream", "db:0"])).upstreams["db"]!;
  t.notOk(await echoes(web), "before: web is denied (default deny)");
  t.ok(await echoes(api), "before: api is allowed");

  const errors = async () => (await metric(db.adminAddr, "meshproxy_control_plane_errors_total", { control_plane: "dev", resource: "intentions" })) ?? 0;
  const before = await errors();
  const logged = nextLog(db, (l) => l["@message"] === SERVING_LAST_GOOD && String(l["error"]).includes("intentions.json"));
  await rm(file);
  const line = await logged;
  t.match(String(line["error"]), `${file}: missing (deleted?)`, "the log says the file is missing");
  t.match(String(line["error"]), /restore it, or create it with \{"default_action": "deny", "intentions": \[\]\}/, "and how to fix it");
  t.match(String(line["error"]), /the previous intentions stay in force$/, "and what is in force");
  t.ok((await errors()) > before, "and it is counted");
  // Several polls (1 s apart) later the deletion has still not become an allow.
  for (let i = 0; i < 3; i++) {
    t.notOk(await echoes(web), `web is still denied (${i + 1})`);
    await new Promise((r) => setTimeout(r, 700));
  }
  t.ok(await echoes(api), "api is still allowed");

  const list = runMeshproxy(t, ["intention", "list", "-data-dir", dir]);
  t.equal(await list.exited, 1, "intention list fails on the deleted file");
  t.match(list.stderrText(), /intentions\.json: missing \(deleted\?\)/, "and says why");
  const create = runMeshproxy(t, ["intention", "create", "-allow", "ops", "db", "-data-dir", dir]);
  t.equal(await create.exited, 1, "intention create does not recreate the file with the allow default");

  // A proxy started now does not serve either.
  const late = runMeshproxy(t, ["-service", "late", "-upstream", "db:0", "-data-dir", dir, "-log-json", "-admin-addr", "127.0.0.1:0"]);
  const lateAdmin = await adminOf(late);
  await late.waitForLog((l) => l["@message"] === NOT_SERVING && String(l["error"]).includes("missing (deleted?)"));
  t.equal(await ready(lateAdmin), 503, "a proxy started after the deletion is not ready");

  // Restored: everyone serves it.
  const restored = nextLog(late, (l) => l["@message"] === "proxy ready", 10_000);
  await save(file, JSON.stringify({ default_action: "deny", intentions: [{ source: "api", destination: "db", action: "allow" }, { source: "web", destination: "db", action: "allow" }] }));
  await restored;
  t.not(await pollUntil(() => echoes(web, "ping\n", 1000), 5000), null, "the restored file applies: web is allowed by its new intention");
});

t.test("dev: a broken config entry at startup serves nothing; a deleted config directory keeps the last good entries", { timeout: 60_000 }, async (t) => {
  const dir = await stateDir(t);
  const router = join(dir, "config", "service-router", "db.json");
  await writeFile(router, '{ "Kind": "service-router", "Name": "db", "Routes": [ ');
  const up = await freePort();
  const web = runMeshproxy(t, ["-service", "web", "-upstream", `db:${up}`, "-data-dir", dir, "-log-json", "-admin-addr", "127.0.0.1:0"]);
  const admin = await adminOf(web);
  const err = await web.waitForLog((l) => l["@message"] === NOT_SERVING && String(l["error"]).includes("service-router"));
  t.match(String(err["error"]), `${router}: not valid JSON`, "names the file");
  t.equal(await ready(admin), 503, "not ready");
  t.equal(await dial(up), "refused", "the upstream listener is not bound");
  t.ok(((await metric(admin, "meshproxy_control_plane_errors_total", { control_plane: "dev", resource: "config-entries" })) ?? 0) >= 1, "counted under resource=config-entries");

  const readyLine = nextLog(web, (l) => l["@message"] === "proxy ready", 10_000);
  await rm(router);
  await readyLine;
  t.equal(await ready(admin), 200, "ready once the broken entry is gone");

  // rm -r removes the kind directories first; a read in between reports those, then config/ itself.
  const logged = nextLog(web, (l) => l["@message"] === SERVING_LAST_GOOD && String(l["error"]).includes("/config: missing (deleted?)"));
  await rm(join(dir, "config"), { recursive: true });
  const line = await logged;
  t.match(String(line["error"]), /\/config: missing \(deleted\?\); restore it, or create it empty \("mkdir -p /, "a deleted config directory is an error with the fix");
  t.match(String(line["error"]), /the previous config entries stay in force$/, "and the last good entries stay");
  await mkdir(join(dir, "config"));
  t.equal(await ready(admin), 200, "still ready, on the last good configuration");
});

t.test("static: a bad first file serves nothing; the fix starts it", { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t, "meshproxy-static-fc-");
  await mkdir(join(dir, "certs"));
  const td = "11111111-2222-3333-4444-555555555555.consul";
  const ca = await createRootCa(td);
  const leaf = await issueLeaf(ca, { spiffeId: serviceSpiffeId({ trustDomain: td, namespace: "default", datacenter: "dc1", service: "db" }), commonName: "db", ttlMs: 3600_000 });
  await writeFile(join(dir, "certs", "root.pem"), ca.certPem);
  await writeFile(join(dir, "certs", "db.pem"), leaf.certPem);
  await writeFile(join(dir, "certs", "db.key"), leaf.keyPem);
  const echo = await echoServer(t);
  const pub = await freePort();
  const config = (intentions: unknown) => ({
    service: "db",
    identity: { cert_file: "certs/db.pem", key_file: "certs/db.key" },
    roots_files: ["certs/root.pem"],
    public_listener: { bind: `127.0.0.1:${pub}`, local_app: `127.0.0.1:${echo.port}` },
    intentions,
  });
  const file = join(dir, "db.json");
  // The intentions block cannot be read: a typo in the default action.
  await writeFile(file, JSON.stringify(config({ default_action: "dney" }), null, 2));
  const db = runMeshproxy(t, ["-config-file", file, "-log-json", "-admin-addr", "127.0.0.1:0"]);
  const admin = await adminOf(db);
  const err = await db.waitForLog((l: LogLine) => l["@message"] === NOT_SERVING);
  t.match(String(err["error"]), /db\.json: intentions\.default_action: "dney": must be "allow" or "deny"/, "the log names the file and field");
  t.equal(await ready(admin), 503, "/ready is 503");
  t.equal(await metric(admin, "envoy_server_state"), 3, "initializing");
  t.ok(((await metric(admin, "meshproxy_control_plane_errors_total", { control_plane: "static" })) ?? 0) >= 1, "counted");
  t.equal(await dial(pub), "refused", "the public listener is not bound");
  t.equal(echo.connections(), 0, "no byte reached the app");

  const readyLine = nextLog(db, (l) => l["@message"] === "proxy ready", 10_000);
  await save(file, JSON.stringify(config({ default_action: "deny" }), null, 2));
  await readyLine;
  t.equal(await ready(admin), 200, "the fix starts it without a restart");
  t.equal(db.child.exitCode, null, "the same process");
  t.equal(await db.stop(), 0, "and it stops cleanly");
});

t.test("SIGTERM while waiting for a good configuration exits 0", { timeout: 30_000 }, async (t) => {
  const dir = await stateDir(t);
  await writeFile(join(dir, "intentions.json"), "{");
  const p = runMeshproxy(t, ["-service", "web", "-upstream", "db:0", "-data-dir", dir, "-log-json", "-admin-addr", "127.0.0.1:0"]);
  await p.waitForLog((l) => l["@message"] === NOT_SERVING);
  t.equal(await p.stop(), 0, "exit 0");
  t.notOk(p.logs.some((l) => l["@message"] === "cannot start"), "not reported as a failure to start");
});

t.test("dev: a first Snapshot the proxy rejects (a route regex RE2 refuses) keeps it waiting, not exiting; the fix starts it", { timeout: 60_000 }, async (t) => {
  const dir = await stateDir(t);
  const entries = join(dir, "config");
  await mkdir(join(entries, "service-defaults"), { recursive: true });
  await mkdir(join(entries, "service-router"), { recursive: true });
  await writeFile(join(entries, "service-defaults", "api.json"), JSON.stringify({ Kind: "service-defaults", Name: "api", Protocol: "http" }));
  const router = join(entries, "service-router", "api.json");
  // Lookahead: valid JSON, a valid entry, and a pattern only the proxy's route compiler refuses.
  await save(router, JSON.stringify({ Kind: "service-router", Name: "api", Routes: [{ Match: { HTTP: { PathRegex: "/a(?=b)" } } }] }));
  const up = await freePort();
  const web = runMeshproxy(t, ["-service", "web", "-upstream", `api:${up}`, "-data-dir", dir, "-log-json", "-admin-addr", "127.0.0.1:0"]);
  const admin = await adminOf(web);
  const rejected = await web.waitForLog((l) => l["@message"] === "snapshot rejected; not serving (not ready, no listeners) until a valid one arrives");
  t.match(String(rejected["error"]), /lookahead/, "the log says what is wrong with the pattern");
  t.equal(await ready(admin), 503, "/ready is 503");
  t.ok(((await metric(admin, "meshproxy_snapshots_rejected_total")) ?? 0) >= 1, "meshproxy_snapshots_rejected_total counts it");
  t.equal(await dial(up), "refused", "the upstream listener is not bound");
  t.equal(web.child.exitCode, null, "the proxy is still running, waiting for a valid configuration");

  await save(router, JSON.stringify({ Kind: "service-router", Name: "api", Routes: [{ Match: { HTTP: { PathRegex: "/a.*" } } }] }));
  await web.waitForLog((l) => l["@message"] === "proxy ready");
  t.equal(await ready(admin), 200, "ready once the entry is fixed, without a restart");
  t.equal(await web.stop(), 0, "exits 0 on SIGTERM");
});
