// A gateway's local services and subsets from instances and service-resolvers, as Consul's mesh
// gateway builds them: every subset a cluster of the instances its filter selects, the plain name
// all instances, or the DefaultSubset's when the resolver names one.
import t from "tap";
import { gatewayServices } from "../../src/controlplane/chain/gateway.js";
import { entryIndex } from "../../src/controlplane/chain/compile.js";
import { parseEntry } from "../../src/controlplane/chain/entries.js";
import type { ServiceInstance } from "../../src/controlplane/chain/upstream.js";

const TD = "11111111-2222-3333-4444-555555555555.consul";

function instance(id: string, version: string, status: ServiceInstance["status"] = "passing"): ServiceInstance {
  return { id, service: "web", address: "127.0.0.1", port: 1000 + Number(id.slice(-1)), status, meta: { version }, tags: [], node: { name: "n", datacenter: "dc1", meta: {} } };
}

const instances = new Map([["web", [instance("web-1", "v1"), instance("web-2", "v2"), instance("web-3", "v2", "warning")]]]);

function resolver(raw: Record<string, unknown>) {
  return entryIndex([parseEntry({ Kind: "service-resolver", Name: "web", ...raw }, "test")]);
}

const ids = (m: Map<string, { endpoints: readonly { id: string; healthy: boolean }[] }>, sni: string) => m.get(sni)?.endpoints.map((e) => `${e.id}${e.healthy ? "" : "!"}`);

t.test("subsets by filter, OnlyPassing, DefaultSubset", async (t) => {
  const problems: string[] = [];
  const entries = resolver({ DefaultSubset: "v2", ConnectTimeout: "2s", Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2", OnlyPassing: true } } });
  const m = gatewayServices({ trustDomain: TD, datacenter: "DC1", instances, entries }, (p) => problems.push(p));
  t.same([...m.keys()].sort(), [`v1.web.default.dc1.internal.${TD}`, `v2.web.default.dc1.internal.${TD}`, `web.default.dc1.internal.${TD}`]);
  t.same(ids(m, `v1.web.default.dc1.internal.${TD}`), ["web-1"]);
  t.same(ids(m, `v2.web.default.dc1.internal.${TD}`), ["web-2", "web-3!"], "OnlyPassing: a warning instance is unhealthy");
  t.same(ids(m, `web.default.dc1.internal.${TD}`), ["web-2", "web-3!"], "the plain name carries the DefaultSubset");
  t.equal(m.get(`v1.web.default.dc1.internal.${TD}`)?.connectTimeoutMs, 2000, "the resolver's ConnectTimeout");
  t.same(problems, []);
  const plain = gatewayServices({ trustDomain: TD, datacenter: "dc1", instances, entries: entryIndex([]) }, () => undefined);
  t.same([...plain.keys()], [`web.default.dc1.internal.${TD}`], "no resolver: one cluster");
  t.same(ids(plain, `web.default.dc1.internal.${TD}`), ["web-1", "web-2", "web-3"], "of every instance, warning counted healthy");
});

t.test("a filter that does not compile is refused with its entry (the previous table stays); an unroutable name is a problem", async (t) => {
  t.throws(() => resolver({ Subsets: { v1: { Filter: "Service.Meta.version ==" } } }), /test\.Subsets\.v1\.Filter: invalid filter/);
  const problems: string[] = [];
  const m = gatewayServices({ trustDomain: TD, datacenter: "dc1", instances, entries: resolver({ Subsets: { "v 1": { Filter: "" } } }) }, (p) => problems.push(p));
  t.same([...m.keys()], [`web.default.dc1.internal.${TD}`], "the rest is routed");
  t.match(problems, [/subset "v 1" of service "web" is not routed: its name cannot be an SNI label/]);
});

t.test("attacker: a subset name that would spell another route's SNI, or its case variant, routes nothing", async (t) => {
  // "v1.web" under service "web" would make `v1.web.web.default…`; an upper-case subset would
  // make a second key for the same lower-case name the ClientHello parser hands the gateway.
  const problems: string[] = [];
  const m = gatewayServices({ trustDomain: TD, datacenter: "dc1", instances, entries: resolver({ Subsets: { "v1.web": { Filter: "" }, "x.default.dc1.internal": { Filter: "" } } }) }, (p) => problems.push(p));
  t.same([...m.keys()], [`web.default.dc1.internal.${TD}`], "only the plain service is routed");
  t.equal(problems.length, 2, "each refused name is reported");
  for (const p of problems) t.match(p, /is not routed: its name cannot be an SNI label/);
});
