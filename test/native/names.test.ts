// The DNS forms a native app may name a mesh destination with, and the error for every other one.
import t from "tap";
import { targetOfHost, targetOfName, targetOfOrigin, upstreamKey } from "../../src/native/names.js";
import { MeshNameError } from "../../src/native/errors.js";

t.test("Consul's service forms, with and without a datacenter", async (t) => {
  const here = { service: "db", datacenter: undefined };
  const dc2 = { service: "db", datacenter: "dc2" };
  t.same(targetOfHost("db.service.consul"), here);
  t.same(targetOfHost("DB.Service.Consul."), here, "case and a root dot do not matter");
  t.same(targetOfHost("db.connect.consul"), here, ".connect names the same mesh destination");
  t.same(targetOfHost("db.service.dc2.consul"), dc2);
  t.same(targetOfHost("db.service.dc2.dc.consul"), dc2, "Consul's canonical <dc>.dc form");
  t.same(targetOfHost("db.connect.dc2.consul"), dc2);
  t.same(targetOfName("db"), here, "a bare name");
  t.same(targetOfName("db.service.dc2.consul"), dc2);
  t.same(targetOfOrigin("https://db.service.dc2.consul/x?y"), { ...dc2, host: "db.service.dc2.consul" });
  t.equal(upstreamKey("db", undefined), "db");
  t.equal(upstreamKey("db", "dc2"), "db.service.dc2", "as -upstream writes it");
});

t.test("every other name is refused, saying what is accepted", async (t) => {
  const cases: Array<[string, RegExp]> = [
    ["db.virtual.consul", /transparent proxying/],
    ["db.query.consul", /prepared queries/],
    ["db.ingress.consul", /ingress gateway/],
    ["web1.node.consul", /node lookups/],
    ["v1.db.service.consul", /tag lookups/],
    ["db.service.ns1.ns.dc2.dc.consul", /namespaces, partitions and peers/],
    ["db.service.dc$.consul", /not a datacenter name/],
    ["d!b.service.consul", /not a valid service name/],
    ["db.service.example.com", /not a mesh service name/],
    ["example.com", /not a mesh service name/],
    ["service.consul", /not a mesh service name/],
  ];
  for (const [name, why] of cases) {
    t.throws(() => targetOfHost(name), MeshNameError, name);
    t.throws(() => targetOfHost(name), { message: why }, `${name}: ${String(why)}`);
  }
  t.throws(() => targetOfHost("db.virtual.consul"), { message: /want <service>\.service\.consul or <service>\.service\.<datacenter>\.consul/ }, "naming the accepted forms");
  t.throws(() => targetOfOrigin("http://db.service.consul/"), { message: /mTLS/ });
  t.throws(() => targetOfOrigin("https://db.service.consul:8443/"), { message: /takes no port/ });
  t.throws(() => targetOfName("d b"), MeshNameError);
});
