// Native apps and meshproxy sidecars in one mesh (the dev control plane): a native client calls a
// service fronted by a sidecar, and a sidecar-fronted client calls a native service.
import t from "tap";
import { request } from "undici";
import { startSidecar, tempDir } from "../helpers/mesh.js";
import { httpApp, until } from "../helpers/l7.js";
import { fetchUntil, serve, service } from "../helpers/native.js";

t.test("native client → sidecar-fronted server", async (t) => {
  const dir = await tempDir(t);
  const app = await httpApp(t, "db");
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  const web = await service(t, { name: "web", dataDir: dir });
  const res = await fetchUntil(web, "https://db.service.consul/rows");
  t.equal(await res.text(), "db 200\n", "the request went through db's sidecar to the app");
  t.equal(app.served, 1, "the app served it once");
  const conns = db.logs.filter((l) => l["@message"] === "inbound connection refused").length;
  t.equal(conns, 0, "db's sidecar refused nothing: web's certificate and identity are the mesh's");
});

t.test("sidecar-fronted client → native server", async (t) => {
  const dir = await tempDir(t);
  const api = await service(t, { name: "api", dataDir: dir });
  const served = await serve(t, api);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"]);
  const upstream = web.upstreams["api"]!;
  let body = "";
  await until(async () => {
    try {
      const r = await request(`http://${upstream}/orders`);
      body = await r.body.text();
      return r.statusCode === 200;
    } catch {
      return false;
    }
  }, 10_000, "web's sidecar reaches the native api");
  t.equal(body, "api /orders from web", "the native server saw the sidecar's identity (web)");
  t.equal(served.seen.at(-1)?.peer, "web", "peerOf(req) names the caller");
});
