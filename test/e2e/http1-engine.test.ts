// Which engine serves HTTP/1.1 on the public listener and on upstream listeners: the llhttp core
// by default (each says so once, with the Node version), node:http with MESHPROXY_HTTP1_CORE=node.
// Both answer the same.
import t from "tap";
import { startSidecar, tempDir } from "../helpers/mesh.js";
import { configWrite, httpApp } from "../helpers/l7.js";
import { leafFor, readDevCa } from "../helpers/certs.js";
import { exchange, hasResponses, parseResponses, plainTo, tlsTo } from "../helpers/raw-http.js";

const CORE_LINE = "serving HTTP/1.1 on the public listener with the llhttp core";
const OUTBOUND_CORE_LINE = "serving HTTP/1.1 on the upstream listener with the llhttp core";

for (const engine of ["llhttp", "node"] as const) {
  t.test(`MESHPROXY_HTTP1_CORE=${engine === "llhttp" ? "(unset)" : engine}`, async (t) => {
    const dir = await tempDir(t);
    const app = await httpApp(t, "api");
    await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
    // Unset (node's spawn leaves out undefined values) whatever the test's own environment holds.
    const env = { MESHPROXY_HTTP1_CORE: engine === "llhttp" ? undefined : "node" };
    const api = await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`], env);
    const leaf = await leafFor(await readDevCa(dir), "web");
    const x = await exchange(tlsTo(api.publicAddr!, leaf), "GET /x HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n", { done: hasResponses(1) });
    t.equal(parseResponses(x.data)[0]?.status, 200, "the app answers through the public listener");
    if (engine === "llhttp") {
      const line = await api.waitForLog((l) => l["@message"] === CORE_LINE, 5_000);
      t.match(String(line["node"]), /^v\d+\./, "the core was selected, and the log names the Node it self-tested on");
    } else {
      t.notOk(api.logs.some((l) => l["@message"] === CORE_LINE), "the node:http engine was used");
    }

    // The outbound side: web's upstream listener, routed and sent over mTLS to api's sidecar.
    const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"], env);
    const y = await exchange(plainTo(web.upstreams["api"]!), "GET /y HTTP/1.1\r\nHost: api\r\n\r\nGET /z HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n", { done: hasResponses(2) });
    t.same(
      parseResponses(y.data).map((r) => r.status),
      [200, 200],
      "two pipelined requests through the upstream listener are answered in order",
    );
    if (engine === "llhttp") {
      const line = await web.waitForLog((l) => l["@message"] === OUTBOUND_CORE_LINE, 5_000);
      t.match(String(line["node"]), /^v\d+\./, "the upstream listener took the core");
    } else {
      t.notOk(web.logs.some((l) => l["@message"] === OUTBOUND_CORE_LINE), "the upstream listener used node:http");
    }
  });
}
