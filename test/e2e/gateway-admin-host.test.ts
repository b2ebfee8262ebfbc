// A mesh gateway's admin API on loopback answers only Host names that are this host's, as the
// sidecar's admin API and metrics listener do: a DNS-rebinding page (evil.example re-resolved to
// 127.0.0.1) read /clusters (the endpoints' addresses) and the metrics as same-origin.
import t from "tap";
import { request } from "node:http";
import { echoServer, hostPort, startSidecar, tempDir } from "../helpers/mesh.js";
import { startGateway } from "../helpers/mesh-gateway.js";

function get(addr: string, path: string, host: string): Promise<{ status: number; body: string }> {
  const { host: h, port } = hostPort(addr);
  return new Promise((resolve, reject) => {
    const req = request({ host: h, port, path, headers: { host } }, (res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

t.test("the gateway's admin API refuses a Host that is not this host's", { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const app = await echoServer(t);
  // A sidecar first: it creates the dev CA the gateway reads.
  await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  const gw = await startGateway(t, dir, "dc1");
  const { port } = hostPort(gw.adminAddr);
  for (const path of ["/clusters", "/metrics", "/ready"]) {
    const ok = await get(gw.adminAddr, path, `127.0.0.1:${port}`);
    t.equal(ok.status, 200, `${path} with Host 127.0.0.1: 200`);
    t.equal((await get(gw.adminAddr, path, `localhost:${port}`)).status, 200, `${path} with Host localhost: 200`);
    const rebound = await get(gw.adminAddr, path, `evil.example:${port}`);
    t.equal(rebound.status, 421, `${path} with Host evil.example: 421`);
    t.notMatch(rebound.body, /mesh-gateway|envoy_/, "and nothing of the gateway's in the answer");
  }
});
