// gRPC through the native library (dev control plane): a grpc-js server whose connections are
// mTLS with the mesh roots, callers verified and authorized, the caller's identity handed to the
// handler; a grpc-js client that resolves the service through the control plane and checks the
// server's SPIFFE ID.
import t from "tap";
import { tempDir } from "../helpers/mesh.js";
import { service } from "../helpers/native.js";
import { COUNT, SAY, grpc, serveGrpc, serverStream, unaryUntil } from "../helpers/grpc.js";

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
