// HTTP/2 through the mesh for an http2 service: an h2c client to the upstream listener, h2 over
// mTLS between the sidecars (negotiated by ALPN), h2c to the app.
import t from "tap";
import { connect as h2connect, createServer as createH2Server, type IncomingHttpHeaders } from "node:http2";
import { connect as tlsConnect } from "node:tls";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { startSidecar, tempDir, hostPort } from "../helpers/mesh.js";
import { configWrite } from "../helpers/l7.js";
import { readDevCa, leafFor } from "../helpers/certs.js";

t.test("an http2 service is reached over h2 end to end", async (t) => {
  const dir = await tempDir(t);
  // The app speaks h2c only: an HTTP/1.1 request to it would fail.
  const seen: Array<{ path: string; version: string; xfcc: boolean }> = [];
  const app = createH2Server((req, res) => {
    seen.push({ path: req.url, version: req.httpVersion, xfcc: typeof req.headers["x-forwarded-client-cert"] === "string" });
    let n = 0;
    req.on("data", (d: Buffer) => (n += d.length));
    req.on("end", () => res.end(`h2 app: ${req.url} ${n} bytes`));
  });
  app.listen(0, "127.0.0.1");
  await once(app, "listening");
  t.teardown(() => new Promise<void>((r) => app.close(() => r())));
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http2" });
  const api = await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${(app.address() as AddressInfo).port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"]);

  const client = h2connect(`http://${web.upstreams["api"]}`);
  t.teardown(() => client.close());
  const body = await new Promise<string>((resolve, reject) => {
    const st = client.request({ ":path": "/hello", ":method": "POST" });
    let d = "";
    st.setEncoding("utf8").on("data", (c: string) => (d += c));
    st.on("end", () => resolve(d));
    st.on("error", reject);
    st.end("x".repeat(1000));
  });
  t.equal(body, "h2 app: /hello 1000 bytes", "an h2c request crossed the mesh with its body");
  t.same(seen[0], { path: "/hello", version: "2.0", xfcc: true }, "the app got HTTP/2 from its sidecar, with the caller's identity");

  // The public listener offers h2 by ALPN for an http2 service.
  const ca = await readDevCa(dir);
  const leaf = await leafFor(ca, "web");
  const { host, port } = hostPort(api.publicAddr!);
  const s = tlsConnect({ host, port, cert: leaf.certPem, key: leaf.keyPem, ca: [ca.certPem], ALPNProtocols: ["h2", "http/1.1"], checkServerIdentity: () => undefined });
  await once(s, "secureConnect");
  t.equal(s.alpnProtocol, "h2", "sidecar-to-sidecar connections negotiate h2");
  s.destroy();
});

t.test("a grpc service carries trailers (grpc-status) end to end", async (t) => {
  const dir = await tempDir(t);
  const app = createH2Server();
  app.on("stream", (st, h) => {
    st.resume();
    st.on("end", () => {
      st.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      st.on("wantTrailers", () => st.sendTrailers({ "grpc-status": "0", "grpc-message": "ok" }));
      st.end(`grpc app: ${String(h[":path"])} te=${String(h["te"])}`);
    });
  });
  app.listen(0, "127.0.0.1");
  await once(app, "listening");
  t.teardown(() => new Promise<void>((r) => app.close(() => r())));
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "grpc" });
  await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${(app.address() as AddressInfo).port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"]);
  const client = h2connect(`http://${web.upstreams["api"]}`);
  t.teardown(() => client.close());
  const got = await new Promise<{ body: string; trailers: Record<string, unknown>; status: unknown }>((resolve, reject) => {
    const st = client.request({ ":path": "/pkg.Greeter/Hello", ":method": "POST", "content-type": "application/grpc", te: "trailers" });
    let body = "";
    let trailers: Record<string, unknown> = {};
    let status: unknown;
    st.on("response", (h) => (status = h[":status"]));
    st.on("trailers", (tr: IncomingHttpHeaders) => (trailers = { ...tr }));
    st.setEncoding("utf8").on("data", (c: string) => (body += c));
    st.on("end", () => resolve({ body, trailers, status }));
    st.on("error", reject);
    st.end(Buffer.alloc(5));
  });
  t.equal(got.status, 200);
  t.equal(got.body, "grpc app: /pkg.Greeter/Hello te=trailers", "the request reached the app with te: trailers");
  t.match(got.trailers, { "grpc-status": "0", "grpc-message": "ok" }, "the app's trailers reached the client through both sidecars");
});
