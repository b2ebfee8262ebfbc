// consul_upstream_namespace and consul_upstream_partition: Consul's upstream stat prefix
// (`upstream.<svc>.<ns>.<partition>.<dc>`) names the namespace and partition the upstream's
// chain is in, which is the upstream's DestinationNamespace/DestinationPartition, else the
// proxy's own. The data plane takes them from the Snapshot's upstream listener; without them,
// the cluster's namespace and the default partition.
import t from "tap";
import type { Snapshot } from "../../src/config/snapshot.js";
import { cluster, startInProcess, tcpUpstream, webIdentity } from "../helpers/in-process.js";
import { sample } from "../helpers/peers.js";

const { identity, trust } = await webIdentity();

function snapshot(over: Partial<Snapshot>): Snapshot {
  return { version: 1, source: "test", identity, trust, publicListener: null, upstreams: [], clusters: {}, intentions: { defaultAction: "deny", intentions: [] }, ...over };
}

t.test("an upstream's namespace and partition label its listener's series", async (t) => {
  const p = await startInProcess(
    t,
    snapshot({
      upstreams: [tcpUpstream("db", { namespace: "billing", partition: "ap1" }), tcpUpstream("cache")],
      clusters: { db: cluster("db", [1]), cache: cluster("cache", [1], { namespace: "team-a" }) },
    }),
  );
  const text = await p.proxy.metrics.registry.metrics();
  t.equal(
    sample(text, "envoy_tcp_downstream_cx_total", { envoy_tcp_prefix: "upstream", consul_upstream_service: "db", consul_upstream_namespace: "billing", consul_upstream_partition: "ap1", consul_upstream_datacenter: "dc1" }),
    0,
    "db: the namespace and partition the upstream names",
  );
  t.equal(
    sample(text, "envoy_tcp_downstream_cx_total", { envoy_tcp_prefix: "upstream", consul_upstream_service: "cache", consul_upstream_namespace: "team-a", consul_upstream_partition: "default" }),
    0,
    "cache, naming none: its cluster's namespace and the default partition",
  );
  t.equal(sample(text, "envoy_tcp_downstream_cx_total", { consul_upstream_service: "db", consul_upstream_partition: "default" }), null, "no series claims db is in the default partition");
});
