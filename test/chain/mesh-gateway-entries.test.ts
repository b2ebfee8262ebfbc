// MeshGateway in config entries and datacenters in resolvers: Consul's spellings parse, anything
// else is an EntryError naming the field; the chain compiler puts targets in other datacenters.
import t from "tap";
import { EntryError, parseEntry } from "../../src/controlplane/chain/entries.js";
import { compileChain, entryIndex, meshGatewayOverride } from "../../src/controlplane/chain/compile.js";

const parse = (v: unknown) => parseEntry(v, "e.json");

t.test("MeshGateway.Mode on service-defaults, proxy-defaults and UpstreamConfig", async (t) => {
  t.match(parse({ Kind: "service-defaults", Name: "web", MeshGateway: { Mode: "local" } }), { meshGatewayMode: "local" });
  t.match(parse({ kind: "proxy-defaults", name: "global", mesh_gateway: { mode: "Remote" } }), { meshGatewayMode: "remote" }, "snake_case, any case");
  t.notOk("meshGatewayMode" in parse({ Kind: "proxy-defaults", Name: "global", MeshGateway: { Mode: "" } }), "empty: Consul's default, the next level decides");
  const sd = parse({ Kind: "service-defaults", Name: "web", UpstreamConfig: { Defaults: { MeshGateway: { Mode: "none" } }, Overrides: [{ Name: "db", MeshGateway: { Mode: "remote" } }] } });
  t.match(sd, { upstreamDefaults: { meshGatewayMode: "none" }, upstreamOverrides: [{ name: "db", meshGatewayMode: "remote" }] });
  t.throws(() => parse({ Kind: "service-defaults", Name: "web", MeshGateway: { Mode: "nearest" } }), new EntryError("e.json.MeshGateway.Mode", '"nearest" is not one of none, local, remote (or empty for the default)'));
  t.throws(() => parse({ Kind: "service-defaults", Name: "web", MeshGateway: "local" }), EntryError, "MeshGateway must be an object");
});

t.test("resolver datacenters: Failover.Datacenters, Targets[].Datacenter, Redirect.Datacenter; bad names refused", async (t) => {
  const r = parse({ Kind: "service-resolver", Name: "db", Failover: { "*": { Service: "db2", Datacenters: ["dc2", "dc3"] } } });
  t.match(r, { failover: { "*": [{ service: "db2", datacenter: "dc2" }, { service: "db2", datacenter: "dc3" }] } });
  t.throws(() => parse({ Kind: "service-resolver", Name: "db", Failover: { "*": { Datacenters: ["dc2"], Targets: [{ Datacenter: "dc3" }] } } }), /set Targets or Datacenters, not both/);
  t.throws(() => parse({ Kind: "service-resolver", Name: "db", Failover: { "*": { Datacenters: ["dc/../2"] } } }), /Datacenters\[0\]: "dc\/\.\.\/2" is not a datacenter name/);
  t.throws(() => parse({ Kind: "service-resolver", Name: "db", Redirect: { Datacenter: "a b" } }), /Redirect\.Datacenter: "a b" is not a datacenter name/);
  t.throws(() => parse({ Kind: "service-resolver", Name: "db", Failover: { "*": { Targets: [{ Datacenter: "" }, { Datacenter: "x/y" }] } } }), /Targets\[1\]\.Datacenter/);
});

t.test("compiled targets carry their datacenter and mode; a redirect to the same service elsewhere does not loop", async (t) => {
  const lookup = entryIndex([
    parse({ Kind: "service-resolver", Name: "db", Redirect: { Datacenter: "dc2" } }),
    parse({ Kind: "service-defaults", Name: "db", MeshGateway: { Mode: "remote" } }),
  ]);
  const c = compileChain(lookup, "db", { namespace: "default", datacenter: "dc1" });
  t.same(Object.keys(c.targets), ["db.default.dc2"]);
  t.equal(c.targets["db.default.dc2"]?.meshGatewayMode, "remote", "the target's own service-defaults");
  const o = compileChain(lookup, "db", { namespace: "default", datacenter: "dc1", meshGatewayOverride: "local" });
  t.equal(o.targets["db.default.dc2"]?.meshGatewayMode, "local", "the proxy's override wins");
  t.equal(meshGatewayOverride(lookup, "web", undefined, undefined), undefined, "nothing on the source side: each target decides");
  t.equal(meshGatewayOverride(entryIndex([parse({ Kind: "proxy-defaults", Name: "global", MeshGateway: { Mode: "local" } })]), "web", undefined, undefined), "local");
  const loop = entryIndex([parse({ Kind: "service-resolver", Name: "a", Redirect: { Service: "b" } }), parse({ Kind: "service-resolver", Name: "b", Redirect: { Service: "a" } })]);
  t.throws(() => compileChain(loop, "a", { namespace: "default", datacenter: "dc1" }), /redirect chain is longer than 8 hops/, "a real loop is still refused");
});
