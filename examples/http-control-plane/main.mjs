// Runs the HTTP-fed control plane end to end: a config server of "your own", an echo app, and
// two meshproxy instances (db with a public listener, web with an upstream to db), then sends a
// line from web's upstream listener to the echo app over mTLS and prints what came back.
//
//   npm ci && node examples/http-control-plane/main.mjs
import { createServer } from "node:http";
import { createServer as createTcpServer, connect } from "node:net";
import { once } from "node:events";
import { createHash } from "node:crypto";
import { Proxy, createLogger, createRootCa, issueLeaf } from "meshproxy";
import { HttpControlPlane } from "./http-control-plane.mjs";

const log = createLogger({ level: "warn" });
const trustDomain = "11111111-2222-3333-4444-555555555555.consul";
const ca = await createRootCa(trustDomain);
const leaf = (service) => issueLeaf(ca, { spiffeId: `spiffe://${trustDomain}/ns/default/dc/dc1/svc/${service}`, commonName: service, ttlMs: 3600_000 });
const [dbLeaf, webLeaf] = await Promise.all([leaf("db"), leaf("web")]);

const echo = createTcpServer({ allowHalfOpen: true }, (s) => s.pipe(s));
echo.listen(0, "127.0.0.1");
await once(echo, "listening");

// The config server: one JSON document per service, with an ETag so polls are cheap.
const docs = {
  db: { service: "db", cert_pem: dbLeaf.certPem, key_pem: dbLeaf.keyPem, roots_pem: [ca.certPem], public_listener: { bind: "127.0.0.1:0", local_app: `127.0.0.1:${echo.address().port}` }, upstreams: [] },
  web: { service: "web", cert_pem: webLeaf.certPem, key_pem: webLeaf.keyPem, roots_pem: [ca.certPem], upstreams: [] },
};
const configServer = createServer((req, res) => {
  const doc = docs[req.url.replace("/config/", "")];
  if (!doc) return res.writeHead(404).end();
  const body = JSON.stringify(doc);
  const etag = `"${createHash("sha1").update(body).digest("hex")}"`;
  if (req.headers["if-none-match"] === etag) return res.writeHead(304).end();
  res.writeHead(200, { "content-type": "application/json", etag }).end(body);
});
configServer.listen(0, "127.0.0.1");
await once(configServer, "listening");
const base = `http://127.0.0.1:${configServer.address().port}/config`;

const db = new Proxy({ logger: log, controlPlane: new HttpControlPlane({ url: `${base}/db`, pollMs: 200 }) });
const dbAddrs = await db.start();
// Now that db's listener has a port, tell web where db is: the config server is the source of truth.
docs.web.upstreams = [{ name: "db", bind: "127.0.0.1:0", endpoints: [dbAddrs.public] }];
const web = new Proxy({ logger: log, controlPlane: new HttpControlPlane({ url: `${base}/web`, pollMs: 200 }) });
const webAddrs = await web.start();

const [host, port] = webAddrs.upstreams.db.split(":");
const sock = connect({ host, port: Number(port), allowHalfOpen: true });
let reply = "";
sock.setEncoding("utf8").on("data", (d) => (reply += d));
sock.end("hello through a control plane of my own\n");
await once(sock, "close");
process.stdout.write(`web → db over mTLS, configured from ${base}: ${reply}`);

await Promise.all([web.stop(), db.stop()]);
configServer.close();
echo.close();
