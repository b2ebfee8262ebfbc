// The inbound side keeps its pool to the local app across Snapshots that do not change the app
// (address, HTTP/2, connect timeout): a keep-alive connection to the app is reused, not
// replaced on every configuration change (which cost a reconnect per Snapshot and, in the
// benchmark's weight change, most of the p99).
import t from "tap";
import { once } from "node:events";
import { createServer, type Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { request } from "undici";
import { startSidecar, tempDir } from "../helpers/mesh.js";
import { configDump, configWrite, until } from "../helpers/l7.js";

async function app(t: { teardown(fn: () => unknown): void }): Promise<{ server: Server; port: number; connections: () => number }> {
  let n = 0;
  const server = createServer({ keepAliveTimeout: 60_000 }, (_req, res) => res.end("ok\n"));
  server.on("connection", (_s: Socket) => n++);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  return { server, port: (server.address() as AddressInfo).port, connections: () => n };
}

function upstreamProtocol(dump: unknown, name: string): string | undefined {
  if (typeof dump !== "object" || dump === null || !("upstreams" in dump) || !Array.isArray(dump.upstreams)) return undefined;
  for (const u of dump.upstreams as unknown[]) {
    if (typeof u === "object" && u !== null && "name" in u && u.name === name && "protocol" in u && typeof u.protocol === "string") return u.protocol;
  }
  return undefined;
}

t.test("a Snapshot that does not change the local app keeps the keep-alive connection to it", async (t) => {
  const dir = await tempDir(t);
  const a = await app(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  // api has an upstream of its own: a change to it is a new Snapshot for api's sidecar that has
  // nothing to do with api's app.
  const api = await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${a.port}`, "-upstream", "ghost:0"]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"]);
  const url = `http://${web.upstreams["api"]}/`;
  const get = async () => {
    const r = await request(url);
    await r.body.text();
    return r.statusCode;
  };
  t.equal(await get(), 200, "a request reaches the app");
  t.equal(await get(), 200, "and another");
  t.equal(a.connections(), 1, "over one keep-alive connection from api's sidecar");

  t.equal(upstreamProtocol(await configDump(api.adminAddr), "ghost"), "tcp", "api's upstream ghost is tcp");
  await configWrite(t, dir, { Kind: "service-defaults", Name: "ghost", Protocol: "http" });
  await until(async () => upstreamProtocol(await configDump(api.adminAddr), "ghost") === "http", 10_000, "api's sidecar to apply the Snapshot with ghost as http");

  t.equal(await get(), 200, "after the update a request still reaches the app");
  t.equal(a.connections(), 1, "over the same connection: the local-app pool was kept");
  t.equal(await web.stop(), 0, "web exits 0");
  t.equal(await api.stop(), 0, "api exits 0");
});
