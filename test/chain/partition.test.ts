// Admin partitions (Consul Enterprise) from the agent's compiled chain to the cluster: a target's
// Partition is carried through, so its cluster expects the identity Consul gives that partition's
// instances (spiffe://<td>/ap/<partition>/ns/<ns>/dc/<dc>/svc/<svc>) and, where the agent names no
// SNI, sends Consul's TargetSNI for it (….<partition>.<dc>.internal-v1.<td>). The default
// partition keeps the plain forms.
import t from "tap";
import { chainFromAgent } from "../../src/controlplane/consul/chain.js";
import { compileChain, entryIndex } from "../../src/controlplane/chain/compile.js";
import { buildUpstream, type ServiceInstance } from "../../src/controlplane/chain/upstream.js";
import { parseServiceSpiffeId } from "../../src/identity/spiffe.js";
import { identifyPeer } from "../../src/identity/peer.js";
import { authorize } from "../../src/authz/intentions.js";
import type { CompiledChain } from "../../src/controlplane/chain/compile.js";
import { ConsulAgentDouble, defaultDiscoveryChain, type Json, type JsonObject } from "../helpers/consul-agent.js";
import { AgentClient } from "../../src/controlplane/consul/client.js";
import { ConsulControlPlane } from "../../src/controlplane/consul/consul.js";
import { createLogger } from "../../src/telemetry/log.js";
import type { Snapshot } from "../../src/config/snapshot.js";
import { ignoreRejection } from "../helpers/ignore.js";

function isObject(v: Json | undefined): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

const TD = "0c4a3f6e-2b1d-4e8a-9f7c-5d6e7a8b9c01.consul";

/** A resolver chain for db with a subset target in `partition`, as an Enterprise agent compiles it. */
function agentChain(partition: string | undefined, withSni: boolean): unknown {
  const part = partition ?? "default";
  const id = `v2.db.default.${part}.dc1`;
  const sni = part === "default" ? `v2.db.default.dc1.internal.${TD}` : `v2.db.default.${part}.dc1.internal-v1.${TD}`;
  return {
    Chain: {
      ServiceName: "db",
      Namespace: "default",
      ...(partition !== undefined ? { Partition: partition } : {}),
      Datacenter: "dc1",
      Protocol: "tcp",
      StartNode: `resolver:${id}`,
      Nodes: { [`resolver:${id}`]: { Type: "resolver", Name: id, Resolver: { ConnectTimeout: "5s", Target: id } } },
      Targets: {
        [id]: {
          ID: id,
          Service: "db",
          ServiceSubset: "v2",
          Namespace: "default",
          ...(partition !== undefined ? { Partition: partition } : {}),
          Datacenter: "dc1",
          MeshGateway: {},
          Subset: { Filter: "" },
          ...(withSni ? { SNI: sni, Name: sni } : {}),
        },
      },
    },
  };
}

function build(chain: CompiledChain) {
  const instance: ServiceInstance = { id: "db-1", service: "db", address: "10.0.0.5", port: 21000, status: "passing", meta: {}, tags: [], node: { name: "n1", datacenter: "dc1", meta: {} } };
  return buildUpstream({
    upstream: { name: "db", bind: { host: "127.0.0.1", port: 9191 } },
    chain,
    instances: () => [instance],
    gateways: () => [],
    settings: undefined,
    trustDomain: TD,
    localDatacenter: "dc1",
  });
}

t.test("a target in partition ap1: the cluster expects /ap/ap1/ and sends the -v1 SNI (the agent's, or Consul's TargetSNI without one)", async (t) => {
  for (const withSni of [true, false]) {
    const chain = chainFromAgent(agentChain("ap1", withSni), "db");
    t.equal(chain.targets[chain.defaultTarget]?.partition, "ap1", "the decoder keeps the target's Partition");
    const { clusters, listener } = build(chain);
    const sni = `v2.db.default.ap1.dc1.internal-v1.${TD}`;
    t.same(Object.keys(clusters), [sni], `cluster named by the partition's SNI (${withSni ? "the agent's" : "computed"})`);
    t.equal(listener.cluster, sni);
    t.equal(clusters[sni]?.sni, sni, "and that SNI is sent");
    t.equal(clusters[sni]?.expectedSpiffeId, `spiffe://${TD}/ap/ap1/ns/default/dc/dc1/svc/db`, "the server must present ap1's db identity (a subset presents its service's)");
  }
});

t.test("the default partition, named or left out (CE): the plain forms, no /ap/ segment", async (t) => {
  for (const partition of ["default", undefined]) {
    for (const withSni of [true, false]) {
      const { clusters } = build(chainFromAgent(agentChain(partition, withSni), "db"));
      const sni = `v2.db.default.dc1.internal.${TD}`;
      t.same(Object.keys(clusters), [sni], `Partition ${String(partition)}, SNI ${withSni ? "given" : "computed"}`);
      t.equal(clusters[sni]?.expectedSpiffeId, `spiffe://${TD}/ns/default/dc/dc1/svc/db`);
    }
  }
});

