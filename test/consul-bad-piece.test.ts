// One bad piece of Consul state must cost only that piece. The Consul control plane builds each
// Snapshot from every watch's latest value; the proxy refuses a Snapshot that does not compile,
// whole. A piece the watch accepts but the proxy refuses (an instance port, a resolver timeout,
// a leaf whose key does not match) would stay in every later Snapshot, so each later change,
// a new deny intention or a renewed leaf included, would be refused with it: the proxy would go
// on allowing a caller the operator has just denied. Each case checks that every Snapshot the
// control plane delivers compiles, and that an intention change made after the bad piece arrives.
import t from "tap";
import { generateKeyPairSync } from "node:crypto";
import { ConsulAgentDouble, type JsonObject } from "./helpers/consul-agent.js";
import { recordedControlPlane, type Recorded } from "./helpers/consul-cp.js";
import { AgentClient } from "../src/controlplane/consul/client.js";
import { ConsulControlPlane } from "../src/controlplane/consul/consul.js";
import type { ProxyRequest } from "../src/controlplane/controlplane.js";
import { compileSnapshot } from "../src/compile/snapshot.js";
import { serviceSni } from "../src/identity/spiffe.js";
import { silentLogger } from "../src/telemetry/log.js";
import type { Snapshot } from "../src/config/snapshot.js";
import type { Teardown } from "./helpers/mesh.js";
import { until } from "./helpers/l7.js";
import { ignoreRejection } from "./helpers/ignore.js";

const WEB_WITH_DB: ProxyRequest = {
  service: "web",
  publicListener: { bind: { host: "127.0.0.1", port: 21000 }, localApp: { host: "127.0.0.1", port: 8080 } },
  upstreams: [{ name: "db", bind: { host: "127.0.0.1", port: 9191 } }],
};

interface Run extends Recorded {
  readonly d: ConsulAgentDouble;
}

async function start(t: Teardown): Promise<Run> {
  const d = await ConsulAgentDouble.start({ defaultIntentionPolicy: "deny" });
  t.teardown(() => d.stop());
  d.setInstances("db", [{ id: "db-1", address: "10.0.0.5", port: 21000 }]);
  d.setIntentions("web", [{ source: "api", action: "allow" }]);
  return { d, ...(await recordedControlPlane(t, d, WEB_WITH_DB)) };
}

function denied(s: Snapshot): boolean {
  return s.intentions.intentions.some((i) => i.source === "api" && i.action === "deny");
}

/** The bad piece arrives, is reported, and a later deny still reaches a Snapshot the proxy takes. */
async function denyStillApplies(t: Teardown & { equal: (a: unknown, b: unknown, m: string) => void; ok: (v: unknown, m: string) => void }, r: Run, resource: string): Promise<void> {
  const before = r.snapshots.length;
  const errorsBefore = r.errors.length;
  // Either way the piece was seen: reported as an error or taken into a Snapshot.
  await until(() => r.errors.length > errorsBefore || r.snapshots.length > before, 8000, `the bad ${resource} to be seen`);
  r.d.setIntentions("web", [{ source: "api", action: "deny" }]);
  await until(() => r.snapshots.some(denied), 8000, "a Snapshot with the new deny intention");
  for (const s of r.snapshots) {
    let refused = "";
    try {
      compileSnapshot(s);
    } catch (e) {
      refused = e instanceof Error ? e.message : String(e);
    }
    t.equal(refused, "", `Snapshot ${s.version} (${denied(s) ? "with" : "without"} the deny) compiles`);
  }
  t.ok(r.errors.some((e) => e.resource === resource), `the bad ${resource} is reported as a control-plane error`);
}

t.test("health: an instance on port 0 costs only its upstream, which keeps its last good instances, and a new deny applies", async (t) => {
  const r = await start(t);
  r.d.setInstances("db", [
    { id: "db-1", address: "10.0.0.5", port: 21000 },
    { id: "db-2", address: "10.0.0.6", port: 0 },
  ]);
  await denyStillApplies(t, r, "upstream");
  const last = r.snapshots.at(-1)!;
  t.same(Object.values(last.clusters).flatMap((c) => c.endpoints.map((e) => e.port)), [21000], "the last good instances");
});

t.test("discovery chain: a ConnectTimeout no timer can hold costs only its upstream, which keeps its last good chain, and a new deny applies", async (t) => {
  const r = await start(t);
  const id = `db.default.default.${r.d.datacenter}`;
  const sni = serviceSni("db", "default", r.d.datacenter, r.d.trustDomain);
  const chain: JsonObject = {
    ServiceName: "db",
    Namespace: "default",
    Partition: "default",
    Datacenter: r.d.datacenter,
    Protocol: "tcp",
    StartNode: `resolver:${id}`,
    Nodes: { [`resolver:${id}`]: { Type: "resolver", Name: id, Resolver: { Default: false, ConnectTimeout: "720h", Target: id } } },
    Targets: { [id]: { ID: id, Service: "db", Namespace: "default", Partition: "default", Datacenter: r.d.datacenter, MeshGateway: {}, Subset: {}, ConnectTimeout: "720h", SNI: sni, Name: sni } },
  };
  r.d.setChain("db", chain);
  await denyStillApplies(t, r, "upstream");
  t.equal(r.snapshots.at(-1)!.upstreams[0]?.connectTimeoutMs, 5000, "the last good chain's timeout");
});

