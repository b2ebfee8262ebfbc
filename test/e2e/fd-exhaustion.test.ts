// A sidecar out of file descriptors keeps serving what it already holds. Found by the soak harness
// (bench/soak, the fdx fault): the dev control plane's poll could not open the catalog directory
// (EMFILE) and took that for an empty catalog, so requests on pooled connections that needed no
// new descriptor got 503 UH (no healthy upstream) until descriptors were free again.
import t from "tap";
import { execFileSync } from "node:child_process";
import { readdir } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { once } from "node:events";
import { Pool } from "undici";
import { hostPort, startSidecar, tempDir } from "../helpers/mesh.js";
import { configWrite, httpApp } from "../helpers/l7.js";

t.test("out of descriptors, a caller's sidecar keeps the instances it knew and serves pooled requests", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  const app = await httpApp(t, "api");
  await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  // A connection limit the descriptor limit below cannot hold, so descriptors really run out.
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0", "-max-connections", "5000"]);
  const upstream = `http://${web.upstreams["api"]}`;
  const pool = new Pool(upstream, { connections: 1 });
  t.teardown(() => pool.close());
  const get = async () => {
    const res = await pool.request({ path: "/", method: "GET" });
    await res.body.text();
    return `${res.statusCode} ${String(res.headers["x-meshproxy-response-flags"] ?? "")}`.trim();
  };
  t.equal(await get(), "200", "a request through the pooled connection works");

  const pid = web.child.pid;
  if (pid === undefined) throw new Error("web has no pid");
  const open = (await readdir(`/proc/${pid}/fd`)).length;
  execFileSync("prlimit", ["--pid", String(pid), `--nofile=${open + 8}:${open + 8}`]);
  const held: Socket[] = [];
  t.teardown(() => held.forEach((s) => s.destroy()));
  const { host, port } = hostPort(web.upstreams["api"]!);
  for (let i = 0; i < 40; i++) {
    const s = connect({ host, port });
    s.on("error", () => undefined);
    held.push(s);
    await once(s, "connect");
  }
  const errorOf = (l: Record<string, unknown>) => (typeof l["error"] === "string" ? l["error"] : "");
  const exhausted = await web.waitForLog((l) => errorOf(l).includes("catalog") && errorOf(l).includes("EMFILE"), 10_000);
  t.match(errorOf(exhausted), /the previous catalogs? (of \w+ )?stays? in force/, "the unreadable catalog is logged, and the previous one kept");
  const answers: string[] = [];
  for (let i = 0; i < 20; i++) answers.push(await get());
  t.same([...new Set(answers)], ["200"], "every pooled request is still served");
});
