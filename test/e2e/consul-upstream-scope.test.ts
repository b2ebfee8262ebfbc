// An upstream's DestinationNamespace and DestinationPartition (Consul Enterprise fields of the
// registration). meshproxy reads discovery chains and instances in the proxy's own namespace and
// partition only, so an upstream naming another is skipped with a warning rather than silently
// routed to the same-named service here; one naming its own (as an Enterprise agent fills them
// in) is served, and its listener's series carry that namespace and partition, as Consul's
// upstream stat prefix `upstream.<svc>.<ns>.<partition>.<dc>` does.
import t from "tap";
import { roundTrip, echoServer } from "../helpers/mesh.js";
import { connectError, consulSidecar, freePort, namedApp, startDouble } from "../helpers/consul-mesh.js";
import { metric } from "../helpers/peers.js";

t.test("agent mode: an upstream in another namespace or partition is skipped and said so; one in the proxy's own is served and labelled", { timeout: 60_000 }, async (t) => {
  const d = await startDouble(t);
  const echo = await echoServer(t);
  await consulSidecar(t, d, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`, "-register"]);
  const webApp = await namedApp(t, "web-app");
  const [pub, dbPort, billingPort, partPort] = [await freePort(), await freePort(), await freePort(), await freePort()];
  d.registerProxy({
    Kind: "connect-proxy",
    ID: "web-sidecar-proxy",
    Name: "web-sidecar-proxy",
    Address: "127.0.0.1",
    Port: pub,
    Proxy: {
      DestinationServiceName: "web",
      DestinationServiceID: "web-1",
      LocalServiceAddress: "127.0.0.1",
      LocalServicePort: webApp.port,
      Upstreams: [
        // As an Enterprise agent returns it: the proxy's own namespace and partition, spelled out.
        { DestinationName: "db", DestinationNamespace: "default", DestinationPartition: "default", LocalBindPort: dbPort },
        { DestinationName: "cache", DestinationNamespace: "billing", LocalBindPort: billingPort },
        { DestinationName: "api", DestinationPartition: "ap1", LocalBindPort: partPort },
      ],
    },
  });
  const web = await consulSidecar(t, d, ["-proxy-id", "web-sidecar-proxy"]);
  t.same(web.upstreams, { db: `127.0.0.1:${dbPort}` }, "only the upstream in the proxy's own namespace and partition has a listener");
  t.equal((await roundTrip(`127.0.0.1:${dbPort}`, "own scope\n")).toString(), "own scope\n", "and it carries bytes to db");
  for (const port of [billingPort, partPort]) t.equal(await connectError(`127.0.0.1:${port}`), "ECONNREFUSED", `nothing listens on ${port}: never routed to the same-named service in the proxy's own scope`);
  const warned = (upstream: string, what: RegExp) => web.logs.some((l) => l["@level"] === "warn" && l["@message"].startsWith(`upstream ${upstream}: `) && what.test(l["@message"]) && /skipped$/.test(l["@message"]));
  t.ok(warned("cache", /namespace "billing", partition "default" is not this proxy's own \(namespace "default", partition "default"\)/), "cache (namespace billing) is skipped with a warning naming both scopes");
  t.ok(warned("api", /namespace "default", partition "ap1" is not this proxy's own/), "and so is api (partition ap1)");
  const labels = { envoy_tcp_prefix: "upstream", consul_upstream_service: "db", consul_upstream_namespace: "default", consul_upstream_partition: "default", consul_upstream_datacenter: "dc1" };
  t.equal(await metric(web.adminAddr, "envoy_tcp_downstream_cx_total", labels), 1, "the served upstream's connection, under its namespace and partition");
});