t.test("leaf: a certificate whose key does not match is refused at its watch; the last good leaf stays and a new deny applies", async (t) => {
  const r = await start(t);
  const good = r.snapshots.at(-1)!.identity;
  const res = await fetch(`${r.d.url}/v1/agent/connect/ca/leaf/web`);
  const leaf: unknown = await res.json();
  t.ok(typeof leaf === "object" && leaf !== null, "the double's leaf");
  const otherKey = generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey.export({ type: "sec1", format: "pem" }).toString();
  r.d.fault("/v1/agent/connect/ca/leaf", `body:${JSON.stringify({ ...Object(leaf), SerialNumber: "aa:bb", PrivateKeyPEM: otherKey })}`);
  await denyStillApplies(t, r, "leaf");
  t.equal(r.snapshots.at(-1)!.identity.serial, good.serial, "the last good leaf");
});

t.test("leaf: another service's certificate, or one whose SAN is not its ServiceURI, is refused at its watch; the last good leaf stays and a new deny applies", async (t) => {
  for (const [what, bad] of [
    ["for another service", (leaf: object, f: { spiffeId: string; certPem: string; keyPem: string }) => ({ ...leaf, SerialNumber: "aa:01", CertPEM: f.certPem, PrivateKeyPEM: f.keyPem, Service: "billing", ServiceURI: f.spiffeId })],
    ["whose URI SAN is not the ServiceURI sent with it", (leaf: object, f: { spiffeId: string; certPem: string; keyPem: string }) => ({ ...leaf, SerialNumber: "aa:02", CertPEM: f.certPem, PrivateKeyPEM: f.keyPem })],
  ] as const) {
    await t.test(what, async (t) => {
      const r = await start(t);
      const good = r.snapshots.at(-1)!.identity;
      const leaf: unknown = await (await fetch(`${r.d.url}/v1/agent/connect/ca/leaf/web`)).json();
      t.ok(typeof leaf === "object" && leaf !== null, "the double's leaf");
      r.d.fault("/v1/agent/connect/ca/leaf", `body:${JSON.stringify(bad(leaf as object, await r.d.foreignLeaf("billing", {})))}`);
      await denyStillApplies(t, r, "leaf");
      const last = r.snapshots.at(-1)!.identity;
      t.same([last.serial, last.spiffeId, last.service], [good.serial, good.spiffeId, "web"], "the last good leaf");
      t.match(r.errors.find((e) => e.resource === "leaf")?.message, /leaf.*(not "web", the one asked for|URI SAN is "spiffe:\/\/[^"]*\/svc\/billing", not the ServiceURI)/, "the error says whose the certificate is");
    });
  }
});

t.test("discovery chain: a subset Filter Consul accepts but meshproxy cannot evaluate costs only its upstream; a new deny applies", async (t) => {
  const r = await start(t);
  const dc = r.d.datacenter;
  const id = `v2.db.default.default.${dc}`;
  const sni = `v2.${serviceSni("db", "default", dc, r.d.trustDomain)}`;
  // Node.Address is a field of Consul's ServiceEntry (go-bexpr accepts it); meshproxy's filter schema has no such selector.
  const chain: JsonObject = {
    ServiceName: "db",
    Namespace: "default",
    Partition: "default",
    Datacenter: dc,
    Protocol: "tcp",
    StartNode: `resolver:${id}`,
    Nodes: { [`resolver:${id}`]: { Type: "resolver", Name: id, Resolver: { Default: false, ConnectTimeout: "5s", Target: id } } },
    Targets: { [id]: { ID: id, Service: "db", ServiceSubset: "v2", Namespace: "default", Partition: "default", Datacenter: dc, MeshGateway: {}, Subset: { Filter: 'Node.Address == "10.0.0.5"' }, ConnectTimeout: "5s", SNI: sni, Name: sni } },
  };
  r.d.setChain("db", chain);
  await denyStillApplies(t, r, "upstream");
  t.same(Object.values(r.snapshots.at(-1)!.clusters).flatMap((c) => c.endpoints.map((e) => e.id)), ["db-1"], "the last good chain's endpoints");
});

t.test("agent mode: one service registered as an upstream in two datacenters gives two listeners in a Snapshot the proxy takes", async (t) => {
  const d = await ConsulAgentDouble.start({});
  t.teardown(() => d.stop());
  d.setInstances("db", [{ id: "db-1", address: "10.0.0.5", port: 21000 }]);
  d.registerProxy({
    Kind: "connect-proxy",
    ID: "web-sidecar-proxy",
    Name: "web-sidecar-proxy",
    Port: 21000,
    Address: "10.20.0.15",
    Proxy: {
      DestinationServiceName: "web",
      DestinationServiceID: "web-1",
      LocalServiceAddress: "127.0.0.1",
      LocalServicePort: 8080,
      Upstreams: [
        { DestinationType: "service", DestinationName: "db", LocalBindAddress: "127.0.0.1", LocalBindPort: 9191 },
        { DestinationType: "service", DestinationName: "db", Datacenter: "dc2", LocalBindAddress: "127.0.0.1", LocalBindPort: 9192 },
      ],
    },
  });
  const cp = new ConsulControlPlane({ client: new AgentClient({ httpAddr: d.url }), logger: silentLogger, request: { service: "", upstreams: [] }, proxyId: "web-sidecar-proxy", waitMs: 2000, backoff: { baseMs: 50, maxMs: 500 } });
  const snapshots: Snapshot[] = [];
  const started = cp.start({ snapshot: (s) => snapshots.push(s), error: () => {} });
  t.teardown(async () => {
    await cp.stop();
    await started.catch(ignoreRejection("stopped at teardown"));
  });
  await started;
  const s = snapshots[0]!;
  t.same(s.upstreams.map((u) => [u.name, u.bind.port]), [["db", 9191], ["db.service.dc2", 9192]], "named as -upstream writes them");
  t.doesNotThrow(() => compileSnapshot(s), "the proxy takes it (it refused two upstreams named db)");
});
