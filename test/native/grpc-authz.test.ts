// Who may call a native gRPC server (dev control plane): callers without a mesh identity are
// closed at the handshake, L4 intentions decide per connection and again per call, and L7
// intentions decide per method on the exact path grpc-js dispatches.
import t from "tap";
import { tempDir } from "../helpers/mesh.js";
import { sample } from "../helpers/peers.js";
import { configWrite } from "../helpers/l7.js";
import { foreignLeaf, leafFor, readDevCa, type DevCa } from "../helpers/certs.js";
import { intentions, service } from "../helpers/native.js";
import { COUNT, RESET, SAY, grpc, serveGrpc, serverStream, statusOf, unary, unaryUntil } from "../helpers/grpc.js";

/** A grpc-js client of our own making to the server at `port`: `leaf` (or none), trusting the dev CA. */
function rawClient(t: { teardown(fn: () => void): void }, port: number, ca: DevCa, leaf?: { certPem: string; keyPem: string }): grpc.Client {
  const creds = grpc.credentials.createSsl(Buffer.from(ca.certPem), leaf ? Buffer.from(leaf.keyPem) : null, leaf ? Buffer.from(leaf.certPem) : null, { checkServerIdentity: () => undefined });
  const client = new grpc.Client(`127.0.0.1:${port}`, creds, { "grpc.ssl_target_name_override": "api" });
  t.teardown(() => client.close());
  return client;
}

t.test("callers without a mesh identity of this trust domain never reach a handler, each reason counted", async (t) => {
  const dir = await tempDir(t);
  const api = await service(t, { name: "api", dataDir: dir });
  const served = await serveGrpc(t, api);
  const ca = await readDevCa(dir);
  const cases = [
    ["no certificate", undefined, "no_client_cert"],
    ["a certificate from another CA", await foreignLeaf(ca.trustDomain, "web"), "untrusted_certificate"],
    ["another trust domain", await leafFor(ca, "web", { trustDomain: "00000000-0000-0000-0000-000000000000.consul" }), "wrong_trust_domain"],
  ] as const;
  for (const [what, leaf] of cases) {
    const s = await statusOf(unary(rawClient(t, served.port, ca, leaf), SAY, "hi", 5_000));
    t.equal(s.code, grpc.status.UNAVAILABLE, `${what}: the call fails, the connection was closed`);
  }
  const good = await unary(rawClient(t, served.port, ca, await leafFor(ca, "web")), SAY, "hi");
  t.equal(good.text, "api says hi to web", "a mesh leaf of the trust domain is served, with its identity");
  t.same(served.seen, [`${SAY} from web`], "the handlers saw only the good caller");
  const text = await api.metrics.registry.metrics();
  for (const [, , reason] of cases) t.ok((sample(text, "meshproxy_inbound_rejected_total", { reason }) ?? 0) >= 1, `counted as ${reason}`);
});

t.test("an L4 deny closes the connection; revoking an intention stops the next call on an open channel", async (t) => {
  const dir = await tempDir(t);
  await intentions(dir, "allow", [{ source: "evil", destination: "api", action: "deny" }]);
  const api = await service(t, { name: "api", dataDir: dir });
  const web = await service(t, { name: "web", dataDir: dir });
  const evil = await service(t, { name: "evil", dataDir: dir });
  const served = await serveGrpc(t, api);
  const webClient = web.grpcClient(grpc, grpc.Client, "api");
  t.teardown(() => webClient.close());
  t.equal((await unaryUntil(webClient, SAY, "a")).text, "api says a to web", "web is allowed");
  const evilClient = evil.grpcClient(grpc, grpc.Client, "api");
  t.teardown(() => evilClient.close());
  const denied = await statusOf(unary(evilClient, SAY, "b", 5_000));
  t.equal(denied.code, grpc.status.UNAVAILABLE, "evil's connection is closed at the handshake: UNAVAILABLE");
  t.ok((sample(await api.metrics.registry.metrics(), "meshproxy_inbound_rejected_total", { reason: "denied_by_intention" }) ?? 0) >= 1, "counted as denied_by_intention");
  // web's channel stays open; the intention is revoked under it.
  await intentions(dir, "allow", [
    { source: "evil", destination: "api", action: "deny" },
    { source: "web", destination: "api", action: "deny" },
  ]);
  const deadline = Date.now() + 15_000;
  let after = await statusOf(unary(webClient, SAY, "c"));
  while (after.code === grpc.status.OK && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    after = await statusOf(unary(webClient, SAY, "c"));
  }
  t.equal(after.code, grpc.status.PERMISSION_DENIED, "the next call on web's open channel is refused: PERMISSION_DENIED");
  t.match(after.details, /web => api|deny/i, "with the intention's reason");
  t.notOk(served.seen.some((s) => !s.endsWith("from web")), "no handler ever ran for evil");
});

