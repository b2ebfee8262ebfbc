// An app whose answer does not parse, through both sidecars on the HTTP/1 core. When the bad
// bytes come in the read that carried the head, the head has not left the sidecar yet (it waits
// for its body): the client gets a local reply saying what failed, as Envoy answers an upstream
// protocol error before the response started, and the connection goes on serving. When they
// come after the head was sent, the answer can only be cut off: it is never completed or
// followed by bytes the app did not frame.
import t from "tap";
import { startSidecar, tcpApp, tempDir } from "../helpers/mesh.js";
import { configWrite } from "../helpers/l7.js";
import { leafFor, readDevCa } from "../helpers/certs.js";
import { exchange, hasResponses, onRequestTargets, parseResponses, plainTo, tlsTo, type Opener } from "../helpers/raw-http.js";

const BAD_CHUNK = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nsmuggled\r\n0\r\n\r\n";
const LATE_HEAD = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";

t.test("an answer that fails in the read carrying its head: a local reply; after the head went out: a cut", async (t) => {
  const dir = await tempDir(t);
  const app = await tcpApp(t, (s) =>
    onRequestTargets(s, (path) => {
      if (path === "/bad-chunk") s.write(BAD_CHUNK);
      else if (path === "/late") {
        // The head and a first chunk in one read, the bad chunk in a later one.
        s.write(LATE_HEAD);
        setTimeout(() => s.write("zz\r\nsmuggled\r\n0\r\n\r\n"), 100);
      } else s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${path.length}\r\n\r\n${path}`);
    }),
  );
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  const api = await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"]);
  const leaf = await leafFor(await readDevCa(dir), "web");
  const paths: [string, Opener][] = [
    ["the public listener (mTLS from a caller with web's identity)", tlsTo(api.publicAddr!, leaf)],
    ["web's upstream listener (both sidecars)", plainTo(web.upstreams["api"]!)],
  ];
  const next = "GET /next HTTP/1.1\r\nHost: api\r\n\r\n";

  for (const [name, open] of paths) {
    const x = await exchange(open, `GET /bad-chunk HTTP/1.1\r\nHost: api\r\n\r\n${next}`, { done: hasResponses(2), timeoutMs: 5_000 });
    const rs = parseResponses(x.data);
    t.notMatch(x.data.toString("latin1"), /smuggled/, `${name}: no byte of the bad answer reached the client`);
    t.equal(rs.length, 2, `${name}: two answers, one per request`);
    t.equal(rs[0]?.status, 503, `${name}: a local reply`);
    t.equal(rs[0]?.headers["x-meshproxy-response-flags"], "UF", `${name}: flagged as the proxy's own`);
    t.match(String(rs[0]?.body), /did not parse/, `${name}: the reply says what failed`);
    t.same([rs[1]?.status, String(rs[1]?.body)], [200, "/next"], `${name}: the connection goes on with the next request's own answer`);

    const late = await exchange(open, "GET /late HTTP/1.1\r\nHost: api\r\n\r\n", { timeoutMs: 5_000 });
    const text = late.data.toString("latin1");
    t.ok(late.closed, `${name}: a bad chunk after the head was sent closes the client's connection`);
    t.match(text, /^HTTP\/1\.1 200 /, `${name}: the head and first chunk had gone out`);
    t.notMatch(text, /smuggled|\r\n0\r\n\r\n/, `${name}: the cut answer is not completed, nor followed by the bad bytes`);
  }

  const bad = await api.waitForLog((l) => l["@message"] === "local app request failed" && /did not parse/.test(String(l["error"])), 5_000);
  t.ok(bad, "the inbound sidecar logged the app's bad answer");
});
