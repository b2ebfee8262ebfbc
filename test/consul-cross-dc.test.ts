// The Consul control plane's targets in other datacenters, against the agent double: a target's
// instances are read in its own datacenter (`/v1/health/connect/<svc>?dc=`), and in mesh gateway
// mode local or remote its cluster's endpoints are the gateways Consul lists by ServiceKind
// (`/v1/catalog/services?filter=ServiceKind == "mesh-gateway"`, then `/v1/health/service/<name>`),
// dialled at their LAN address here and their WAN address in another datacenter.
import t, { type Test } from "tap";
import { ConsulAgentDouble, type JsonObject } from "./helpers/consul-agent.js";
import { AgentClient } from "../src/controlplane/consul/client.js";
import { ConsulControlPlane } from "../src/controlplane/consul/consul.js";
import type { ProxyRequest } from "../src/controlplane/controlplane.js";
import type { Snapshot } from "../src/config/snapshot.js";
import { silentLogger } from "../src/telemetry/log.js";
import { serviceSni, serviceSpiffeId } from "../src/identity/spiffe.js";
import { ignoreRejection } from "./helpers/ignore.js";

async function double(t: Test): Promise<ConsulAgentDouble> {
  const d = await ConsulAgentDouble.start();
  t.teardown(() => d.stop());
  // db in both datacenters; a gateway in each (dc2's reachable from dc1 at its WAN address).
  d.setInstances("db", [
    { id: "db-dc1-sidecar-proxy", address: "10.1.0.5", port: 21000 },
    { id: "db-dc2-sidecar-proxy", address: "10.2.0.5", port: 21000, datacenter: "dc2" },
  ]);
  d.setMeshGateways("mesh-gateway", [
    { id: "gw-dc1", address: "10.1.0.1", port: 8443, wan: { address: "198.18.1.1", port: 443 } },
    { id: "gw-dc2", address: "10.2.0.1", port: 8443, wan: { address: "198.18.2.1", port: 443 }, datacenter: "dc2" },
  ]);
  return d;
}

/** A chain for db evaluated in `evalDc` with the given targets (the first is the start; the rest its failover). */
function chain(d: ConsulAgentDouble, evalDc: string, targets: ReadonlyArray<{ dc: string; mode?: string }>): JsonObject {
  const ids = targets.map((x) => `db.default.default.${x.dc}`);
  const start = ids[0]!;
  return {
    ServiceName: "db",
    Namespace: "default",
    Partition: "default",
    Datacenter: evalDc,
    Protocol: "tcp",
    StartNode: `resolver:${start}`,
    Nodes: { [`resolver:${start}`]: { Type: "resolver", Name: start, Resolver: { Default: false, ConnectTimeout: "5s", Target: start, ...(ids.length > 1 ? { Failover: { Targets: ids.slice(1) } } : {}) } } },
    Targets: Object.fromEntries(
      targets.map((x, i) => {
        const sni = serviceSni("db", "default", x.dc, d.trustDomain);
        return [ids[i]!, { ID: ids[i]!, Service: "db", Namespace: "default", Partition: "default", Datacenter: x.dc, MeshGateway: { Mode: x.mode ?? "" }, Subset: {}, ConnectTimeout: "5s", SNI: sni, Name: sni }];
      }),
    ),
  };
}

/** Starts a control plane for web (dc1) and resolves with its first Snapshot. */
async function firstSnapshot(t: Test, d: ConsulAgentDouble, request: ProxyRequest): Promise<Snapshot> {
  const cp = new ConsulControlPlane({ client: new AgentClient({ httpAddr: d.url }), logger: silentLogger, request, waitMs: 2000, backoff: { baseMs: 50, maxMs: 500 } });
  let first: Snapshot | null = null;
  const started = cp.start({ snapshot: (s) => (first = first ?? s), error: () => undefined });
  started.catch(ignoreRejection("stop() rejects a start() that never saw a Snapshot; the assertion below reports it"));
  t.teardown(() => cp.stop());
  await started;
  if (!first) throw new Error("no Snapshot");
  return first;
}

const web = (upstream: Partial<ProxyRequest["upstreams"][number]>, extra: Partial<ProxyRequest> = {}): ProxyRequest => ({
  service: "web",
  upstreams: [{ name: "db", bind: { host: "127.0.0.1", port: 9191 }, ...upstream }],
  ...extra,
});

const hosts = (s: Snapshot, cluster: string) => (s.clusters[cluster]?.endpoints ?? []).map((e) => `${e.host}:${e.port}`);

