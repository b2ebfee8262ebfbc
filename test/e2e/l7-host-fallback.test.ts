// A permission on `host` reads the host the app is sent. A caller that sends none (HTTP/1.0) or
// nominates its Host in Connection (which the sidecar then drops) gets the app's own address
// (`127.0.0.1:<port>`) filled in by the sidecar; the permission used to read the host as absent,
// so a deny on a host prefix of 127.0.0.1 passed a request the app saw with exactly that host.
// Both HTTP/1.1 engines of the public listener.
import t from "tap";
import { once } from "node:events";
import { rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createServer as createNetServer, type AddressInfo, type Socket } from "node:net";
import { startSidecar, tempDir } from "../helpers/mesh.js";
import { configDump, configWrite, until } from "../helpers/l7.js";
import { leafFor, readDevCa } from "../helpers/certs.js";
import { exchange, hasResponses, parseResponses, tlsTo } from "../helpers/raw-http.js";

/** Heads the app got, and a 200 for each. */
const heads: string[] = [];
const rawApp = createNetServer((s: Socket) => {
  let buf = "";
  s.on("error", () => s.destroy());
  s.on("data", (d: Buffer) => {
    buf += d.toString("latin1");
    for (let end = buf.indexOf("\r\n\r\n"); end >= 0; end = buf.indexOf("\r\n\r\n")) {
      heads.push(buf.slice(0, end));
      buf = buf.slice(end + 4);
      s.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    }
  });
});
rawApp.listen(0, "127.0.0.1");
await once(rawApp, "listening");
t.teardown(() => rawApp.close());
const appPort = (rawApp.address() as AddressInfo).port;

const permissions = [
  { action: "deny", http: { header: [{ name: "host", prefix: "127.0.0.1" }] } },
  { action: "allow", http: { path_prefix: "/" } },
];
const dir = await tempDir(t);
await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
await configWrite(t, dir, { Kind: "service-defaults", Name: "api2", Protocol: "http" });
const file = join(dir, "intentions.json");
await writeFile(
  `${file}.tmp`,
  JSON.stringify({ default_action: "deny", intentions: [{ source: "web", destination: "api", permissions }, { source: "web", destination: "api2", permissions }] }),
);
await rename(`${file}.tmp`, file);
const engines = [
  { name: "llhttp core", sidecar: await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${appPort}`], { MESHPROXY_HTTP1_CORE: "llhttp" }) },
  { name: "node:http", sidecar: await startSidecar(t, dir, ["-service", "api2", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${appPort}`], { MESHPROXY_HTTP1_CORE: "node" }) },
];
for (const e of engines) await until(async () => JSON.stringify(await configDump(e.sidecar.adminAddr)).includes('"127.0.0.1"'), 10_000, "the L7 intentions to be applied");
const webLeaf = await leafFor(await readDevCa(dir), "web");

for (const { name, sidecar } of engines) {
  t.test(`${name}: a deny on host holds for the host the sidecar fills in`, async (t) => {
    const open = tlsTo(sidecar.publicAddr!, webLeaf);
    const status = async (payload: string) => parseResponses((await exchange(open, payload, { done: hasResponses(1) })).data, { closed: true })[0]?.status;
    heads.length = 0;
    t.equal(await status("GET /sent HTTP/1.1\r\nHost: 127.0.0.1:80\r\nConnection: close\r\n\r\n"), 403, "control: a Host the caller sends is denied");
    t.equal(await status("GET /ok HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"), 200, "control: another host is allowed");
    t.equal(await status("GET /no-host HTTP/1.0\r\n\r\n"), 403, "HTTP/1.0 without Host: the app would get 127.0.0.1:<port>, denied");
    t.equal(await status("GET /nominated HTTP/1.1\r\nHost: api\r\nConnection: host, close\r\n\r\n"), 403, "Host nominated away: the app would get 127.0.0.1:<port>, denied");
    const seen = heads.map((h) => h.split("\r\n")[0]);
    t.same(seen, ["GET /ok HTTP/1.1"], "the app got only the allowed request");
  });
}
