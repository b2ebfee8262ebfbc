// The gateway's route table under fuzzing: for any SNI, a route is found only for a name it was
// given (a local service's exact SNI) or a service name in a datacenter whose gateways it knows;
// everything else is refused with a message, never thrown on.
import t from "tap";
import fc from "fast-check";
import { fuzzParams } from "./params.js";
import { GatewayRoutes } from "../../src/gateway/routes.js";
import { parseMeshSni } from "../../src/identity/sni.js";
import type { Endpoint } from "../../src/config/snapshot.js";

const TD = "11111111-2222-3333-4444-555555555555.consul";
const ep: Endpoint = { host: "127.0.0.1", port: 1, healthy: true, id: "e", meta: {} };
const LOCAL = [`web.default.dc1.internal.${TD}`, `v1.web.default.dc1.internal.${TD}`, `api.team.ap1.dc1.internal-v1.${TD}`];
const routes = GatewayRoutes.compile({ trustDomain: TD, datacenter: "dc1", services: new Map(LOCAL.map((s) => [s, { endpoints: [ep] }])), remoteGateways: new Map([["dc2", [ep]]]) });

const ATOMS = ["web", "api", "v1", "default", "team", "ap1", "dc1", "dc2", "dc3", "internal", "internal-v1", "query", "external", ".", ".", ".", TD, "x", "*", "", "WEB"];
const sni = fc.oneof(
  fc.array(fc.constantFrom(...ATOMS), { maxLength: 14 }).map((a) => a.join("")),
  fc.array(fc.constantFrom(...ATOMS.filter((a) => a !== ".")), { maxLength: 6 }).map((a) => [...a, TD].join(".")),
  fc.constantFrom(...LOCAL),
  fc.string({ maxLength: 60 }),
);

t.test("a route only for a given name or a service in a known datacenter", async (t) => {
  let routed = 0;
  fc.assert(
    fc.property(sni, (name) => {
      const r = routes.route(name);
      if (!r.ok) return r.message.length > 0;
      routed++;
      if (LOCAL.includes(name)) return r.cluster === name;
      const parsed = parseMeshSni(name, TD);
      return parsed.kind === "service" && parsed.datacenter === "dc2" && parsed.partition === "default" && r.cluster === `dc2.internal.${TD}`;
    }),
    fuzzParams(),
  );
  t.ok(routed > 0, `${routed} names routed`);
});
