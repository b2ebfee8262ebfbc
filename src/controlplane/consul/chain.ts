// The agent's compiled discovery chain (/v1/discovery-chain/:service) as a CompiledChain: the
// same shape the dev control plane compiles from config entries, so both feed one Snapshot
// builder. Route definitions and load-balancer settings have the config entries' own JSON shape,
// so they are read by the config-entry parser.
import { DEFAULTS, type Protocol } from "../../config/snapshot.js";
import { parseDurationMs } from "../../config/duration.js";
import { MESH_GATEWAY_MODES, parseEntry, type MeshGatewayMode, type RouterRoute, type ServiceResolver } from "../chain/entries.js";
import type { ChainRoute, ChainSplit, ChainTarget, CompiledChain } from "../chain/compile.js";
import { WireError } from "./wire.js";

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function obj(v: unknown, where: string, ep: string): Obj {
  if (!isObj(v)) throw new WireError(ep, where, "want a JSON object");
  return v;
}

function str(o: Obj, k: string): string {
  const v = o[k];
  return typeof v === "string" ? v : "";
}

function asProtocol(p: string): Protocol {
  return p === "http" || p === "http2" || p === "grpc" ? p : "tcp";
}

/** The target's MeshGateway.Mode as the agent compiled it; empty (Consul's default) is none. */
function meshGatewayMode(t: Obj): MeshGatewayMode {
  const mg = isObj(t["MeshGateway"]) ? t["MeshGateway"] : {};
  const m = str(mg, "Mode").toLowerCase();
  return MESH_GATEWAY_MODES.find((x) => x === m) ?? "none";
}

const CATCH_ALL = { path: { kind: "prefix" as const, value: "/" }, headers: [], queryParams: [], methods: [] };

