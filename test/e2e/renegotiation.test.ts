// TLS 1.2 renegotiation started by a client is refused on the public listener, as Envoy (BoringSSL)
// refuses it: it buys a caller nothing a new connection would not, costs the proxy a full
// handshake each time, and is where renegotiation attacks live. Node's own guard only limits it
// (3 in 10 minutes); the contexts now set OpenSSL's SSL_OP_NO_RENEGOTIATION.
import t from "tap";
import { connect } from "node:tls";
import { once } from "node:events";
import { echoServer, startSidecar, tempDir } from "../helpers/mesh.js";
import { leafFor, readDevCa } from "../helpers/certs.js";

t.test("a TLS 1.2 client's renegotiation is refused; the connection's data before it went through", { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`]);
  const ca = await readDevCa(dir);
  const leaf = await leafFor(ca, "web");
  const [host, port] = db.publicAddr!.split(":") as [string, string];
  const s = connect({ host, port: Number(port), cert: leaf.certPem, key: leaf.keyPem, ca: ca.certPem, maxVersion: "TLSv1.2", rejectUnauthorized: false });
  t.teardown(() => s.destroy());
  await once(s, "secureConnect");
  t.equal(s.getProtocol(), "TLSv1.2");
  s.write("before\n");
  const [echoed] = (await once(s, "data")) as [Buffer];
  t.equal(echoed.toString(), "before\n", "the connection works before the attempt");
  const outcome = await new Promise<string>((resolve) => {
    s.on("error", (e: Error) => resolve(`error: ${e.message}`));
    s.on("close", () => resolve("closed"));
    const asked = s.renegotiate({ rejectUnauthorized: false }, (e) => resolve(e ? `refused: ${e.message}` : "renegotiated"));
    if (!asked) resolve("refused locally");
  });
  t.not(outcome, "renegotiated", `the server did not renegotiate (${outcome})`);
  // The sidecar goes on serving.
  const again = connect({ host, port: Number(port), cert: leaf.certPem, key: leaf.keyPem, ca: ca.certPem, rejectUnauthorized: false });
  t.teardown(() => again.destroy());
  await once(again, "secureConnect");
  again.write("after\n");
  const [back] = (await once(again, "data")) as [Buffer];
  t.equal(back.toString(), "after\n", "a new connection is served");
});
