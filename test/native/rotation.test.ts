// Certificate and root rotation under a live native server and a pooled native client, driven by
// a control plane of the test's own (the ControlPlane interface, with addUpstream), so the test
// decides exactly when the leaf and the roots change.
import t from "tap";
import { once } from "node:events";
import { randomBytes } from "node:crypto";
import { createServer as createHttpsServer } from "node:https";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import type { AddressInfo } from "node:net";
import { fetch } from "undici";
import { createRootCa, type IssuedLeaf } from "../../src/index.js";
import { service } from "../helpers/native.js";
import type { Teardown } from "../helpers/mesh.js";
import { TD, TestControlPlane, leaf } from "../helpers/test-control-plane.js";

/** The serial of the certificate a fresh connection to `port` is served, verified against `roots` with `client`'s leaf. */
async function servedSerial(port: number, roots: string[], client: IssuedLeaf): Promise<string> {
  const s: TLSSocket = tlsConnect({ host: "127.0.0.1", port, ca: roots, cert: client.certPem, key: client.keyPem, servername: "api", checkServerIdentity: () => undefined });
  await once(s, "secureConnect");
  const serial = s.getPeerCertificate().serialNumber.toLowerCase();
  s.destroy();
  return serial;
}

const plain = (serial: string) => serial.replace(/:/g, "").replace(/^0+/, "");

async function setup(t: Teardown) {
  const ca1 = await createRootCa(TD);
  const apiCp = new TestControlPlane("api", await leaf(ca1, "api"), [ca1.certPem]);
  const webLeaf = await leaf(ca1, "web");
  const webCp = new TestControlPlane("web", webLeaf, [ca1.certPem]);
  const api = await service(t, { name: "api", controlPlane: apiCp });
  const web = await service(t, { name: "web", controlPlane: webCp });
  const connections: string[] = [];
  let release: (() => void) | null = null;
  let arrived: () => void = () => {};
  const slowArrived = new Promise<void>((r) => (arrived = r));
  const server = api.createServer((req, res) => {
    const answer = () => res.end(`${req.url} on ${req.socket.remotePort}`);
    if (req.url !== "/slow") return answer();
    release = answer;
    arrived();
  });
  server.on("secureConnection", (s: TLSSocket) => connections.push(String(s.remotePort)));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => new Promise<void>((r) => (server.close(() => r()), server.closeAllConnections())));
  const port = (server.address() as AddressInfo).port;
  webCp.set({ apiPort: port });
  const get = async (path: string) => {
    const r = await fetch(`https://api.service.consul${path}`, { dispatcher: web.dispatcher() });
    return r.text();
  };
  return { ca1, api, apiCp, web, webCp, webLeaf, server, port, connections, get, slowArrived, releaseSlow: () => release?.() };
}

t.test("a new leaf is served to new connections; pooled connections carry on", async (t) => {
  const m = await setup(t);
  const first = await m.get("/one");
  t.equal(m.apiCp.announced?.port, m.port, "api registered the port its server listens on");
  t.equal(m.connections.length, 1, "one connection so far");
  const next = await leaf(m.ca1, "api");
  m.apiCp.set({ leaf: next });
  t.equal(m.api.snapshot.identity.serial, next.serial, "api applied the new leaf");
  const second = await m.get("/two");
  t.equal(second.split(" on ")[1], first.split(" on ")[1], "web's pooled connection is still the one it had");
  t.equal(m.connections.length, 1, "and no new connection was needed");
  t.equal(plain(await servedSerial(m.port, [m.ca1.certPem], m.webLeaf)), plain(next.serial), "a new connection is served the new leaf");
});