export function chainFromAgent(body: unknown, service: string): CompiledChain {
  const ep = `/v1/discovery-chain/${service}`;
  const chain = obj(obj(body, "$", ep)["Chain"], "$.Chain", ep);
  const nodes = obj(chain["Nodes"] ?? {}, "$.Chain.Nodes", ep);
  const rawTargets = obj(chain["Targets"] ?? {}, "$.Chain.Targets", ep);
  const protocol = asProtocol(str(chain, "Protocol"));
  const startNode = str(chain, "StartNode");

  const targets: Record<string, ChainTarget> = {};
  for (const [id, raw] of Object.entries(rawTargets)) {
    const t = obj(raw, `$.Chain.Targets["${id}"]`, ep);
    const subset = isObj(t["Subset"]) ? t["Subset"] : {};
    const connectTimeoutMs = parseDurationMs(t["ConnectTimeout"]);
    targets[id] = {
      id,
      service: str(t, "Service") || service,
      subset: str(t, "ServiceSubset"),
      namespace: str(t, "Namespace") || DEFAULTS.namespace,
      // Consul CE leaves it out; Enterprise names every target's, `default` included.
      partition: str(t, "Partition") || DEFAULTS.partition,
      datacenter: str(t, "Datacenter"),
      filter: str(subset, "Filter"),
      onlyPassing: subset["OnlyPassing"] === true,
      ...(connectTimeoutMs !== null ? { connectTimeoutMs } : {}),
      ...(str(t, "SNI") ? { sni: str(t, "SNI") } : {}),
      failover: [],
      meshGatewayMode: meshGatewayMode(t),
    };
  }

  const node = (name: string): Obj => obj(nodes[name], `$.Chain.Nodes["${name}"]`, ep);

  // Resolver nodes carry the failover list and load balancer of their target.
  for (const [name, raw] of Object.entries(nodes)) {
    const n = obj(raw, `$.Chain.Nodes["${name}"]`, ep);
    if (str(n, "Type") !== "resolver") continue;
    const r = obj(n["Resolver"] ?? {}, `$.Chain.Nodes["${name}"].Resolver`, ep);
    const id = str(r, "Target");
    const t = targets[id];
    if (!t) throw new WireError(ep, `$.Chain.Nodes["${name}"].Resolver.Target`, `"${id}" is not in Targets`);
    const failover = isObj(r["Failover"]) && Array.isArray(r["Failover"]["Targets"]) ? r["Failover"]["Targets"].filter((x): x is string => typeof x === "string" && x in targets) : [];
    let loadBalancer: ServiceResolver["loadBalancer"];
    if (isObj(n["LoadBalancer"])) {
      const e = parseEntry({ Kind: "service-resolver", Name: service, LoadBalancer: n["LoadBalancer"] }, `${ep} $.Chain.Nodes["${name}"]`, "wire");
      if (e.kind === "service-resolver") loadBalancer = e.loadBalancer;
    }
    targets[id] = { ...t, failover, ...(loadBalancer ? { loadBalancer } : {}) };
  }

  const resolverTimeout = (name: string): number | undefined => {
    const r = node(name)["Resolver"];
    if (!isObj(r)) return undefined;
    return parseDurationMs(r["RequestTimeout"]) ?? undefined;
  };

  // Flattening nested splitters multiplies their legs: a node listing itself 50 times, 8 deep,
  // would be 50^8 legs. The agent never compiles more than a few; past this the answer is bad.
  let legBudget = 10_000;
  /** The split legs a node leads to, weights in 1/10000ths, nested splitters flattened. */
  const legs = (name: string, weight: number, depth = 0): ChainSplit[] => {
    if (depth > 8) throw new WireError(ep, `$.Chain.Nodes["${name}"]`, "splitters nested deeper than 8");
    if (--legBudget < 0) throw new WireError(ep, `$.Chain.Nodes["${name}"]`, "splitters lead to more than 10000 legs");
    const n = node(name);
    const type = str(n, "Type");
    if (type === "resolver") return [{ target: str(obj(n["Resolver"], `$.Chain.Nodes["${name}"].Resolver`, ep), "Target"), weight }];
    if (type !== "splitter") throw new WireError(ep, `$.Chain.Nodes["${name}"].Type`, `"${type}" cannot follow a route or a split`);
    const out: ChainSplit[] = [];
    for (const s of Array.isArray(n["Splits"]) ? n["Splits"] : []) {
      const leg = obj(s, `$.Chain.Nodes["${name}"].Splits[]`, ep);
      const w = typeof leg["Weight"] === "number" ? leg["Weight"] : 0;
      const def = isObj(leg["Definition"]) ? leg["Definition"] : {};
      // The splitter entry's own parser reads the headers of a leg; its weight check is for whole entries.
      const parsed = parseEntry({ Kind: "service-splitter", Name: service, Splits: [{ ...def, Weight: 100 }] }, `${ep} $.Chain.Nodes["${name}"]`, "wire");
      const headers = parsed.kind === "service-splitter" ? parsed.splits[0] : undefined;
      for (const l of legs(str(leg, "NextNode"), Math.round((weight * Math.round(w * 100)) / 10_000), depth + 1)) {
        out.push({ ...l, ...(headers?.requestHeaders ? { requestHeaders: headers.requestHeaders } : {}), ...(headers?.responseHeaders ? { responseHeaders: headers.responseHeaders } : {}) });
      }
    }
    return out;
  };

  const start = node(startNode);
  const startType = str(start, "Type");
  let routes: ChainRoute[] = [];
  let defaultTarget: string;
  if (startType === "router") {
    const raw = Array.isArray(start["Routes"]) ? start["Routes"] : [];
    const defs = raw.map((r, i) => obj(obj(r, `$.Chain.Nodes["${startNode}"].Routes[${i}]`, ep)["Definition"] ?? {}, `$.Chain.Nodes["${startNode}"].Routes[${i}].Definition`, ep));
    const parsed = parseEntry({ Kind: "service-router", Name: service, Routes: defs }, `${ep} $.Chain.Nodes["${startNode}"]`, "wire");
    const routerRoutes: readonly RouterRoute[] = parsed.kind === "service-router" ? parsed.routes : [];
    routes = routerRoutes.map((r, i) => {
      const next = str(obj(raw[i], "", ep), "NextNode");
      const rt = str(node(next), "Type") === "resolver" ? resolverTimeout(next) : undefined;
      return {
        match: { ...(r.path ? { path: r.path } : {}), headers: r.headers, queryParams: r.queryParams, methods: r.methods },
        destination: r.destination,
        splits: legs(next, 10_000),
        ...(rt !== undefined ? { resolverRequestTimeoutMs: rt } : {}),
      };
    });
    const last = routes[routes.length - 1];
    defaultTarget = last?.splits[0]?.target ?? Object.keys(targets)[0] ?? "";
  } else if (startType === "splitter") {
    const splits = legs(startNode, 10_000);
    routes = [{ match: CATCH_ALL, destination: { retryOn: [], retryOnStatusCodes: [] }, splits }];
    defaultTarget = splits[0]?.target ?? "";
  } else {
    defaultTarget = str(obj(start["Resolver"], `$.Chain.Nodes["${startNode}"].Resolver`, ep), "Target");
    const rt = resolverTimeout(startNode);
    if (protocol !== "tcp") routes = [{ match: CATCH_ALL, destination: { retryOn: [], retryOnStatusCodes: [] }, splits: [{ target: defaultTarget, weight: 10_000 }], ...(rt !== undefined ? { resolverRequestTimeoutMs: rt } : {}) }];
  }
  if (!targets[defaultTarget]) throw new WireError(ep, "$.Chain", `start node "${startNode}" leads to no known target`);
  return { service: str(chain, "ServiceName") || service, protocol, routes, defaultTarget, targets };
}
