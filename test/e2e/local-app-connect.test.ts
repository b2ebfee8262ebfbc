// The public listener's dial of its local app: a connect that never completes (the app's accept
// queue full, so the kernel drops the SYN) is refused after the local connect timeout, counted as
// a connect timeout, and the caller's bytes never reach anything. The deadline is checked after
// the loop has read its I/O (src/tcp/connect-deadline.ts); this shows it still fires.
import t from "tap";
import { spawn } from "node:child_process";
import { connect, type Socket } from "node:net";
import { once } from "node:events";
import { hostPort, startSidecar, tempDir, type Teardown } from "../helpers/mesh.js";
import { metric } from "../helpers/l7.js";

/** A listener that never accepts, with an accept queue of one (python: node always accepts). */
async function deafApp(t: Teardown): Promise<number> {
  const py = spawn("python3", ["-c", "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen(0)\nprint(s.getsockname()[1],flush=True)\ntime.sleep(600)"], { stdio: ["ignore", "pipe", "inherit"] });
  t.teardown(() => py.kill("SIGKILL"));
  const [line] = (await once(py.stdout, "data")) as [Buffer];
  return Number(line.toString().trim());
}

/** Fills the accept queue: connects until one stays pending for 300 ms. */
async function fillQueue(t: Teardown, port: number): Promise<void> {
  const socks: Socket[] = [];
  t.teardown(() => socks.forEach((s) => s.destroy()));
  for (let i = 0; i < 8; i++) {
    const s = connect(port, "127.0.0.1");
    s.on("error", () => {});
    socks.push(s);
    const connected = await Promise.race([once(s, "connect").then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 300))]);
    if (!connected) return;
  }
  throw new Error("the accept queue never filled");
}

t.test("a local app whose connect never completes: refused after the local connect timeout, counted, nothing delivered", async (t) => {
  const port = await deafApp(t);
  await fillQueue(t, port);
  const dir = await tempDir(t);
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  const { host, port: up } = hostPort(web.upstreams["db"]!);
  const started = performance.now();
  const c = connect(up, host);
  c.on("error", () => {});
  c.write("hello");
  let got = 0;
  c.on("data", (d: Buffer) => (got += d.length));
  await once(c, "close");
  const ms = performance.now() - started;
  t.ok(ms >= 900, `closed once the 1 s local connect timeout passed (${ms.toFixed(0)} ms)`);
  t.equal(got, 0, "no byte came back");
  t.equal(await metric(db.adminAddr, "envoy_cluster_upstream_cx_connect_timeout"), 1, "counted as a connect timeout (db's only cluster is its local app)");
  t.equal(await metric(db.adminAddr, "meshproxy_inbound_rejected_total", { reason: "local_app_unreachable" }), 1, "and as one refused connection, local_app_unreachable");
});
