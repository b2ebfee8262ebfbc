// The native library on a Consul agent (the agent double): chosen from CONSUL_HTTP_ADDR as the
// CLI chooses, a native server registered as a Connect-native service (Connect.Native) and
// deregistered on close, a native client resolving it through the agent's discovery chain and
// health endpoints, intentions from the agent.
import t from "tap";
import { startDouble } from "../helpers/consul-mesh.js";
import { fetchUntil, serve, service } from "../helpers/native.js";
import { until } from "../helpers/l7.js";
import { fetch } from "undici";

t.test("native client → native server through a Consul agent chosen by CONSUL_HTTP_ADDR", async (t) => {
  const d = await startDouble(t);
  const env = { CONSUL_HTTP_ADDR: d.url };
  const api = await service(t, { name: "api", env });
  const web = await service(t, { name: "web", env });
  t.equal(api.snapshot.source, "consul", "the Consul control plane was chosen from the environment");
  t.equal(api.snapshot.identity.trustDomain, d.trustDomain, "api's leaf comes from the agent");
  const served = await serve(t, api);
  await until(() => d.requestsTo("/v1/agent/service/register").length > 0, 5000, "api registers");
  const reg = JSON.parse(d.requestsTo("/v1/agent/service/register")[0]!.body) as Record<string, unknown>;
  t.equal(reg["Name"], "api", "registered under its own name");
  t.same(reg["Connect"], { Native: true }, "as a Connect-native service");
  t.equal(reg["Port"], served.port, "with the port its server listens on");
  const id = String(reg["ID"]);
  const res = await fetchUntil(web, "https://api.service.consul/v1/things");
  t.equal(await res.text(), "api /v1/things from web", "web reached api; api saw web's identity");

  d.setIntentions("api", [{ source: "evil", action: "deny" }]);
  await until(() => api.snapshot.intentions.intentions.some((i) => i.source === "evil"), 10_000, "api has the agent's deny intention");
  const evil = await service(t, { name: "evil", env });
  // As an app behind a sidecar sees it: 503 with Envoy's UF flag (the connection was closed at the handshake).
  const refused = await fetch("https://api.service.consul/x", { dispatcher: evil.dispatcher() });
  t.equal(`${refused.status} ${refused.headers.get("x-meshproxy-response-flags")}`, "503 UF", "evil, denied by the agent's intention, is refused (503 UF)");
  t.notOk(served.seen.some((s) => s.peer === "evil"), "and the app never saw it");

  await api.close();
  t.equal(d.service(id), undefined, "close() deregistered api from the agent");
});