t.test("an upstream in dc2: mode none reads dc2's instances; local dials dc1's gateway (LAN); remote dc2's (WAN)", async (t) => {
  const d = await double(t);
  d.setChain("db", chain(d, "dc2", [{ dc: "dc2" }]));
  const dc2 = serviceSni("db", "default", "dc2", d.trustDomain);
  const none = await firstSnapshot(t, d, web({ datacenter: "dc2" }));
  t.same(hosts(none, dc2), ["10.2.0.5:21000"], "none: dc2's instance");
  t.equal(none.clusters[dc2]?.expectedSpiffeId, serviceSpiffeId({ trustDomain: d.trustDomain, namespace: "default", datacenter: "dc2", service: "db" }));
  const local = await firstSnapshot(t, d, web({ datacenter: "dc2" }, { meshGatewayMode: "local" }));
  t.same(hosts(local, dc2), ["10.1.0.1:8443"], "local: this datacenter's gateway at its LAN address");
  t.same(local.clusters[dc2]?.meshGateway, { mode: "local", datacenter: "dc1" });
  t.equal(local.clusters[dc2]?.sni, dc2, "the target's SNI");
  const remote = await firstSnapshot(t, d, web({ datacenter: "dc2", meshGatewayMode: "remote" }, { meshGatewayMode: "local" }));
  t.same(hosts(remote, dc2), ["198.18.2.1:443"], "the upstream's own mode wins; remote: dc2's gateway at its WAN address");
  const listed = d.requestsTo("/v1/catalog/services");
  t.ok(listed.some((r) => r.query["filter"] === 'ServiceKind == "mesh-gateway"' && r.query["dc"] === "dc2"), "gateways found by ServiceKind in dc2");
  t.ok(d.requestsTo("/v1/health/service/mesh-gateway").some((r) => r.query["dc"] === "dc2"), "and their instances read there");
});

t.test("a failover target in dc2 reads its instances in dc2, not the upstream's datacenter", async (t) => {
  const d = await double(t);
  d.setChain("db", chain(d, "dc1", [{ dc: "dc1" }, { dc: "dc2" }]));
  const s = await firstSnapshot(t, d, web({}));
  t.same(hosts(s, serviceSni("db", "default", "dc1", d.trustDomain)), ["10.1.0.5:21000"], "the primary: dc1's instance");
  t.same(hosts(s, serviceSni("db", "default", "dc2", d.trustDomain)), ["10.2.0.5:21000"], "the failover: dc2's instance");
  t.ok(d.requestsTo("/v1/health/connect/db").some((r) => r.query["dc"] === "dc2"), "read with ?dc=dc2");
});

t.test("the agent's compiled mode is followed; no gateway in the mode's datacenter: no endpoint", async (t) => {
  const d = await double(t);
  d.setChain("db", chain(d, "dc1", [{ dc: "dc1" }, { dc: "dc2", mode: "remote" }, { dc: "dc3", mode: "remote" }]));
  d.setInstances("db", [
    { id: "db-dc1-sidecar-proxy", address: "10.1.0.5", port: 21000 },
    { id: "db-dc2-sidecar-proxy", address: "10.2.0.5", port: 21000, datacenter: "dc2" },
    { id: "db-dc3-sidecar-proxy", address: "10.3.0.5", port: 21000, datacenter: "dc3" },
  ]);
  const s = await firstSnapshot(t, d, web({}));
  t.same(hosts(s, serviceSni("db", "default", "dc2", d.trustDomain)), ["198.18.2.1:443"], "dc2 in mode remote: dc2's gateway");
  const dc3 = s.clusters[serviceSni("db", "default", "dc3", d.trustDomain)];
  t.same(dc3?.endpoints, [], "dc3 has no gateway: no endpoint, not its instance");
  t.same(dc3?.meshGateway, { mode: "remote", datacenter: "dc3" });
});

t.test("an instance in another datacenter dialled directly is dialled at its WAN address, as Consul's Envoy does (BestAddress(wan))", async (t) => {
  const d = await double(t);
  d.setChain("db", chain(d, "dc1", [{ dc: "dc1" }, { dc: "dc2" }]));
  d.setInstances("db", [
    // This datacenter's instance: its LAN address, whatever WAN address it has.
    { id: "db-dc1-sidecar-proxy", address: "10.1.0.5", port: 21000, wan: { address: "203.0.113.5", port: 31000 }, nodeWan: "203.0.113.1" },
    // Service.TaggedAddresses.wan first, with its own port.
    { id: "db-dc2-a-sidecar-proxy", address: "10.2.0.5", port: 21000, datacenter: "dc2", wan: { address: "198.51.100.5", port: 31000 } },
    // No service WAN address, no service address: the node's WAN address, the service port.
    { id: "db-dc2-b-sidecar-proxy", address: "", port: 21001, datacenter: "dc2", nodeAddress: "10.2.0.6", nodeWan: "198.51.100.6" },
    // A service address and only a node WAN address: the service address (Consul's order).
    { id: "db-dc2-c-sidecar-proxy", address: "10.2.0.7", port: 21002, datacenter: "dc2", nodeWan: "198.51.100.7" },
  ]);
  const s = await firstSnapshot(t, d, web({}));
  t.same(hosts(s, serviceSni("db", "default", "dc1", d.trustDomain)), ["10.1.0.5:21000"], "dc1's instance: LAN");
  t.same(hosts(s, serviceSni("db", "default", "dc2", d.trustDomain)).sort(), ["10.2.0.7:21002", "198.51.100.5:31000", "198.51.100.6:21001"], "dc2's instances: WAN, as BestAddress(true) picks it");
});
