// Lifecycle: SIGTERM drains (stop accepting, deregister, let open connections finish, exit 0),
// and the dev CA renews leaves at 60–90 % of their lifetime without touching open connections.
import t from "tap";
import { connect, type Socket } from "node:net";
import { readdir, writeFile, readFile } from "node:fs/promises";
import { join } from "node:path";
import { once } from "node:events";
import { echoServer, hostPort, roundTrip, startSidecar, tempDir } from "../helpers/mesh.js";

function openLine(addr: string): Promise<Socket> {
  const { host, port } = hostPort(addr);
  const s = connect({ host, port, allowHalfOpen: true });
  return once(s, "connect").then(() => s);
}

async function echoOnce(s: Socket, line: string): Promise<string> {
  s.write(line);
  const [d] = (await once(s, "data")) as [Buffer];
  return d.toString();
}

t.test("SIGTERM stops accepting, deregisters, lets an open connection finish, exits 0", async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`, "-drain-timeout", "20s"]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  const up = web.upstreams["db"]!;
  const open = await openLine(up);
  t.equal(await echoOnce(open, "before\n"), "before\n", "a long-lived connection works");
  t.equal((await readdir(join(dir, "catalog"))).length, 1, "db is in the catalog");

  db.child.kill("SIGTERM");
  await db.waitForLog((l) => l["@message"] === "draining open connections");
  t.equal((await readdir(join(dir, "catalog"))).length, 0, "db deregistered itself first");
  t.equal(await echoOnce(open, "during drain\n"), "during drain\n", "the open connection still carries data while draining");
  // A new connection is refused: db's listener is closed and it is gone from the catalog.
  const refused = await roundTrip(up, "new\n", 5000).catch(() => Buffer.alloc(0));
  t.equal(refused.length, 0, "a new connection gets nothing through");
  t.equal(db.child.exitCode, null, "db waits for the open connection");
  const closed = once(open, "close");
  open.end();
  t.equal(await db.exited, 0, "db exits 0 once the connection is done");
  await closed;
});

t.test("a short-lived leaf is renewed before expiry; open connections stay up, new ones use the new leaf", async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  // First proxy creates the CA; then shorten the leaf TTL for everyone after it.
  const first = await startSidecar(t, dir, ["-service", "warmup"]);
  await first.stop();
  const cfgFile = join(dir, "ca", "config.json");
  const cfg = JSON.parse(await readFile(cfgFile, "utf8")) as Record<string, unknown>;
  await writeFile(cfgFile, JSON.stringify({ ...cfg, leaf_cert_ttl: "6s" }));

  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  const up = web.upstreams["db"]!;
  const open = await openLine(up);
  t.equal(await echoOnce(open, "one\n"), "one\n");
  const firstSerial = String(db.logs.find((l) => l["@message"] === "issued leaf certificate")?.["serial"]);
  // 60–90 % of 6 s: the renewal comes 3.6–5.4 s after issue.
  const renewed = await db.waitForLog((l) => l["@message"] === "issued leaf certificate" && String(l["serial"]) !== firstSerial, 15_000);
  t.not(renewed["serial"], firstSerial, "db issued itself a new leaf");
  await db.waitForLog((l) => l["@message"] === "public listener certificates rotated" && l["serial"] === renewed["serial"], 5000);
  t.equal(await echoOnce(open, "two\n"), "two\n", "the connection opened before the renewal still works");
  t.equal((await roundTrip(up, "fresh\n")).toString(), "fresh\n", "a new connection after the renewal works");
  open.end();
});
