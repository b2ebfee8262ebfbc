// An HTTP upstream listener reads the app's first bytes to tell HTTP/1.1 from h2c; until then no
// server owns the connection. A client that connects and closes without a byte (wrk stopping, a
// port check) must be closed by the sidecar too, not left in CLOSE-WAIT, counted as open and
// holding a drain to its timeout.
import t from "tap";
import { connect, type Socket } from "node:net";
import { startSidecar, tempDir, hostPort } from "../helpers/mesh.js";
import { configWrite, httpApp, metric, until } from "../helpers/l7.js";

function open(addr: string): Promise<Socket> {
  const { host, port } = hostPort(addr);
  return new Promise((resolve, reject) => {
    const s = connect(port, host, () => resolve(s));
    s.once("error", reject);
  });
}

t.test("a connection closed before its first byte is closed by the sidecar and not counted open", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  const app = await httpApp(t, "api");
  await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0", "-drain-timeout", "20s"]);
  const upstream = web.upstreams["api"]!;
  const active = () => metric(web.adminAddr, "envoy_listener_downstream_cx_active");

  const sockets = await Promise.all([open(upstream), open(upstream), open(upstream)]);
  await until(async () => (await active()) === 3, 5_000, "three connections counted open");
  let closedBySidecar = 0;
  for (const s of sockets) {
    s.once("close", () => closedBySidecar++);
    s.resume();
    s.end(); // FIN, no byte sent
  }
  await until(() => closedBySidecar === 3, 5_000, "the sidecar closing the three connections").catch(() => undefined);
  t.equal(closedBySidecar, 3, "the sidecar closed all three after their FIN");
  for (const s of sockets) s.destroy();
  await until(async () => (await active()) === 0, 5_000, "no connection counted open");
  t.equal(await active(), 0, "envoy_listener_downstream_cx_active is back to 0");

  // With nothing open, SIGTERM's drain has nothing to wait for: far under -drain-timeout 20s.
  const start = performance.now();
  t.equal(await web.stop(), 0, "the sidecar stops cleanly");
  const ms = performance.now() - start;
  t.ok(ms < 10_000, `the drain did not wait for a phantom connection (${Math.round(ms)} ms)`);
  t.notOk(
    web.logs.some((l) => l["@message"] === "drain timeout; closing open connections"),
    "no drain timeout",
  );
});
