// Consul's stats tags, read from cluster names and upstream prefixes as Consul's Envoy bootstrap
// extracts them (command/connect/envoy/bootstrap_config.go), including its quirks.
import t from "tap";
import { CLUSTER_LABELS, clusterLabelValues, sourceLabels, sourceTagsOf } from "../../src/telemetry/consul-tags.js";

function tags(name: string): Record<string, string> {
  const v = clusterLabelValues(name);
  const out: Record<string, string> = {};
  CLUSTER_LABELS.forEach((k, i) => {
    if (v[i]) out[k] = v[i];
  });
  return out;
}

t.test("cluster names: Consul's SNI forms give the consul_destination_* and legacy consul_* labels", async (t) => {
  const td = "11111111-2222-3333-4444-555555555555";
  t.match(tags(`db.default.dc1.internal.${td}.consul`), {
    envoy_cluster_name: `db.default.dc1.internal.${td}.consul`,
    consul_destination_service: "db",
    consul_destination_namespace: "default",
    consul_destination_datacenter: "dc1",
    consul_destination_routing_type: "internal",
    consul_destination_trust_domain: td,
    consul_destination_target: "db.default.dc1",
    consul_destination_full_target: `db.default.dc1.internal.${td}`,
    consul_service: "db",
    consul_target: "db.default.dc1",
  });
  t.notOk("consul_destination_partition" in tags(`db.default.dc1.internal.${td}.consul`), "the default partition has no segment: no partition label (as Envoy)");
  const subset = tags("f8f8~v2.api.default.dc1.internal.abc.consul");
  t.equal(subset["consul_destination_custom_hash"], "f8f8");
  t.equal(subset["consul_destination_service_subset"], "v2");
  t.equal(subset["consul_destination_service"], "api");
  t.equal(subset["consul_destination_target"], "f8f8~v2.api.default.dc1");
  const passthrough = tags("passthrough~db.default.dc1.internal.abc.consul");
  t.equal(passthrough["consul_destination_service"], "db", "passthrough~ is skipped by the current tags");
  t.equal(passthrough["consul_custom_hash"], "passthrough", "the deprecated ones read it as a custom hash, as Consul's expressions do");
  const peered = tags("pong.default.cloudpeer.external.abc.consul");
  t.equal(peered["consul_destination_peer"], "cloudpeer");
  t.equal(peered["consul_destination_datacenter"], undefined, "a peer's cluster has no datacenter");
  const part = tags("pong.default.partA.dc2.internal-v1.abc.consul");
  t.equal(part["consul_destination_service"], "default", "a non-default partition reads as Consul's greedy subset group reads it");
  t.same(tags("local_app"), { envoy_cluster_name: "local_app" }, "local_app: no Consul tags");
  t.same(tags("db.default.dc1.internal.example.org"), { envoy_cluster_name: "db.default.dc1.internal.example.org" }, "a trust domain not ending .consul: none (Consul's expressions need it)");
});

t.test("source labels: Consul's fixed tags, partition from the SPIFFE ID", async (t) => {
  t.same(sourceLabels(sourceTagsOf({ service: "web", namespace: "default", datacenter: "dc1", spiffeId: "spiffe://td.consul/ns/default/dc/dc1/svc/web" })), {
    local_cluster: "web",
    consul_source_service: "web",
    consul_source_namespace: "default",
    consul_source_partition: "default",
    consul_source_datacenter: "dc1",
  });
  t.equal(sourceTagsOf({ service: "web", namespace: "ns1", datacenter: "dc1", spiffeId: "spiffe://td.consul/ap/part1/ns/ns1/dc/dc1/svc/web" }).partition, "part1");
});
