// SIGHUP and SIGUSR1 on real meshproxy processes, as Envoy handles them: SIGHUP is eaten with a
// warning (the proxy serves on, still registered), and SIGUSR1 reopens the -access-log file so
// logrotate's `mv access.log access.log.1` + `kill -USR1` works: every line after the signal is
// in the new access.log. With -concurrency N each worker writes the file; the primary forwards.
import t, { type Test } from "tap";
import { readFile, readdir, rename, stat } from "node:fs/promises";
import { join } from "node:path";
import { echoServer, roundTrip, startSidecar, tempDir, type MeshProcess, type Sidecar } from "../helpers/mesh.js";
import { startGateway } from "../helpers/mesh-gateway.js";
import { until } from "../helpers/l7.js";

async function lines(file: string): Promise<string[]> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    if (e instanceof Error && "code" in e && e.code === "ENOENT") return [];
    throw e;
  }
  return text.split("\n").filter((l) => l !== "");
}

/** `n` connections web → db → echo, one after another, each checked. */
async function sendThrough(web: Sidecar, n: number, tag: string): Promise<void> {
  for (let i = 0; i < n; i++) {
    const line = `${tag}-${i}\n`;
    const got = (await roundTrip(web.upstreams["db"]!, line)).toString();
    if (got !== line) throw new Error(`round trip ${tag}-${i}: got ${JSON.stringify(got)}`);
  }
}

/** db's inbound lines (L4: one per connection through its public listener). */
function inbound(ls: readonly string[]): string[] {
  return ls.filter((l) => (JSON.parse(l) as { direction?: string }).direction === "inbound");
}

t.test("SIGHUP: a warning, and the proxy goes on serving, still registered", { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  db.child.kill("SIGHUP");
  const warned = await db.waitForLog((l) => l["@level"] === "warn" && /caught and eating SIGHUP/.test(l["@message"]));
  t.equal(warned["signal"], "SIGHUP", "the warning names the signal");
  t.equal(db.child.exitCode, null, "db is still running");
  await sendThrough(web, 3, "after-hup");
  t.pass("traffic still flows through db after SIGHUP");
  t.equal((await readdir(join(dir, "catalog"))).length, 1, "db is still in the catalog");
  t.ok((await readdir(join(dir, "sidecars"))).length >= 2, "and still listed under sidecars/");
  t.equal(await db.stop(), 0, "SIGTERM still drains and exits 0");
  t.equal((await readdir(join(dir, "catalog"))).length, 0, "deregistered on the way out");
});

async function rotation(t: Test, concurrency: number): Promise<void> {
  const dir = await tempDir(t);
  const logs = await tempDir(t);
  const file = join(logs, "access.log");
  const echo = await echoServer(t);
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`, "-access-log", file], {}, { concurrency });
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);

  await sendThrough(web, 4, "before");
  await until(async () => inbound(await lines(file)).length === 4, 10_000, "4 access lines before the rotation");
  await rename(file, `${file}.1`);
  db.child.kill("SIGUSR1");
  if (concurrency > 1) {
    await db.waitForLog((l) => l["@message"] === "asked every worker to reopen the access log" && l["workers"] === concurrency);
    // Each worker logs its own reopen; wait for all, so no line can still go to the old file.
    await until(() => db.logs.filter((l) => l["@message"] === "access log reopened").length === concurrency, 10_000, "every worker to reopen");
  } else {
    const reopened = await db.waitForLog((l) => l["@message"] === "access log reopened");
    t.equal(reopened["file"], file, "the log names the file");
  }
  t.ok((await stat(file)).isFile(), "a new access.log exists");
  t.equal(db.child.exitCode, null, "db is still running (SIGUSR1 did not start an inspector or end it)");

  const after = 12;
  await sendThrough(web, after, "after");
  await until(async () => inbound(await lines(file)).length === after, 10_000, `${after} access lines in the new file`);
  t.equal(inbound(await lines(file)).length, after, "every connection after the signal is in the new access.log");
  t.equal(inbound(await lines(`${file}.1`)).length, 4, "the rotated file holds the 4 from before, nothing after");
  t.equal(await db.stop(), 0);
  t.equal(inbound(await lines(file)).length, after, "nothing more at exit");
}

t.test("mv access.log access.log.1 + SIGUSR1: new lines go to a new access.log, none lost", { timeout: 60_000 }, (t) => rotation(t, 1));

t.test("-concurrency 2: the primary forwards SIGUSR1, every worker reopens the file", { timeout: 90_000 }, (t) => rotation(t, 2));

t.test("-gateway mesh: SIGHUP is eaten, SIGUSR1 reopens its access log", { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const logs = await tempDir(t);
  const file = join(logs, "gateway-access.log");
  // The first sidecar creates the dev CA a gateway reads its trust domain from.
  await (await startSidecar(t, dir, ["-service", "warmup"])).stop();
  const gw: MeshProcess = await startGateway(t, dir, "dc1", ["-access-log", file]);
  gw.child.kill("SIGHUP");
  await gw.waitForLog((l) => l["@level"] === "warn" && /caught and eating SIGHUP/.test(l["@message"]));
  t.equal(gw.child.exitCode, null, "the gateway is still running");
  await rename(file, `${file}.1`);
  gw.child.kill("SIGUSR1");
  await gw.waitForLog((l) => l["@message"] === "access log reopened" && l["file"] === file);
  t.ok((await stat(file)).isFile(), "the gateway opened a new file at the path");
  t.equal(await gw.stop(), 0, "and still drains and exits 0 on SIGTERM");
});