t.test("L7 intentions decide per method, on the path grpc-js dispatches", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "grpc" });
  await intentions(dir, "deny", [
    {
      source: "web",
      destination: "api",
      permissions: [
        { action: "deny", http: { path_exact: COUNT } },
        { action: "allow", http: { path_prefix: "/mesh.test.Echo/" } },
      ],
    },
  ]);
  const api = await service(t, { name: "api", dataDir: dir });
  const web = await service(t, { name: "web", dataDir: dir });
  const served = await serveGrpc(t, api);
  t.equal(api.snapshot.publicListener?.protocol, "grpc", "api's protocol comes from its service-defaults");
  const client = web.grpcClient(grpc, grpc.Client, "api");
  t.teardown(() => client.close());
  t.equal((await unaryUntil(client, SAY, "a")).text, "api says a to web", "an allowed method is served");
  const count = await statusOf(serverStream(client, COUNT, "n"));
  t.equal(count.code, grpc.status.PERMISSION_DENIED, "a method a deny permission names: PERMISSION_DENIED");
  t.match(count.details, /Matched L7 intention: web => api \(permission 1: deny\)/, "with the permission that matched");
  const reset = await statusOf(unary(client, RESET, "x"));
  t.equal(reset.code, grpc.status.PERMISSION_DENIED, "a method no permission allows: PERMISSION_DENIED");
  t.match(reset.details, /default/, "decided by the default action");
  t.equal((await unary(client, SAY, "b")).text, "api says b to web", "the channel is still usable after refusals");
  t.same(served.seen, [`${SAY} from web`, `${SAY} from web`], "no refused call reached a handler");
  const ca = await readDevCa(dir);
  const raw = rawClient(t, served.port, ca, await leafFor(ca, "web"));
  const dotted = await statusOf(unary(raw, "/mesh.test.Echo/../Admin/Reset", "x"));
  t.not(dotted.code, grpc.status.OK, "a path with dot segments reaches no handler");
  t.same(served.seen.length, 2, "still only the two allowed calls");
});

t.test("a permission on a header grpc-js consumes cannot be decided per call: refused (fail closed)", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "grpc" });
  await intentions(dir, "allow", [
    { source: "web", destination: "api", permissions: [{ action: "deny", http: { path_exact: SAY, header: [{ name: "grpc-timeout", present: true }] } }, { action: "allow", http: { path_prefix: "/" } }] },
  ]);
  const api = await service(t, { name: "api", dataDir: dir });
  const web = await service(t, { name: "web", dataDir: dir });
  const served = await serveGrpc(t, api);
  const client = web.grpcClient(grpc, grpc.Client, "api");
  t.teardown(() => client.close());
  const streamed = await serverStreamUntil(client);
  t.equal(streamed.length, 3, "a method whose permissions read no such header is decided and served");
  const s = await statusOf(unary(client, SAY, "a"));
  t.equal(s.code, grpc.status.PERMISSION_DENIED, "a call the header would decide is refused");
  t.match(s.details, /grpc-timeout/, "naming the header");
  t.same(served.seen, [`${COUNT} from web`], "the refused call reached no handler");
});

async function serverStreamUntil(client: grpc.Client): Promise<unknown[]> {
  const end = Date.now() + 15_000;
  for (;;) {
    try {
      return await serverStream(client, COUNT, "n", 2_000);
    } catch (e) {
      if (Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
