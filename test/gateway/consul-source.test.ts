// The gateway's Consul route source against the agent double, in process: the table it builds
// from the catalog, and what it does with answers it cannot use (said, and the last table kept).
import t, { type Test } from "tap";
import { ConsulAgentDouble } from "../helpers/consul-agent.js";
import { AgentClient } from "../../src/controlplane/consul/client.js";
import { ConsulGatewaySource } from "../../src/controlplane/consul/gateway-source.js";
import type { GatewayRoutesConfig } from "../../src/config/gateway.js";

async function setup(t: Test) {
  const d = await ConsulAgentDouble.start();
  t.teardown(() => d.stop());
  d.registerService({ Name: "db", Port: 9000, Address: "127.0.0.1" });
  d.registerProxy({ Name: "db-sidecar-proxy", ID: "db-1-sidecar-proxy", Port: 21000, Address: "127.0.0.1", Meta: { version: "v1" }, Proxy: { DestinationServiceName: "db" } });
  d.setRemoteGateways("dc2", [{ id: "gw-a", address: "10.0.0.1", port: 8443, wan: { Address: "198.51.100.1", Port: 443 } }]);
  const client = new AgentClient({ httpAddr: d.url });
  const source = new ConsulGatewaySource({ client, service: "mesh-gateway", meta: {}, backoff: { baseMs: 20, maxMs: 100 }, datacentersEveryMs: 100 });
  const tables: GatewayRoutesConfig[] = [];
  const problems: string[] = [];
  t.teardown(async () => {
    await source.close();
    await client.close();
  });
  const first = await source.start((cfg) => tables.push(cfg), (p) => problems.push(p));
  return { d, source, tables, problems, first };
}

async function until(what: string, check: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`still waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

t.test("the table: connect instances of the catalog's services, other datacenters' gateways at their WAN address", async (t) => {
  const { d, first } = await setup(t);
  const sni = `db.default.dc1.internal.${d.trustDomain}`;
  t.same([...first.services.keys()], [sni], "db (its sidecar's listener); the sidecar's own name and the app without a proxy are not routes");
  t.match(first.services.get(sni)?.endpoints, [{ host: "127.0.0.1", port: 21000, healthy: true, id: "db-1-sidecar-proxy" }]);
  t.same(first.remoteGateways.get("dc2")?.map((e) => `${e.host}:${e.port}`), ["198.51.100.1:443"], "WAN tagged address, not the LAN one");
  t.equal(first.trustDomain, d.trustDomain);
  t.equal(first.datacenter, "dc1", "the agent's datacenter (from /v1/agent/self)");
});

t.test("garbage from the agent: said, and the last table stays until a good answer", async (t) => {
  const { d, tables, problems } = await setup(t);
  const said = (re: RegExp) => problems.filter((p) => re.test(p)).length;
  // A fault applies to requests that arrive after it: one change releases the query already held.
  const health = /\/v1\/health\/service\/mesh-gateway: malformed JSON/;
  d.fault("/v1/health/service/", "garbage");
  d.setRemoteGateways("dc2", [{ id: "gw-a", address: "10.0.0.1", port: 8443, wan: { Address: "198.51.100.1", Port: 443 } }, { id: "gw-x", address: "10.0.0.9", port: 8443, status: "critical" }]);
  await until("a problem about the health answer", () => said(health) > 0);
  t.match(problems.find((p) => health.test(p)), /the previous routes stay in force/, "names the endpoint and what happens");
  d.setRemoteGateways("dc2", [{ id: "gw-b", address: "10.0.0.2", port: 8443, wan: { Address: "198.51.100.2", Port: 443 } }]);
  const resolver = /\/v1\/config\/service-resolver: \$: want an array of config entries/;
  d.fault("/v1/config/service-resolver", 'body:{"not":"a list"}');
  d.setConfigEntry({ Kind: "service-resolver", Name: "db", Subsets: { v1: { Filter: "Service.Meta.version == v1" } } });
  await until("a problem about the resolver answer", () => said(resolver) > 0);
  d.setConfigEntry({ Kind: "service-resolver", Name: "db", Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2" } } });
  const seen = said(health);
  await until("the agent asked again (with backoff)", () => said(health) >= seen + 2);
  const v2 = `v2.db.default.dc1.internal.${d.trustDomain}`;
  t.notOk(tables.some((x) => x.remoteGateways.get("dc2")?.some((e) => e.host === "198.51.100.2")), "no table from garbage");
  t.notOk(tables.some((x) => x.services.has(v2)), "nor from a well-formed answer of the wrong shape");
  d.clearFaults();
  await until("a table with both changes", () => {
    const last = tables.at(-1);
    return last !== undefined && last.remoteGateways.get("dc2")?.[0]?.host === "198.51.100.2" && last.services.has(v2);
  });
  t.pass("once the agent answers well again, both changes arrive");
});
