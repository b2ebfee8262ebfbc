// gRPC through the native library (dev control plane): a grpc-js server whose connections are
// mTLS with the mesh roots, callers verified and authorized, the caller's identity handed to the
// handler; a grpc-js client that resolves the service through the control plane and checks the
// server's SPIFFE ID.
import t from "tap";
import { tempDir } from "../helpers/mesh.js";
import { service } from "../helpers/native.js";
import { createRootCa } from "../../src/index.js";
import { TD, TestControlPlane, leaf } from "../helpers/test-control-plane.js";
import { COUNT, SAY, grpc, serveGrpc, serverStream, statusOf, unary, unaryUntil } from "../helpers/grpc.js";

t.test("native client → native server: a unary and a server-streaming call", async (t) => {
  const dir = await tempDir(t);
  const api = await service(t, { name: "api", dataDir: dir });
  const web = await service(t, { name: "web", dataDir: dir });
  const served = await serveGrpc(t, api);
  const client = web.grpcClient(grpc, grpc.Client, "api");
  t.teardown(() => client.close());
  const res = await unaryUntil(client, SAY, "hello");
  t.equal(res.text, "api says hello to web", "the handler answered, and peerOfCall named the caller");
  const streamed = await serverStream(client, COUNT, "n");
  t.same(streamed.map((m) => m.text), ["n 1", "n 2", "n 3"], "every streamed message arrived");
  t.same(served.seen, [`${SAY} from web`, `${COUNT} from web`], "the server saw both calls from web");
});

t.test("the client checks the server's SPIFFE ID, not its address: an impostor is never called", async (t) => {
  const ca = await createRootCa(TD);
  const webCp = new TestControlPlane("web", await leaf(ca, "web"), [ca.certPem]);
  const impostorCp = new TestControlPlane("evil", await leaf(ca, "evil"), [ca.certPem]);
  const web = await service(t, { name: "web", controlPlane: webCp });
  const impostor = await service(t, { name: "evil", controlPlane: impostorCp });
  const served = await serveGrpc(t, impostor);
  // The catalog says api listens where evil does; evil's certificate is valid, for evil.
  webCp.set({ apiPort: served.port });
  const client = web.grpcClient(grpc, grpc.Client, "api");
  t.teardown(() => client.close());
  const s = await statusOf(unary(client, SAY, "secret", 3_000));
  t.ok(s.code === grpc.status.UNAVAILABLE || s.code === grpc.status.DEADLINE_EXCEEDED, `the call fails (${s.code} ${s.details})`);
  t.match(s.details, /peer certificate mismatch: got spiffe:\/\/[^ ]+\/svc\/evil, want spiffe:\/\/[^ ]+\/svc\/api/, "saying whose certificate came back");
  t.same(served.seen, [], "the impostor's handler never ran");
});
