// A mesh gateway started while a config entry cannot be read waits for the fix, as a sidecar
// waits for its first configuration: the problem is logged, nothing is bound, and once the file
// reads the gateway starts serving without a restart. It exited 1.
import t from "tap";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { echoServer, runMeshproxy, startSidecar, tempDir } from "../helpers/mesh.js";

t.test("a gateway whose config entries cannot be read at start waits, then serves once they can", { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const app = await echoServer(t);
  await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  const resolvers = join(dir, "config", "service-resolver");
  await mkdir(resolvers, { recursive: true });
  const file = join(resolvers, "db.json");
  await writeFile(file, '{"Kind": "service-resolver", "Name": "db", ');
  const gw = runMeshproxy(t, ["-gateway", "mesh", "-datacenter", "dc1", "-listen", "127.0.0.1:0", "-data-dir", dir, "-log-json", "-admin-addr", "127.0.0.1:0"]);
  const named = await gw.waitForLog((l) => l["@message"] === "gateway configuration problem" && /db\.json/.test(String(l["error"])));
  t.match(String(named["error"]), /not valid JSON/, `the problem names the file and what is wrong: ${String(named["error"])}`);
  const waits = await gw.waitForLog((l) => l["@message"] === "gateway configuration problem" && /not serving until it is fixed/.test(String(l["error"])));
  t.ok(waits, `and says the gateway waits for the fix: ${String(waits["error"])}`);
  let exited: number | null | "running" = "running";
  gw.exited.then((c) => (exited = c), () => undefined);
  t.notOk(gw.logs.some((l) => l["@message"] === "gateway ready" || l["@message"] === "cannot start"), "it neither serves nor gives up");
  await writeFile(file, JSON.stringify({ Kind: "service-resolver", Name: "db", ConnectTimeout: "5s" }));
  const ready = await gw.waitForLog((l) => l["@message"] === "gateway ready");
  t.match(String(ready["listen"]), /^127\.0\.0\.1:\d+$/, "once the file reads, the gateway starts serving");
  t.equal(exited, "running", "without having exited in between");
  t.equal(await gw.stop(), 0, "and stops cleanly");
});
