// The first h2c requests an app sends to an HTTP/1.1 upstream are the ones that wait for undici to
// load (src/http/undici.ts): they reach the destination's sidecar only after that load, all at
// once. Sent together as a caller's very first requests, hostile paths among them (dot segments,
// encoded dot segments, an encoded slash, a denied prefix) must each be refused by the
// destination's L7 intentions, and the app must see only the requests that were allowed.
import t from "tap";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { connect as http2Connect } from "node:http2";
import { startSidecar, tempDir } from "../helpers/mesh.js";
import { configWrite, httpApp } from "../helpers/l7.js";

const POLICY = {
  default_action: "deny",
  intentions: [{ source: "web", destination: "api", permissions: [{ action: "allow", http: { path_prefix: "/public/" } }] }],
};

const ALLOWED = ["/public/a", "/public/b?x=1"];
const HOSTILE = ["/admin", "/public/../admin", "/public/%2e%2e/admin", "/public/%2E%2E%2fadmin", "/public%2f../admin", "//admin", "/PUBLIC/a"];

t.test("an app's first h2c requests, sent before undici is loaded, are authorized one by one", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  await writeFile(join(dir, "intentions.json"), JSON.stringify(POLICY));
  const seen: string[] = [];
  const app = await httpApp(t, "api", (req, res) => {
    seen.push(req.url ?? "");
    req.resume();
    res.end("api\n");
  });
  await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"]);

  const session = http2Connect(`http://${web.upstreams["api"]}`);
  t.teardown(() => session.close());
  const ask = (path: string): Promise<number> =>
    new Promise((resolve, reject) => {
      const s = session.request({ ":path": path });
      let status = 0;
      s.on("response", (h) => (status = Number(h[":status"])));
      s.on("end", () => resolve(status));
      s.on("error", reject);
      s.resume();
    });
  // All at once, as the sidecar's first requests: every one waits on the same load.
  const paths = [...ALLOWED, ...HOSTILE];
  const statuses = await Promise.all(paths.map(ask));

  for (const [i, p] of paths.entries()) {
    if (ALLOWED.includes(p)) t.equal(statuses[i], 200, `${p} is allowed`);
    else t.ok(statuses[i] === 403 || statuses[i] === 400, `${p} is refused (${statuses[i]})`);
  }
  t.same(
    seen.filter((u) => !u.startsWith("/public/")),
    [],
    "the app saw no request outside /public/",
  );
  t.same(seen.slice().sort(), ALLOWED.slice().sort(), "the app saw exactly the allowed requests, as sent");
});
