// The traffic page's weight change against Consul's config API: the splitter and resolver are
// read from /v1/config, the new splitter is written with PUT /v1/config?cas=<ModifyIndex> (cas=0
// when there was none), and a write that lost the race (Consul answers false) is a conflict,
// never a silent overwrite. A small stand-in for the agent's config endpoints, on real HTTP.
import t from "tap";
import { createServer } from "node:http";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { AgentClient } from "../../src/controlplane/consul/client.js";
import { writeSubsetWeightsToConsul } from "../../src/controlplane/consul/split-write.js";
import { SplitChangeError } from "../../src/config/split-weights.js";
import type { Teardown } from "../helpers/mesh.js";

interface Entry {
  body: Record<string, unknown>;
  modifyIndex: number;
}

async function consulConfig(t: Teardown) {
  const entries = new Map<string, Entry>();
  const puts: Array<{ cas: string | null; body: unknown }> = [];
  let index = 100;
  let raceBeforePut = false;
  const server = createServer((req, res) => {
    const u = new URL(req.url ?? "/", "http://x");
    let text = "";
    req.setEncoding("utf8").on("data", (d: string) => (text += d));
    req.on("end", () => {
      const reply = (status: number, v: unknown) => {
        res.writeHead(status, { "content-type": "application/json", "x-consul-index": String(index) });
        res.end(typeof v === "string" ? v : JSON.stringify(v));
      };
      const get = /^\/v1\/config\/([^/]+)\/([^/]+)$/.exec(u.pathname);
      if (req.method === "GET" && get) {
        const e = entries.get(`${get[1]}/${get[2]}`);
        return e ? reply(200, { ...e.body, CreateIndex: 1, ModifyIndex: e.modifyIndex }) : reply(404, `Config entry not found for "${get[1]}" / "${get[2]}"`);
      }
      if (req.method === "PUT" && u.pathname === "/v1/config") {
        const body = JSON.parse(text) as Record<string, unknown>;
        const cas = u.searchParams.get("cas");
        puts.push({ cas, body });
        const key = `${String(body["Kind"])}/${String(body["Name"])}`;
        if (raceBeforePut) {
          // Someone else wrote the entry between our read and our write.
          entries.set(key, { body: { Kind: "service-splitter", Name: "api", Splits: [{ Weight: 100, ServiceSubset: "v1" }] }, modifyIndex: ++index });
        }
        const current = entries.get(key);
        if (cas !== null && Number(cas) !== (current?.modifyIndex ?? 0)) return reply(200, "false");
        entries.set(key, { body, modifyIndex: ++index });
        return reply(200, "true");
      }
      reply(404, "no such endpoint");
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  const client = new AgentClient({ httpAddr: `127.0.0.1:${(server.address() as AddressInfo).port}` });
  t.teardown(() => client.close());
  return {
    client,
    entries,
    puts,
    race: () => (raceBeforePut = true),
    put: (body: Record<string, unknown>) => entries.set(`${String(body["Kind"])}/${String(body["Name"])}`, { body, modifyIndex: ++index }),
  };
}

const RESOLVER = { Kind: "service-resolver", Name: "api", DefaultSubset: "v1", Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2" } } };

async function refusal(p: Promise<void>): Promise<string> {
  try {
    await p;
    return "stored";
  } catch (e) {
    if (e instanceof SplitChangeError) return `${e.refusal}: ${e.message}`;
    throw e;
  }
}

t.test("writes with the splitter's ModifyIndex as cas, without Consul's indexes in the body", async (t) => {
  const c = await consulConfig(t);
  c.put(RESOLVER);
  c.put({ Kind: "service-splitter", Name: "api", Meta: { by: "hand" }, Splits: [{ Weight: 90, ServiceSubset: "v1" }, { Weight: 10, ServiceSubset: "v2", ResponseHeaders: { Set: { "x-canary": "1" } } }] });
  const modifyIndex = c.entries.get("service-splitter/api")!.modifyIndex;
  await writeSubsetWeightsToConsul(c.client, "api", [{ subset: "v1", weight: 5000 }, { subset: "v2", weight: 5000 }]);
  t.same(c.puts, [{
    cas: String(modifyIndex),
    body: { Kind: "service-splitter", Name: "api", Meta: { by: "hand" }, Splits: [{ Weight: 50, ServiceSubset: "v1" }, { ResponseHeaders: { Set: { "x-canary": "1" } }, Weight: 50, ServiceSubset: "v2" }] },
  }]);
});

t.test("creates the splitter with cas=0 when Consul has none", async (t) => {
  const c = await consulConfig(t);
  c.put(RESOLVER);
  await writeSubsetWeightsToConsul(c.client, "api", [{ subset: "v2", weight: 10_000 }]);
  t.equal(c.puts[0]?.cas, "0");
  t.same(c.entries.get("service-splitter/api")?.body, { Kind: "service-splitter", Name: "api", Splits: [{ Weight: 100, ServiceSubset: "v2" }] });
});

t.test("a concurrent change makes Consul answer false: a conflict, and the other write stands", async (t) => {
  const c = await consulConfig(t);
  c.put(RESOLVER);
  c.put({ Kind: "service-splitter", Name: "api", Splits: [{ Weight: 90, ServiceSubset: "v1" }, { Weight: 10, ServiceSubset: "v2" }] });
  c.race();
  t.match(await refusal(writeSubsetWeightsToConsul(c.client, "api", [{ subset: "v2", weight: 10_000 }])), /^conflict: the service-splitter "api" changed in Consul since it was read/);
  t.same(c.entries.get("service-splitter/api")?.body, { Kind: "service-splitter", Name: "api", Splits: [{ Weight: 100, ServiceSubset: "v1" }] }, "the other writer's entry is kept");
});

t.test("subsets are checked against Consul's resolver; an agent error is 'unavailable'", async (t) => {
  const c = await consulConfig(t);
  t.match(await refusal(writeSubsetWeightsToConsul(c.client, "api", [{ subset: "v2", weight: 10_000 }])), /^conflict: "api" has no service-resolver with Subsets/);
  c.put(RESOLVER);
  t.match(await refusal(writeSubsetWeightsToConsul(c.client, "api", [{ subset: "v7", weight: 10_000 }])), /^invalid: subset "v7" is not defined/);
  t.same(c.puts, [], "nothing was written");
  const down = new AgentClient({ httpAddr: "127.0.0.1:1" });
  t.teardown(() => down.close());
  t.match(await refusal(writeSubsetWeightsToConsul(down, "api", [{ subset: "v2", weight: 10_000 }])), /^unavailable: Consul: /);
});
