// Native gRPC and meshproxy sidecars in one mesh (dev control plane, protocol grpc): a native
// client calls a grpc-js server fronted by a sidecar, and a grpc-js client calls a native gRPC
// server through its sidecar's upstream listener.
import t from "tap";
import { startSidecar, tempDir } from "../helpers/mesh.js";
import { configWrite } from "../helpers/l7.js";
import { intentions, service } from "../helpers/native.js";
import { COUNT, FAIL, RESET, SAY, grpc, serveGrpc, servePlainGrpc, serverStream, statusOf, unary, unaryUntil } from "../helpers/grpc.js";

t.test("native client → grpc-js server behind a sidecar", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "db", Protocol: "grpc" });
  await intentions(dir, "allow", [{ source: "web", destination: "db", permissions: [{ action: "deny", http: { path_exact: RESET } }, { action: "allow", http: { path_prefix: "/" } }] }]);
  const app = await servePlainGrpc(t, "db");
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  const web = await service(t, { name: "web", dataDir: dir });
  const client = web.grpcClient(grpc, grpc.Client, "db");
  t.teardown(() => client.close());
  t.equal((await unaryUntil(client, SAY, "hi")).text, "db says hi to ?", "a unary call went through db's sidecar to the app");
  t.same((await serverStream(client, COUNT, "n")).map((m) => m.text), ["n 1", "n 2", "n 3"], "a server-streaming call too");
  const denied = await statusOf(unary(client, RESET, "x"));
  t.equal(denied.code, grpc.status.PERMISSION_DENIED, "the sidecar's per-method L7 deny reaches the native client as PERMISSION_DENIED");
  t.same(await statusOf(unary(client, FAIL, "7")), { code: grpc.status.NOT_FOUND, details: "no row 7" }, "the app's error status (a trailers-only answer) reaches the native client as the app sent it");
  t.same(app.seen, [`${SAY} from ?`, `${COUNT} from ?`, `${FAIL} from ?`], "the app saw the allowed calls only");
  t.equal(db.logs.filter((l) => l["@message"] === "inbound connection refused").length, 0, "db's sidecar refused no connection: web's identity is the mesh's");
});

t.test("grpc-js client → sidecar upstream listener → native gRPC server", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "grpc" });
  await intentions(dir, "allow", [{ source: "web", destination: "api", permissions: [{ action: "deny", http: { path_exact: RESET } }, { action: "allow", http: { path_prefix: "/" } }] }]);
  const api = await service(t, { name: "api", dataDir: dir });
  const served = await serveGrpc(t, api);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"]);
  const client = new grpc.Client(web.upstreams["api"]!, grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  t.equal((await unaryUntil(client, SAY, "hi")).text, "api says hi to web", "the native server answered and saw the sidecar's identity (web)");
  t.same((await serverStream(client, COUNT, "n")).map((m) => m.text), ["n 1", "n 2", "n 3"], "a server-streaming call too");
  const denied = await statusOf(unary(client, RESET, "x"));
  t.equal(denied.code, grpc.status.PERMISSION_DENIED, "the native server's per-method deny reaches the app behind the sidecar as PERMISSION_DENIED");
  t.match(denied.details, /permission 1: deny/, "with the reason");
  t.same(await statusOf(unary(client, FAIL, "7")), { code: grpc.status.NOT_FOUND, details: "no row 7" }, "the native handler's error status reaches the app as it was sent");
  t.same(served.seen, [`${SAY} from web`, `${COUNT} from web`, `${FAIL} from web`], "no refused call reached a handler");
});

// grpc-js answers any status that precedes a message "trailers-only" (grpc-status in the HEADERS
// frame that ends the stream); sidecars used to forward that as headers plus an empty DATA frame,
// which gRPC clients fail with INTERNAL "Call ended without gRPC status".
t.test("an app's error status crosses two sidecars as the app sent it; the sidecar's own refusal is a gRPC status", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "db", Protocol: "grpc" });
  await intentions(dir, "allow", [{ source: "web", destination: "db", permissions: [{ action: "deny", http: { path_exact: RESET } }, { action: "allow", http: { path_prefix: "/" } }] }]);
  const app = await servePlainGrpc(t, "db");
  await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  const client = new grpc.Client(web.upstreams["db"]!, grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  await unaryUntil(client, SAY, "x");
  t.same(await statusOf(unary(client, FAIL, "7")), { code: grpc.status.NOT_FOUND, details: "no row 7" }, "NOT_FOUND with the app's message");
  t.equal((await unary(client, SAY, "y")).text, "db says y to ?", "and the channel carries on");
  // As Envoy answers a gRPC call locally: HTTP 200 with grpc-status, and the reason as grpc-message
  // (a bare HTTP 403 reaches gRPC clients as PERMISSION_DENIED with no reason).
  const denied = await statusOf(unary(client, RESET, "x"));
  t.equal(denied.code, grpc.status.PERMISSION_DENIED, "db's sidecar's per-method deny is PERMISSION_DENIED");
  t.match(denied.details, /^RBAC: access denied: .*deny/, `with the sidecar's reason: ${denied.details}`);
  t.equal((await unary(client, SAY, "z")).text, "db says z to ?", "and the channel carries on after the refusal");
});
