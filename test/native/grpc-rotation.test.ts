// Certificate and root rotation under a native gRPC server and an open native gRPC channel,
// driven by a control plane of the test's own, so the test decides when the leaf and roots change.
import t from "tap";
import { once } from "node:events";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { createRootCa, type IssuedLeaf } from "../../src/index.js";
import { service } from "../helpers/native.js";
import { TD, TestControlPlane, leaf } from "../helpers/test-control-plane.js";
import { COUNT, SAY, grpc, serveGrpc, serverStream, unary, unaryUntil } from "../helpers/grpc.js";

/** The serial of the leaf a fresh h2 connection to `port` is served, trusting `roots`. */
async function servedSerial(port: number, roots: string[], client: IssuedLeaf): Promise<string> {
  const s: TLSSocket = tlsConnect({ host: "127.0.0.1", port, ca: roots, cert: client.certPem, key: client.keyPem, servername: "api", ALPNProtocols: ["h2"], checkServerIdentity: () => undefined });
  await once(s, "secureConnect");
  const serial = s.getPeerCertificate().serialNumber;
  s.destroy();
  return serial.replace(/:/g, "").replace(/^0+/, "").toLowerCase();
}

const plain = (serial: string) => serial.replace(/:/g, "").replace(/^0+/, "").toLowerCase();

t.test("a new leaf, then new roots, under an open channel: no call fails, nothing reconnects, new connections get the new material", async (t) => {
  const ca1 = await createRootCa(TD);
  const webLeaf = await leaf(ca1, "web");
  const apiCp = new TestControlPlane("api", await leaf(ca1, "api"), [ca1.certPem]);
  const webCp = new TestControlPlane("web", webLeaf, [ca1.certPem]);
  const api = await service(t, { name: "api", controlPlane: apiCp });
  const web = await service(t, { name: "web", controlPlane: webCp });
  const served = await serveGrpc(t, api);
  const connections: number[] = [];
  served.listener.on("secureConnection", (s: TLSSocket) => connections.push(s.remotePort ?? 0));
  webCp.set({ apiPort: served.port });
  const client = web.grpcClient(grpc, grpc.Client, "api");
  t.teardown(() => client.close());
  t.equal((await unaryUntil(client, SAY, "1")).text, "api says 1 to web", "a first call");
  t.equal(apiCp.announced?.port, served.port, "api registered the port its gRPC listener listens on");

  const next = await leaf(ca1, "api");
  apiCp.set({ leaf: next });
  t.equal(api.snapshot.identity.serial, next.serial, "api applied its new leaf");
  t.equal((await unary(client, SAY, "2")).text, "api says 2 to web", "the open channel's next call succeeds");
  t.same((await serverStream(client, COUNT, "s")).length, 3, "and a streaming call");
  t.equal(connections.length, 1, "on the connection it had");
  t.equal(await servedSerial(served.port, [ca1.certPem], webLeaf), plain(next.serial), "a new connection is served the new leaf");

  // Roots grow first everywhere, then api moves to a leaf of the new root, then the old root goes.
  const ca2 = await createRootCa(TD, { commonName: "rotated root" });
  webCp.set({ roots: [ca1.certPem, ca2.certPem] });
  apiCp.set({ roots: [ca1.certPem, ca2.certPem], leaf: await leaf(ca2, "api") });
  t.equal((await unary(client, SAY, "3")).text, "api says 3 to web", "the open channel's calls carry on across the root rotation");
  webCp.set({ roots: [ca2.certPem] });
  const fresh = web.grpcClient(grpc, grpc.Client, "api", { "grpc.use_local_subchannel_pool": 1 });
  t.teardown(() => fresh.close());
  t.equal((await unary(fresh, SAY, "4")).text, "api says 4 to web", "a new channel verifies api's new leaf against the new root only");
  t.equal(connections.length, 2, "that took one new connection; the old channel never reconnected");
  t.equal((await unary(client, SAY, "5")).text, "api says 5 to web", "and the old channel still works");
});
