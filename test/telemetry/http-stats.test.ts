// The cluster's response-code series include the proxy's own answers after a failed attempt, as
// Envoy's router charges them (chargeUpstreamAbort): a dashboard's error rate built on
// upstream_rq_xx must see a subset that times out or refuses connections.
import t from "tap";
import { Metrics } from "../../src/telemetry/metrics.js";

const C = "v2.api.default.dc1.internal.0c4a3f6e-2b1d-4e8a-9f7c-5d6e7a8b9c01.consul";

function value(text: string, name: string, labels: Record<string, string>): number {
  for (const line of text.split("\n")) {
    if (!line.startsWith(name + "{")) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return NaN;
}

t.test("504 UT and 503 UF are charged to the cluster's rq_xx, rq and rq_completed", async (t) => {
  const m = new Metrics({ processMetrics: false });
  for (let i = 0; i < 7; i++) m.http.response(C, 200, 2);
  m.http.timeout(C);
  m.http.failed(C);
  m.http.failed(C);
  m.http.overflow(C);
  m.http.noHealthy(C);
  const text = await m.registry.metrics();
  const cluster = { envoy_cluster_name: C };
  t.equal(value(text, "envoy_cluster_upstream_rq_xx", { ...cluster, envoy_response_code_class: "5" }), 3, "the timeout and both connect failures are 5xx");
  t.equal(value(text, "envoy_cluster_upstream_rq_xx", { ...cluster, envoy_response_code_class: "2" }), 7);
  t.equal(value(text, "envoy_cluster_upstream_rq", { ...cluster, envoy_response_code: "504" }), 1);
  t.equal(value(text, "envoy_cluster_upstream_rq", { ...cluster, envoy_response_code: "503" }), 2);
  t.equal(value(text, "envoy_cluster_upstream_rq_completed", cluster), 10, "7 answers and 3 local aborts; UO and UH never reached the cluster");
  t.equal(value(text, "envoy_cluster_upstream_rq_timeout", cluster), 1);
  t.equal(value(text, "envoy_cluster_upstream_rq_pending_overflow", cluster), 1);
  t.equal(value(text, "envoy_cluster_upstream_rq_none_healthy", cluster), 1);
  const r = m.http.reading(C);
  t.equal(r?.requests, 12, "the traffic page counts every request the app sent to the cluster once");
  t.equal(r?.errors, 5, "and each failure once");
  t.equal(r?.timeCount, 7, "only real responses have a response time");
});