t.test("a chain compiled locally for a proxy in a partition puts its targets there", async (t) => {
  const inAp1 = compileChain(entryIndex([]), "db", { namespace: "default", partition: "ap1", datacenter: "dc1" });
  const { clusters } = build(inAp1);
  t.same(Object.values(clusters).map((c) => [c.sni, c.expectedSpiffeId]), [[`db.default.ap1.dc1.internal-v1.${TD}`, `spiffe://${TD}/ap/ap1/ns/default/dc/dc1/svc/db`]]);
  const plain = compileChain(entryIndex([]), "db", { namespace: "default", datacenter: "dc1" });
  t.equal(plain.targets[plain.defaultTarget]?.partition, "default", "no partition given: the default one");
});

t.test("inbound: a caller's partitioned SPIFFE ID is read whole, and intentions match on its partition", async (t) => {
  const uri = `spiffe://${TD}/ap/ap2/ns/default/dc/dc1/svc/api`;
  const peer = identifyPeer(`URI:${uri}`, TD);
  t.ok(peer.ok, "an /ap/ identity in our trust domain is a service identity");
  if (!peer.ok) return;
  t.same(peer.id, { trustDomain: TD, partition: "ap2", namespace: "default", datacenter: "dc1", service: "api" });
  t.same(parseServiceSpiffeId(`spiffe://${TD}/ns/default/dc/dc1/svc/api`)?.partition, "default", "no /ap/: the default partition");
  const local = { namespace: "default", partition: "ap1" };
  const policy = (sourcePartition?: string) => ({ defaultAction: "deny" as const, intentions: [{ source: "api", destination: "web", action: "allow" as const, ...(sourcePartition ? { sourcePartition } : {}) }] });
  t.equal(authorize(policy("ap2"), peer.id, "web", local).allowed, true, "an intention from ap2/api lets ap2's api in");
  t.equal(authorize(policy(), peer.id, "web", local).allowed, false, "an unscoped one (the local partition, ap1) does not");
  t.equal(authorize(policy(), { ...peer.id, partition: "ap1" }, "web", local).allowed, true, "it lets ap1's api in");
});

t.test("Consul control plane: a failover target in another partition than the proxy's expects that partition's identity, and is warned about (not routed through mesh gateways)", async (t) => {
  const d = await ConsulAgentDouble.start({ partition: "ap1" });
  t.teardown(() => d.stop());
  d.setInstances("db", [{ id: "db-1", address: "10.0.0.5", port: 21000 }]);
  const chain = defaultDiscoveryChain("db", d.datacenter, d.trustDomain, "ap1");
  const targets = chain["Targets"];
  const nodes = chain["Nodes"];
  if (!isObject(targets) || !isObject(nodes)) throw new Error("the default chain has Targets and Nodes");
  const primary = `db.default.ap1.${d.datacenter}`;
  const other = `db.default.ap2.${d.datacenter}`;
  const resolver = nodes[`resolver:${primary}`];
  const target = targets[primary];
  if (!isObject(resolver) || !isObject(target) || !isObject(resolver["Resolver"])) throw new Error("the default chain resolves to its one target");
  d.setChain("db", {
    ...chain,
    Nodes: { [`resolver:${primary}`]: { ...resolver, Resolver: { ...resolver["Resolver"], Failover: { Targets: [other] } } } },
    Targets: { ...targets, [other]: { ...target, ID: other, Partition: "ap2", SNI: `db.default.ap2.${d.datacenter}.internal-v1.${d.trustDomain}` } },
  });
  const lines: string[] = [];
  const logger = createLogger({ level: "warn", json: true, write: (l) => lines.push(l) });
  const cp = new ConsulControlPlane({ client: new AgentClient({ httpAddr: d.url }), logger, request: { service: "web", upstreams: [{ name: "db", bind: { host: "127.0.0.1", port: 9191 } }] }, waitMs: 2000, backoff: { baseMs: 50, maxMs: 500 } });
  const snapshots: Snapshot[] = [];
  const started = cp.start({ snapshot: (s) => snapshots.push(s), error: () => undefined });
  t.teardown(async () => {
    await cp.stop();
    await started.catch(ignoreRejection("stopped at teardown"));
  });
  await started;
  const clusters = snapshots[0]?.clusters ?? {};
  t.equal(clusters[`db.default.ap2.${d.datacenter}.internal-v1.${d.trustDomain}`]?.expectedSpiffeId, `spiffe://${d.trustDomain}/ap/ap2/ns/default/dc/${d.datacenter}/svc/db`, "the failover cluster expects ap2's identity");
  t.ok(
    lines.some((l) => l.includes(`upstream db: target ${other} is in partition \\"ap2\\", not this proxy's (\\"ap1\\")`) && l.includes("does not route between partitions")),
    "and the operator is told it will not be reached",
  );
});
