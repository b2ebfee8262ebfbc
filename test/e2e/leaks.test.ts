// Many concurrent connections through a sidecar pair leave nothing behind: after they close,
// both proxies are back to their file-descriptor count and their active-connection gauges are 0;
// connections the client resets mid-stream are cleaned up too. (A reload that removes an upstream
// closing its listener is tested in consul.test.ts.)
import t from "tap";
import { readdir } from "node:fs/promises";
import { connect } from "node:net";
import { once } from "node:events";
import { echoServer, hostPort, roundTrip, startSidecar, tempDir } from "../helpers/mesh.js";
import { until, metric } from "../helpers/l7.js";

async function fds(pid: number): Promise<number> {
  return (await readdir(`/proc/${pid}/fd`)).length;
}

t.test("500 concurrent connections leave no socket behind", async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  const up = web.upstreams["db"]!;
  // One round trip first, so pools, sessions and timers that exist once are already there.
  t.equal((await roundTrip(up, "warm\n")).toString(), "warm\n");
  const dbPid = db.child.pid!;
  const webPid = web.child.pid!;
  const before = { db: await fds(dbPid), web: await fds(webPid) };

  const replies = await Promise.all(Array.from({ length: 500 }, (_, i) => roundTrip(up, `line ${i}\n`, 60_000)));
  t.equal(replies.filter((r, i) => r.toString() === `line ${i}\n`).length, 500, "all 500 concurrent connections were echoed");

  await until(async () => (await metric(web.adminAddr, "envoy_listener_downstream_cx_active")) === 0 && (await metric(db.adminAddr, "envoy_listener_downstream_cx_active")) === 0, 10_000, "active connections to drop to 0");
  await until(async () => (await fds(dbPid)) <= before.db + 2 && (await fds(webPid)) <= before.web + 2, 10_000, "file descriptors to return to where they were");
  t.ok((await fds(webPid)) <= before.web + 2, `web: ${before.web} fds before, ${await fds(webPid)} after`);
  t.ok((await fds(dbPid)) <= before.db + 2, `db: ${before.db} fds before, ${await fds(dbPid)} after`);
  t.equal(await metric(web.adminAddr, "envoy_cluster_upstream_cx_active"), 0, "no upstream connection left open");
});

t.test("a connection the client resets does not leak either", async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  const { host, port } = hostPort(web.upstreams["db"]!);
  t.equal((await roundTrip(web.upstreams["db"]!, "warm\n")).toString(), "warm\n");
  const before = await fds(web.child.pid!);
  for (let i = 0; i < 50; i++) {
    const s = connect({ host, port });
    await once(s, "connect");
    s.write("half a line");
    s.resetAndDestroy();
  }
  await until(async () => (await metric(web.adminAddr, "envoy_listener_downstream_cx_active")) === 0, 10_000, "reset connections to be cleaned up");
  await until(async () => (await fds(web.child.pid!)) <= before + 2, 10_000, "file descriptors to return");
  t.pass(`web is back to ${await fds(web.child.pid!)} fds after 50 resets (was ${before})`);
});
