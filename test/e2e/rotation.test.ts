// Certificate rotation under load on the Consul agent double: web → db through two sidecars,
// a steady stream of new connections plus a few long-lived ones, while (a) both leafs are
// re-issued and (b) the CA root rotates (new root cross-signed by the old, both trusted during
// the overlap, every leaf re-issued). Nothing may fail, nothing long-lived may be cut, and new
// handshakes must present the new leaf.
import t from "tap";
import { connect, type Socket } from "node:net";
import { echoServer, hostPort, type Sidecar } from "../helpers/mesh.js";
import { configDump, until } from "../helpers/l7.js";
import { connectionLoad, consulSidecar, moreTraffic, mtls, startDouble } from "../helpers/consul-mesh.js";
import type { ConsulAgentDouble } from "../helpers/consul-agent.js";
import type { Teardown } from "../helpers/mesh.js";

interface Stream {
  readonly sent: () => number;
  readonly received: () => number;
  /** Set if the connection closed before stop(). */
  readonly closedEarly: () => string | null;
  /** Stops writing, half-closes, and resolves once the echo of everything has come back and the socket closed. */
  stop(): Promise<void>;
}

/** A long-lived connection that writes 1 KiB every 20 ms and counts what is echoed back. */
async function longLived(t: Teardown, addr: string, id: number): Promise<Stream> {
  const { host, port } = hostPort(addr);
  const s: Socket = connect({ host, port, allowHalfOpen: true });
  await new Promise<void>((resolve, reject) => {
    s.once("connect", resolve);
    s.once("error", reject);
  });
  let sent = 0;
  let received = 0;
  let stopping = false;
  let early: string | null = null;
  let seq = 0;
  s.on("data", (d: Buffer) => (received += d.length));
  s.on("error", (e) => {
    if (!stopping) early = `stream ${id}: ${e.message}`;
  });
  const closed = new Promise<void>((resolve) =>
    s.once("close", () => {
      if (!stopping) early ??= `stream ${id}: closed after ${sent} bytes sent, ${received} received`;
      resolve();
    }),
  );
  const timer = setInterval(() => {
    const chunk = Buffer.alloc(1024, `${id}:${seq++};`);
    sent += chunk.length;
    s.write(chunk);
  }, 20);
  t.teardown(() => {
    clearInterval(timer);
    s.destroy();
  });
  return {
    sent: () => sent,
    received: () => received,
    closedEarly: () => early,
    async stop() {
      stopping = true;
      clearInterval(timer);
      s.end();
      await closed;
    },
  };
}

async function identitySerial(adminAddr: string): Promise<string | null> {
  const dump = await configDump(adminAddr);
  if (typeof dump !== "object" || dump === null || !("identity" in dump)) return null;
  const id: unknown = dump.identity;
  return typeof id === "object" && id !== null && "serial" in id && typeof id.serial === "string" ? id.serial : null;
}

async function trustedRoots(adminAddr: string): Promise<number> {
  const dump = await configDump(adminAddr);
  if (typeof dump !== "object" || dump === null || !("trust" in dump)) return 0;
  const trust: unknown = dump.trust;
  return typeof trust === "object" && trust !== null && "rootsPem" in trust && Array.isArray(trust.rootsPem) ? trust.rootsPem.length : 0;
}

/** Waits until the db sidecar's public listener serves `serial` and web's Snapshot has `webSerial`. */
async function rotated(db: Sidecar, web: Sidecar, dbSerial: string, webSerial: string): Promise<void> {
  await db.waitForLog((l) => l["@message"] === "public listener certificates rotated" && l["serial"] === dbSerial, 10_000);
  await until(async () => (await identitySerial(web.adminAddr)) === webSerial, 10_000, `web to apply leaf ${webSerial}`);
}