t.test("new roots: a request in flight finishes, the next one verifies the server against the new root", async (t) => {
  const m = await setup(t);
  await m.get("/warm");
  const slow = m.get("/slow");
  await m.slowArrived;
  const ca2 = await createRootCa(TD, { commonName: "rotated root" });
  const both = [m.ca1.certPem, ca2.certPem];
  // The roots grow first everywhere (both trusted), then api moves to a leaf of the new root.
  m.webCp.set({ roots: both });
  m.apiCp.set({ roots: both, leaf: await leaf(ca2, "api") });
  m.releaseSlow();
  t.match(await slow, /^\/slow on \d+$/, "the request in flight across the rotation was answered");
  const after = await m.get("/after");
  t.match(after, /^\/after on \d+$/, "a request after the rotation succeeds against the new root");
  m.webCp.set({ roots: [ca2.certPem] });
  t.match(await m.get("/only-new"), /^\/only-new on \d+$/, "and once only the new root is trusted");
  await t.rejects(servedSerial(m.port, [m.ca1.certPem], m.webLeaf), "a client trusting only the old root cannot verify api any more");
});

t.test("close() withdraws the registration", async (t) => {
  const m = await setup(t);
  await m.get("/x");
  await m.api.close();
  t.equal(m.apiCp.withdrawn >= 1, true, "api deregistered on close");
});

// An app may build its server with ticket keys of its own (node:cluster workers sharing
// resumption). Kept across a roots change, they resumed a session whose client certificate was
// verified against roots since dropped: a resumed handshake carries no chain to verify again.
t.test("an app's own ticketKeys do not carry a session across a roots change: the caller is verified again", async (t) => {
  const ca1 = await createRootCa(TD);
  const apiCp = new TestControlPlane("api", await leaf(ca1, "api"), [ca1.certPem]);
  const api = await service(t, { name: "api", controlPlane: apiCp });
  const appKeys = randomBytes(48);
  const server = api.attach(createHttpsServer({ ...api.serverTLSOptions(), ticketKeys: appKeys }, (_req, res) => res.end("ok")));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => new Promise<void>((r) => (server.close(() => r()), server.closeAllConnections())));
  const port = (server.address() as AddressInfo).port;
  const webLeaf = await leaf(ca1, "web");
  const connectAs = async (session?: Buffer): Promise<{ socket: TLSSocket; session: Promise<Buffer> }> => {
    const socket = tlsConnect({ host: "127.0.0.1", port, ca: [ca1.certPem], cert: webLeaf.certPem, key: webLeaf.keyPem, servername: "api", checkServerIdentity: () => undefined, ...(session ? { session } : {}) });
    t.teardown(() => socket.destroy());
    const next = new Promise<Buffer>((r) => socket.once("session", r));
    await once(socket, "secureConnect");
    return { socket, session: next };
  };
  const first = await connectAs();
  const session = await first.session;
  first.socket.destroy();
  const resumed = await connectAs(session);
  t.ok(resumed.socket.isSessionReused(), "control: the session resumes while the roots are the same");
  resumed.socket.destroy();
  // api now trusts only a new root: web's leaf (of ca1) is no longer a mesh identity to it.
  const ca2 = await createRootCa(TD, { commonName: "rotated root" });
  apiCp.set({ roots: [ca1.certPem, ca2.certPem], leaf: await leaf(ca2, "api") });
  apiCp.set({ roots: [ca2.certPem] });
  const after = tlsConnect({ host: "127.0.0.1", port, ca: [ca2.certPem], cert: webLeaf.certPem, key: webLeaf.keyPem, servername: "api", checkServerIdentity: () => undefined, session });
  t.teardown(() => after.destroy());
  const outcome = await new Promise<string>((resolve) => {
    after.on("secureConnect", () => {
      const reused = after.isSessionReused();
      after.write("GET / HTTP/1.1\r\nHost: api\r\n\r\n");
      after.once("data", (d: Buffer) => resolve(`${reused ? "resumed" : "full handshake"}, answered ${d.toString().split("\r\n")[0]}`));
    });
    after.on("close", () => resolve("closed"));
    after.on("error", (e: Error) => resolve(`refused: ${e.message}`));
  });
  t.notMatch(outcome, /answered HTTP\/1\.1 200/, `a caller whose certificate the current roots do not verify is not served (${outcome})`);
});
