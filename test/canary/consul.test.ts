// `meshproxy canary` against a Consul agent: the splitter through /v1/config with ?cas, the
// callers' sidecars from the catalog (envoy_prometheus_bind_addr), an agent outage that pauses
// the rollout until the agent is back, and a human's edit that lands between the canary's read
// and its write (the agent answers the CAS false; the canary stops and writes nothing over it).
import t from "tap";
import { createServer } from "node:http";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { Metrics } from "../../src/telemetry/metrics.js";
import { runMeshproxy, type Teardown } from "../helpers/mesh.js";
import { ConfigAgent } from "./consul-config-agent.js";

const TD = "0c4a3f6e-2b1d-4e8a-9f7c-5d6e7a8b9c01.consul";

/** A caller's sidecar as the canary sees it: its metrics, with healthy traffic to both subsets added at every scrape. */
async function callerMetrics(t: Teardown): Promise<number> {
  const m = new Metrics({ processMetrics: false });
  const server = createServer((req, res) => {
    for (let i = 0; i < 30; i++) {
      m.http.response(`v1.api.default.dc1.internal.${TD}`, 200, 4);
      m.http.response(`v2.api.default.dc1.internal.${TD}`, 200, 4);
    }
    m.registry.metrics().then(
      (text) => {
        res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
        res.end(text);
      },
      (e: unknown) => res.destroy(e instanceof Error ? e : new Error(String(e))),
    );
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return (server.address() as AddressInfo).port;
}

async function agentWithRollout(t: Teardown): Promise<ConfigAgent> {
  const agent = await ConfigAgent.start(t);
  agent.set({ Kind: "service-resolver", Name: "api", DefaultSubset: "v1", Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2" } } });
  agent.set({ Kind: "service-splitter", Name: "api", Splits: [{ Weight: 100, ServiceSubset: "v1" }, { Weight: 0, ServiceSubset: "v2" }] });
  const port = await callerMetrics(t);
  agent.proxies.push({ id: "web-sidecar-proxy", service: "web-sidecar-proxy", address: "127.0.0.1", metricsBind: `0.0.0.0:${port}` });
  agent.proxies.push({ id: "api-sidecar-proxy", service: "api-sidecar-proxy", address: "127.0.0.1" });
  return agent;
}

const FLAGS = ["-service", "api", "-from", "v1", "-to", "v2", "-steps", "50,100", "-interval", "300ms", "-max-error-rate", "0.01", "-max-p99", "250ms", "-min-requests", "20", "-log-json"];

function weights(e: Record<string, unknown> | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of (e?.["Splits"] ?? []) as Array<{ Weight: number; ServiceSubset: string }>) out[s.ServiceSubset] = s.Weight;
  return out;
}

t.test("an agent outage pauses the rollout; it resumes and finishes when the agent is back", async (t) => {
  const agent = await agentWithRollout(t);
  const c = runMeshproxy(t, ["canary", ...FLAGS], { CONSUL_HTTP_ADDR: agent.address });
  await c.waitForLog((l) => l["@message"] === "canary decision");
  const before = agent.get("service-splitter", "api");
  await agent.down();
  await c.waitForLog((l) => l["@message"] === "control plane unavailable; the rollout is paused (nothing is changed) until it answers");
  await c.waitForLog((l) => l["@message"] === "control plane unavailable; the rollout is paused (nothing is changed) until it answers" && Number(l["attempt"]) >= 3);
  t.equal(c.child.exitCode, null, "still running during the outage");
  await agent.up();
  t.equal(await c.exited, 0, `finished once the agent was back; ${c.stderrText()}`);
  t.ok(c.logs.some((l) => l["@message"] === "control plane answers again; the rollout resumes and this step's window starts over"));
  t.same(weights(agent.get("service-splitter", "api")), { v1: 0, v2: 100 }, "v2 takes 100%");
  t.equal((agent.get("service-splitter", "api")?.["Meta"] as Record<string, string>)["meshproxy-canary-status"], "done");
  t.ok(Number(agent.get("service-splitter", "api")?.["ModifyIndex"]) > Number(before?.["ModifyIndex"]));
  const puts = agent.calls.filter((x) => x.method === "PUT");
  t.ok(puts.length >= 2 && puts.every((p) => /[?&]cas=\d+/.test(p.url)), "every write carries ?cas=<ModifyIndex>");
  t.ok(c.logs.some((l) => l["@message"] === "sidecar figures unavailable" && /api-sidecar-proxy.*envoy_prometheus_bind_addr/.test(String(l["problem"]))), "a proxy without a metrics address is reported");
  t.ok(agent.calls.some((x) => x.url.startsWith("/v1/catalog/service/web-sidecar-proxy")), "callers found in the catalog");
});

t.test("a human edit between the canary's read and write: CAS refuses it, the canary stops, the edit stands", async (t) => {
  const agent = await agentWithRollout(t);
  let puts = 0;
  const human = { Kind: "service-splitter", Name: "api", Splits: [{ Weight: 70, ServiceSubset: "v1" }, { Weight: 30, ServiceSubset: "v2" }] };
  const arm = () => {
    agent.beforeNextPut = () => {
      puts++;
      if (puts === 2) agent.set(human);
      else arm();
    };
  };
  arm();
  const c = runMeshproxy(t, ["canary", ...FLAGS], { CONSUL_HTTP_ADDR: agent.address });
  t.equal(await c.exited, 1);
  t.ok(agent.calls.some((x) => x.method === "PUT" && x.answer === false), "the agent refused the stale write");
  t.same(weights(agent.get("service-splitter", "api")), { v1: 70, v2: 30 }, "the human's split stands");
  t.equal(agent.get("service-splitter", "api")?.["Meta"], undefined, "nothing of the canary's was written over it");
  t.match(c.stdoutText(), /result: conflict/);
});

t.test("a write Consul refuses with a 500 that is not about its servers ends the run instead of waiting forever", async (t) => {
  const agent = await agentWithRollout(t);
  let puts = 0;
  const arm = () => {
    agent.beforeNextPut = () => {
      puts++;
      // The step to 100%: the resolver lost v2 meanwhile, and the chain no longer compiles.
      if (puts === 2) agent.refusePuts = { status: 500, text: 'discovery chain "api" uses a nonexistent subset "v2"' };
      else arm();
    };
  };
  arm();
  const c = runMeshproxy(t, ["canary", ...FLAGS], { CONSUL_HTTP_ADDR: agent.address });
  t.equal(await c.exited, 1);
  t.match(c.stdoutText(), /result: refused: writing service-splitter "api": PUT \/v1\/config: HTTP 500: discovery chain "api" uses a nonexistent subset "v2"; nothing more was written/);
  t.same(weights(agent.get("service-splitter", "api")), { v1: 50, v2: 50 }, "the split stays at the last step written");
});