async function pair(t: Teardown, d: ConsulAgentDouble): Promise<{ db: Sidecar; web: Sidecar }> {
  const echo = await echoServer(t);
  const db = await consulSidecar(t, d, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`, "-register"]);
  const web = await consulSidecar(t, d, ["-service", "web", "-upstream", "db:0"]);
  return { db, web };
}

t.test("leaf and root rotation under load: zero failed connections, long-lived ones survive, new handshakes use the new leaf", { timeout: 90_000 }, async (t) => {
  const d = await startDouble(t);
  const { db, web } = await pair(t, d);
  const addr = web.upstreams["db"]!;
  const oldRoot = d.activeRoot.certPem;
  const webLeafBefore = await d.leaf("web");
  const dbSerialBefore = (await d.leaf("db")).serial;

  const load = connectionLoad(t, addr, 80);
  const streams = await Promise.all([1, 2, 3].map((i) => longLived(t, addr, i)));
  await moreTraffic(load, 40);

  // (a) Both leafs re-issued by the agent (new keys, new serials, same root).
  const dbLeaf = await d.rotateLeaf("db");
  const webLeaf = await d.rotateLeaf("web");
  t.not(dbLeaf, dbSerialBefore, "db has a new serial");
  await rotated(db, web, dbLeaf, webLeaf);
  t.pass("both sidecars applied their new leaf");
  const webNow = await d.leaf("web");
  let probe = await mtls(db.publicAddr!, webNow.certPem, webNow.keyPem, [oldRoot]);
  t.equal(probe.serial, dbLeaf, "a new handshake to db's public listener presents db's new leaf");
  t.equal(probe.received, "ping\n", "and is served");
  await moreTraffic(load, 80);

  // (b) CA root rotation: the new root is cross-signed by the old one; leafs are re-issued.
  const newRootId = await d.rotateRoots();
  t.same(d.roots().map((r) => r.active), [false, true], "two roots listed during the overlap, the new one active");
  const newRoot = d.activeRoot.certPem;
  const dbRooted = await d.leaf("db");
  const webRooted = await d.leaf("web");
  t.equal(dbRooted.rootId, newRootId, "db's leaf now comes from the new root");
  await rotated(db, web, dbRooted.serial, webRooted.serial);
  await until(async () => (await trustedRoots(db.adminAddr)) === 2 && (await trustedRoots(web.adminAddr)) === 2, 10_000, "both sidecars to trust both roots");
  t.pass("both sidecars trust both roots and present leafs from the new one");

  probe = await mtls(db.publicAddr!, webRooted.certPem, webRooted.keyPem, [newRoot]);
  t.equal(probe.serial, dbRooted.serial, "new handshakes present the leaf issued by the new root");
  probe = await mtls(db.publicAddr!, webLeafBefore.certPem, webLeafBefore.keyPem, [oldRoot], "old\n");
  t.equal(probe.received, "old\n", "a peer still on the old root and an old leaf is accepted (old root still trusted) and verifies db's new chain through the cross-signed cert");
  t.equal(probe.serial, dbRooted.serial);
  await moreTraffic(load, 80);
  const refusedBefore = db.logs.filter((l) => l["@message"] === "inbound connection refused").length;

  // The end of the rotation: the old root is no longer listed.
  d.pruneInactiveRoots();
  await until(async () => (await trustedRoots(db.adminAddr)) === 1 && (await trustedRoots(web.adminAddr)) === 1, 10_000, "both sidecars to drop the old root");
  await moreTraffic(load, 80);
  const stale = await mtls(db.publicAddr!, webLeafBefore.certPem, webLeafBefore.keyPem, [oldRoot], "stale\n").catch((e: unknown) => (e instanceof Error ? e : new Error(String(e))));
  t.ok(stale instanceof Error || stale.received === "", "once the old root is pruned, a leaf from it is refused");
  const refusal = await db.waitForLog((l) => l["@message"] === "inbound connection refused" && String(l["detail"]).startsWith("client certificate not trusted"), 5000);
  t.match(refusal["detail"], /^client certificate not trusted: /, "db says why");

  await load.stop();
  t.same(load.failures, [], `zero failed connections out of ${load.ok()}`);
  t.ok(load.ok() >= 200, `${load.ok()} new connections made it across`);
  t.same(streams.map((s) => s.closedEarly()), [null, null, null], "the long-lived connections were not closed by either rotation");
  for (const s of streams) await s.stop();
  for (const [i, s] of streams.entries()) t.equal(s.received(), s.sent(), `stream ${i + 1}: all ${s.sent()} bytes echoed back`);
  t.notOk(web.logs.some((l) => l["@message"] === "connection failed"), "web logged no failed upstream connection");
  t.equal(refusedBefore, 0, "db refused no inbound connection during the rotations");
});
