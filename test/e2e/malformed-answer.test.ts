// An app whose answer does not parse, through both sidecars, on the HTTP/1 core and on the
// node:http engine (undici to the app). A head that does not parse gets 502 UPE saying what
// failed, as Envoy answers an upstream protocol error before the response started, and the
// connection goes on serving. On the core, so do bad bytes in the read that carried a good head:
// that head has not left the sidecar yet (it waits for its body) and is taken back. Bad bytes
// after the head was sent can only cut the answer off: it is never completed or followed by
// bytes the app did not frame.
import t from "tap";
import { startSidecar, tcpApp, tempDir } from "../helpers/mesh.js";
import { configWrite, until } from "../helpers/l7.js";
import { once } from "node:events";
import { leafFor, readDevCa } from "../helpers/certs.js";
import { exchange, hasResponses, onRequestTargets, parseResponses, plainTo, tlsTo, type Opener } from "../helpers/raw-http.js";

const BAD_HEAD = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
const BAD_CHUNK = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nsmuggled\r\n0\r\n\r\n";
const LATE_HEAD = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";

for (const engine of ["llhttp", "node"] as const) {
t.test(`MESHPROXY_HTTP1_CORE=${engine === "llhttp" ? "(unset)" : engine}: an answer that fails in the read carrying its head: 502 UPE; after the head went out: a cut`, async (t) => {
  const dir = await tempDir(t);
  const env = { MESHPROXY_HTTP1_CORE: engine === "llhttp" ? undefined : "node" };
  const seen: string[] = [];
  const app = await tcpApp(t, (s) =>
    onRequestTargets(s, (path) => {
      seen.push(path);
      if (path === "/bad-head") s.write(BAD_HEAD);
      else if (path === "/bad-chunk") s.write(BAD_CHUNK);
      else if (path === "/late") {
        // The head and a first chunk in one read, the bad chunk in a later one.
        s.write(LATE_HEAD);
        setTimeout(() => s.write("zz\r\nsmuggled\r\n0\r\n\r\n"), 100);
      } else s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${path.length}\r\n\r\n${path}`);
    }),
  );
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  const api = await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`], env);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"], env);
  const leaf = await leafFor(await readDevCa(dir), "web");
  const paths: [string, Opener][] = [
    ["the public listener (mTLS from a caller with web's identity)", tlsTo(api.publicAddr!, leaf)],
    ["web's upstream listener (both sidecars)", plainTo(web.upstreams["api"]!)],
  ];
  const next = "GET /next HTTP/1.1\r\nHost: api\r\n\r\n";

  for (const [name, open] of paths) {
    // Conflicting framing: the head itself does not parse, on either engine.
    const head = await exchange(open, `GET /bad-head HTTP/1.1\r\nHost: api\r\n\r\n${next}`, { done: hasResponses(2), timeoutMs: 5_000 });
    const hs = parseResponses(head.data);
    t.same(
      hs.map((r) => [r.status, r.headers["x-meshproxy-response-flags"] ?? null]),
      [
        [502, "UPE"],
        [200, null],
      ],
      `${name}: a head that does not parse gets 502 UPE, then the next request its own answer`,
    );
    t.match(String(hs[0]?.body), /reset reason: protocol error: local app .*did not parse/, `${name}: the reply says what failed`);

    const x = await exchange(open, `GET /bad-chunk HTTP/1.1\r\nHost: api\r\n\r\n${next}`, { done: hasResponses(2), timeoutMs: 5_000 });
    const rs = parseResponses(x.data);
    t.notMatch(x.data.toString("latin1"), /smuggled/, `${name}: no byte of the bad answer reached the client`);
    if (engine === "llhttp") {
      t.same(
        rs.map((r) => [r.status, r.headers["x-meshproxy-response-flags"] ?? null, String(r.body)]),
        [
          [502, "UPE", rs[0] ? String(rs[0].body) : ""],
          [200, null, "/next"],
        ],
        `${name}: the held head was taken back: 502 UPE, then the next request's own answer`,
      );
      t.match(String(rs[0]?.body), /did not parse: Invalid character in chunk size/, `${name}: the reply says what failed`);
    } else {
      // node:http has the head written when undici reports the error: the client's connection goes.
      t.ok(x.closed && !rs.some((r) => r.status === 200 && String(r.body) !== "/next"), `${name}: the node:http engine closes the connection, nothing of the bad answer passed on`);
    }

    const late = await exchange(open, "GET /late HTTP/1.1\r\nHost: api\r\n\r\n", { timeoutMs: 5_000 });
    const text = late.data.toString("latin1");
    t.ok(late.closed, `${name}: a bad chunk after the head was sent closes the client's connection`);
    t.match(text, /^HTTP\/1\.1 200 /, `${name}: the head and first chunk had gone out`);
    t.notMatch(text, /smuggled|\r\n0\r\n\r\n/, `${name}: the cut answer is not completed, nor followed by the bad bytes`);
  }

  if (engine === "llhttp") {
    // A taken-back head answered before the request body was read: the 502 closes the caller's
    // connection, so body bytes sent after it are never read as a request (the rule for any
    // answer that starts before its request's body is read).
    const s = await paths[0]![1]();
    let got = "";
    s.on("data", (d: Buffer) => (got += d.toString("latin1")));
    const closed = once(s, "close");
    s.write("POST /bad-chunk HTTP/1.1\r\nHost: api\r\nContent-Length: 60\r\n\r\n");
    await until(() => got.includes("reset reason: protocol error"), 5_000, "the 502 to a POST whose body is not sent yet");
    s.write("GET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n".padEnd(60, "x"));
    await closed;
    t.match(got, /^HTTP\/1\.1 502 [^]*connection: close\r\n/, "the 502 says the connection closes");
    t.equal(parseResponses(Buffer.from(got, "latin1")).length, 1, "one answer on that connection");
    t.notOk(seen.includes("/smuggled"), "the bytes sent after the answer never reached the app as a request");
  }

  const bad = await api.waitForLog((l) => l["@message"] === "local app request failed" && /did not parse|content-length/i.test(String(l["error"])), 5_000);
  t.ok(bad, "the inbound sidecar logged the app's bad answer");
});
}
