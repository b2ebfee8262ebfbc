// Two real `meshproxy -config-file` processes, fully static: a root and two leaves in a temp
// dir, db with a public listener in front of an echo app, web with an upstream whose static
// endpoint is db's listener. Bytes cross; an intentions edit in db's file applies live; a
// broken edit is reported and the last good config keeps serving (a bad first file: see
// fail-closed.test.ts); flags that contradict the file are a usage error.
import t from "tap";
import { mkdir, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { once } from "node:events";
import { join } from "node:path";
import { createRootCa, issueLeaf } from "../../src/identity/ca.js";
import { serviceSpiffeId } from "../../src/identity/spiffe.js";
import { echoServer, roundTrip, runMeshproxy, startSidecar, tempDir, type LogLine } from "../helpers/mesh.js";

const TD = "11111111-2222-3333-4444-555555555555.consul";

/** A port free right now: static endpoints need the port before db's proxy starts. */
async function freePort(): Promise<number> {
  const s = createServer();
  s.listen(0, "127.0.0.1");
  await once(s, "listening");
  const a = s.address();
  await new Promise<void>((r) => s.close(() => r()));
  if (a === null || typeof a === "string") throw new Error("a TCP listener has a port");
  return a.port;
}

/** Empty when the connection was refused after the handshake, as a denied one is. */
async function tryRoundTrip(addr: string, data: string): Promise<string> {
  try {
    return (await roundTrip(addr, data, 15_000)).toString();
  } catch (e) {
    return `error: ${e instanceof Error ? e.message : String(e)}`;
  }
}

t.test("two static proxies carry bytes and follow live edits of their files", async (t) => {
  const dir = await tempDir(t, "meshproxy-static-e2e-");
  await mkdir(join(dir, "certs"));
  const ca = await createRootCa(TD);
  await writeFile(join(dir, "certs", "root.pem"), ca.certPem);
  for (const service of ["web", "db"]) {
    const leaf = await issueLeaf(ca, { spiffeId: serviceSpiffeId({ trustDomain: TD, namespace: "default", datacenter: "dc1", service }), commonName: service, ttlMs: 3600_000 });
    await writeFile(join(dir, "certs", `${service}.pem`), leaf.certPem);
    await writeFile(join(dir, "certs", `${service}.key`), leaf.keyPem);
  }
  const echo = await echoServer(t);
  const dbPort = await freePort();
  const dbConfig = (intentions: unknown) => ({
    service: "db",
    identity: { cert_file: "certs/db.pem", key_file: "certs/db.key" },
    roots_files: ["certs/root.pem"],
    public_listener: { bind: `127.0.0.1:${dbPort}`, local_app: `127.0.0.1:${echo.port}` },
    intentions,
  });
  const dbFile = join(dir, "db.json");
  const webFile = join(dir, "web.json");
  await writeFile(dbFile, JSON.stringify(dbConfig({ default_action: "deny", intentions: [{ source: "web", destination: "db", action: "allow" }] }), null, 2));
  await writeFile(
    webFile,
    JSON.stringify({
      service: "web",
      identity: { cert_file: "certs/web.pem", key_file: "certs/web.key" },
      roots_files: ["certs/root.pem"],
      upstreams: [{ name: "db", bind: "127.0.0.1:0", endpoints: [`127.0.0.1:${dbPort}`] }],
    }),
  );

  // startSidecar passes -data-dir too: harmless, the static control plane does not use it.
  const db = await startSidecar(t, dir, ["-config-file", dbFile, "-log-level", "debug"]);
  const web = await startSidecar(t, dir, ["-config-file", webFile]);
  t.equal(db.publicAddr, `127.0.0.1:${dbPort}`, "db listens where web's static endpoint points");
  const up = web.upstreams["db"];
  if (!up) throw new Error("web has no db upstream");

  t.equal(await tryRoundTrip(up, "hello static mesh\n"), "hello static mesh\n", "bytes cross web → db over mTLS");

  const version = (v: number) => (l: LogLine) => l["@message"] === "snapshot applied" && l["version"] === v;

  // Live: deny web in db's file.
  await writeFile(dbFile, JSON.stringify(dbConfig({ default_action: "allow", intentions: [{ source: "web", destination: "db", action: "deny" }] })));
  await db.waitForLog(version(2));
  t.not(await tryRoundTrip(up, "denied?\n"), "denied?\n", "after the edit, web is refused");
  const refused = await db.waitForLog((l) => l["@message"] === "inbound connection refused" && l["reason"] === "denied_by_intention");
  t.equal(refused["source"], "web");

  // A broken edit: reported, and the deny keeps serving.
  await writeFile(dbFile, JSON.stringify({ ...dbConfig({}), intentions: { default_action: "maybe" } }));
  const err = await db.waitForLog((l) => l["@message"] === "control plane error; serving on the last good snapshot");
  t.match(String(err["error"]), /db\.json: intentions\.default_action: "maybe": must be "allow" or "deny"/, "the error names the field");
  t.not(await tryRoundTrip(up, "still denied?\n"), "still denied?\n", "the last good config (deny) still applies");

  // Fixed: allowed again.
  await writeFile(dbFile, JSON.stringify(dbConfig({ default_action: "deny", intentions: [{ source: "web", destination: "db", action: "allow" }] })));
  await db.waitForLog(version(3));
  t.equal(await tryRoundTrip(up, "allowed again\n"), "allowed again\n", "the fix applies");

  t.equal(await web.stop(), 0, "web exits 0 on SIGTERM");
  t.equal(await db.stop(), 0, "db exits 0 on SIGTERM");
});

t.test("-config-file with a flag that says part of the same thing is a usage error", async (t) => {
  const dir = await tempDir(t, "meshproxy-static-e2e-");
  const file = join(dir, "proxy.json");
  await writeFile(file, JSON.stringify({ service: "web", identity: { cert_file: "a.pem", key_file: "a.key" }, roots_files: ["r.pem"] }));
  const both = runMeshproxy(t, ["-config-file", file, "-service", "web"]);
  t.equal(await both.exited, 2, "a usage error exits 2");
  t.match(both.stderrText(), /-config-file cannot be combined with -service/);
});
