// The Consul agent's JSON, narrowed to what meshproxy uses. Unknown fields are ignored and
// `null` stands for an empty list or map, as the agent writes them. Every failure names the
// endpoint and field so a bad response can be told from a bad config.
import { createPrivateKey, X509Certificate } from "node:crypto";
import { parseDurationMs } from "../../config/duration.js";
import { EntryError, MESH_GATEWAY_MODES, describeValue, parsePermissions, parseUpstreamSettings, type MeshGatewayMode, type UpstreamSettings } from "../chain/entries.js";
import type { Permission } from "../../config/http.js";
import { chainsToRoot } from "../../identity/chain.js";
import { pemCertificates } from "../../identity/cert-info.js";
import { firstUriSan, parseServiceSpiffeId } from "../../identity/spiffe.js";

export class WireError extends Error {
  constructor(endpoint: string, field: string, why: string) {
    super(`${endpoint}: ${field}: ${why}`);
    this.name = "WireError";
  }
}

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

class Reader {
  constructor(
    private readonly endpoint: string,
    private readonly path: string,
    private readonly o: Obj,
  ) {}

  static of(endpoint: string, v: unknown, path = "$"): Reader {
    if (!isObj(v)) throw new WireError(endpoint, path, "want a JSON object");
    return new Reader(endpoint, path, v);
  }

  str(k: string): string {
    const v = this.o[k];
    if (typeof v !== "string") throw new WireError(this.endpoint, `${this.path}.${k}`, `want a string, got ${describeValue(v)}`);
    return v;
  }

  optStr(k: string): string {
    const v = this.o[k];
    if (v === undefined || v === null) return "";
    if (typeof v !== "string") throw new WireError(this.endpoint, `${this.path}.${k}`, "want a string");
    return v;
  }

  num(k: string): number {
    const v = this.o[k];
    if (typeof v !== "number" || !Number.isFinite(v)) throw new WireError(this.endpoint, `${this.path}.${k}`, `want a number, got ${describeValue(v)}`);
    return v;
  }

  optNum(k: string): number | undefined {
    const v = this.o[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isFinite(v)) throw new WireError(this.endpoint, `${this.path}.${k}`, "want a number");
    return v;
  }

  bool(k: string): boolean {
    return this.o[k] === true;
  }

  arr(k: string): Reader[] {
    const v = this.o[k];
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v)) throw new WireError(this.endpoint, `${this.path}.${k}`, "want an array");
    return v.map((x, i) => Reader.of(this.endpoint, x, `${this.path}.${k}[${i}]`));
  }

  strArr(k: string): string[] {
    const v = this.o[k];
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v) || !v.every((x): x is string => typeof x === "string")) throw new WireError(this.endpoint, `${this.path}.${k}`, "want an array of strings");
    return v;
  }

  obj(k: string): Reader {
    const v = this.o[k];
    return Reader.of(this.endpoint, v === undefined || v === null ? {} : v, `${this.path}.${k}`);
  }

  strMap(k: string): Record<string, string> {
    const v = this.o[k];
    if (v === undefined || v === null) return {};
    if (!isObj(v)) throw new WireError(this.endpoint, `${this.path}.${k}`, "want a map of strings");
    const out: Record<string, string> = {};
    for (const [key, val] of Object.entries(v)) if (typeof val === "string") out[key] = val;
    return out;
  }

  raw(k: string): unknown {
    return this.o[k];
  }

  keys(): string[] {
    return Object.keys(this.o);
  }
}

// ---- /v1/agent/connect/ca/roots ----

// Certificates and keys are checked here as the proxy checks a Snapshot: one it would refuse is
// a broken answer of this watch (the last good leaf or roots stay), not a piece that would have
// every later Snapshot refused with it.

function checkedCert(ep: string, at: string, pem: string): string {
  try {
    new X509Certificate(pem);
  } catch (e) {
    throw new WireError(ep, at, `not a PEM certificate (${e instanceof Error ? e.message : String(e)})`);
  }
  return pem;
}

function checkKeyMatches(ep: string, certPem: string, keyPem: string): void {
  let matches: boolean;
  try {
    matches = new X509Certificate(certPem).checkPrivateKey(createPrivateKey(keyPem));
  } catch (e) {
    throw new WireError(ep, "$.PrivateKeyPEM", `not a PEM private key (${e instanceof Error ? e.message : String(e)})`);
  }
  if (!matches) throw new WireError(ep, "$.PrivateKeyPEM", "does not match the certificate's public key");
}

export interface CaRoots {
  readonly trustDomain: string;
  readonly activeRootId: string;
  readonly roots: ReadonlyArray<{ readonly id: string; readonly certPem: string; readonly intermediatesPem: readonly string[]; readonly active: boolean; readonly notAfter: string }>;
}

export function parseRoots(body: unknown): CaRoots {
  const ep = "/v1/agent/connect/ca/roots";
  const r = Reader.of(ep, body);
  const roots = r.arr("Roots").map((x, i) => ({
    id: x.str("ID"),
    certPem: checkedCert(ep, `$.Roots[${i}].RootCert`, x.str("RootCert")),
    intermediatesPem: x.strArr("IntermediateCerts"),
    active: x.bool("Active"),
    notAfter: x.optStr("NotAfter"),
  }));
  if (roots.length === 0) throw new WireError(ep, "$.Roots", "no CA roots (is Connect enabled on the agent?)");
  // The active root signs every new leaf: a set without it could not verify the next leaf.
  const activeRootId = r.str("ActiveRootID");
  if (!roots.some((x) => x.id.toLowerCase() === activeRootId.toLowerCase())) {
    throw new WireError(ep, "$.ActiveRootID", `${JSON.stringify(activeRootId)} names none of the roots listed (${rootIds(roots)}); refused as an inconsistent answer, check the servers' CA state (GET /v1/connect/ca/roots)`);
  }
  return { trustDomain: r.str("TrustDomain").toLowerCase(), activeRootId, roots };
}

function rootIds(roots: CaRoots["roots"]): string {
  const shown = roots.slice(0, 8).map((x) => JSON.stringify(x.id));
  return `IDs ${shown.join(", ")}${roots.length > shown.length ? ` and ${roots.length - shown.length} more` : ""}`;
}

/**
 * A roots answer must verify this proxy's current leaf (with the intermediates its CertPEM
 * carries, which is the chain peers are sent): a set that does not is not this mesh's CA, and
 * trusting it would leave the proxy unable to verify its own mesh. A rotation passes:
 * the old root stays listed (inactive) while leafs from it are still out, and a leaf from the new
 * root reaches either the new root or, through the cross-signed certificate it is sent with, the
 * old one. The leaf is checked against the roots only in this direction: a new leaf may arrive
 * before the roots that list its root, and refusing it too could leave each waiting for the other.
 */
export function rootsVerifyingLeaf(roots: CaRoots, leaf: LeafCert | null): CaRoots {
  if (!leaf) return roots;
  const [leafCert, ...intermediates] = pemCertificates(leaf.certPem).map((p) => new X509Certificate(p));
  if (!leafCert) return roots;
  if (chainsToRoot(leafCert, intermediates, roots.roots.map((x) => new X509Certificate(x.certPem)))) return roots;
  throw new WireError(
    "/v1/agent/connect/ca/roots",
    "$.Roots",
    `none of the roots listed (${rootIds(roots.roots)}) verifies this proxy's leaf for ${JSON.stringify(leaf.service)} (serial ${leaf.serial}, issuer ${leafCert.issuer.split("\n").join(", ")}), directly or through the intermediates sent with it; refused, as trusting them would cut the proxy off from its own mesh. The agent lists the old root during a rotation: check the servers' CA state (GET /v1/connect/ca/roots) and the agent's leaf (GET /v1/agent/connect/ca/leaf/${leaf.service})`,
  );
}

// ---- /v1/agent/connect/ca/leaf/:service ----

export interface LeafCert {
  readonly serial: string;
  readonly certPem: string;
  readonly keyPem: string;
  readonly service: string;
  readonly serviceUri: string;
  readonly validAfter: Date;
  readonly validBefore: Date;
}

/**
 * `service`: the service the leaf was asked for. A leaf whose certificate is another's (its URI
 * SAN not the `ServiceURI` sent with it, or for another service) is refused: this proxy would
 * present it to every peer, and they would refuse it (or take this proxy for that service).
 */
export function parseLeaf(body: unknown, service?: string): LeafCert {
  const ep = "/v1/agent/connect/ca/leaf";
  const r = Reader.of(ep, body);
  const date = (k: string) => {
    const d = new Date(r.str(k));
    if (Number.isNaN(d.getTime())) throw new WireError(ep, `$.${k}`, "not an RFC 3339 time");
    return d;
  };
  const certPem = checkedCert(ep, "$.CertPEM", r.str("CertPEM"));
  // The intermediates after the leaf are sent to peers, and checked against the roots.
  pemCertificates(certPem).forEach((pem, i) => checkedCert(ep, `$.CertPEM (certificate ${i + 1})`, pem));
  const keyPem = r.str("PrivateKeyPEM");
  checkKeyMatches(ep, certPem, keyPem);
  const serviceUri = r.str("ServiceURI");
  const id = parseServiceSpiffeId(serviceUri);
  if (!id) throw new WireError(ep, "$.ServiceURI", `${JSON.stringify(serviceUri)} is not a SPIFFE service ID (spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>)`);
  const san = firstUriSan(new X509Certificate(certPem).subjectAltName);
  if (san !== serviceUri) {
    throw new WireError(ep, "$.CertPEM", `the certificate's URI SAN is ${san === null ? "missing" : JSON.stringify(san)}, not the ServiceURI sent with it (${serviceUri}); refused, the last good leaf stays`);
  }
  const leafService = r.str("Service");
  if (service !== undefined && (id.service !== service || leafService !== service)) {
    throw new WireError(ep, "$.Service", `the leaf is for service ${JSON.stringify(leafService)} (${serviceUri}), not ${JSON.stringify(service)}, the one asked for; refused, the last good leaf stays`);
  }
  return {
    serial: r.str("SerialNumber"),
    certPem,
    keyPem,
    service: leafService,
    serviceUri,
    validAfter: date("ValidAfter"),
    validBefore: date("ValidBefore"),
  };
}

// ---- /v1/agent/service/:id (the proxy registration) ----

export interface UpstreamDef {
  readonly destinationType: string;
  readonly destinationName: string;
  readonly datacenter: string;
  /** `DestinationNamespace`, `DestinationPartition` (Consul Enterprise); "" when not given: the proxy's own. */
  readonly destinationNamespace: string;
  readonly destinationPartition: string;
  readonly localBindAddress: string;
  readonly localBindPort: number;
  readonly localBindSocketPath: string;
  readonly connectTimeoutMs: number | undefined;
  readonly settings: UpstreamSettings | undefined;
  /** `Upstreams[].MeshGateway.Mode`; undefined when empty (Consul's default: the next level decides). */
  readonly meshGatewayMode: MeshGatewayMode | undefined;
}

export interface ProxyRegistration {
  readonly id: string;
  readonly kind: string;
  readonly address: string;
  readonly port: number;
  readonly destinationServiceName: string;
  readonly destinationServiceId: string;
  readonly localServiceAddress: string;
  readonly localServicePort: number;
  readonly protocol: string;
  readonly localConnectTimeoutMs: number | undefined;
  readonly handshakeTimeoutMs: number | undefined;
  readonly upstreams: readonly UpstreamDef[];
  /** `Proxy.MeshGateway.Mode`, with the agent's service-defaults and proxy-defaults merged in. */
  readonly meshGatewayMode: MeshGatewayMode | undefined;
}

/** `MeshGateway: {Mode}`; empty is Consul's default (undefined here), anything else unknown is an error. */
function meshGatewayMode(r: Reader): MeshGatewayMode | undefined {
  const m = r.obj("MeshGateway").optStr("Mode");
  if (m === "") return undefined;
  const found = MESH_GATEWAY_MODES.find((x) => x === m);
  if (!found) throw new WireError("/v1/agent/service", "MeshGateway.Mode", `${describeValue(m)} is not one of ${MESH_GATEWAY_MODES.join(", ")}`);
  return found;
}

/** A millisecond setting from a free-form Config map: a number, or a numeric string. */
function msSetting(v: unknown): number | undefined {
  if (typeof v === "number" && Number.isFinite(v) && v > 0) return v;
  if (typeof v === "string" && /^\d+$/.test(v)) return Number(v);
  return undefined;
}

export function parseProxyRegistration(body: unknown, endpoint = "/v1/agent/service"): ProxyRegistration {
  const r = Reader.of(endpoint, body);
  const p = r.obj("Proxy");
  const cfg = p.obj("Config");
  const upstreams = p.arr("Upstreams").map((u) => {
    const ucfg = u.obj("Config");
    return {
      destinationType: u.optStr("DestinationType") || "service",
      destinationName: u.str("DestinationName"),
      datacenter: u.optStr("Datacenter"),
      destinationNamespace: u.optStr("DestinationNamespace"),
      destinationPartition: u.optStr("DestinationPartition"),
      localBindAddress: u.optStr("LocalBindAddress") || "127.0.0.1",
      localBindPort: u.optNum("LocalBindPort") ?? 0,
      localBindSocketPath: u.optStr("LocalBindSocketPath"),
      connectTimeoutMs: msSetting(ucfg.raw("connect_timeout_ms")),
      settings: parseUpstreamSettings(u.raw("Config"), `${endpoint} Upstreams[${u.optStr("DestinationName")}].Config`),
      meshGatewayMode: meshGatewayMode(u),
    };
  });
  const protocol = cfg.raw("protocol");
  return {
    id: r.str("ID"),
    kind: r.optStr("Kind"),
    address: r.optStr("Address"),
    port: r.optNum("Port") ?? 0,
    destinationServiceName: p.optStr("DestinationServiceName"),
    destinationServiceId: p.optStr("DestinationServiceID"),
    localServiceAddress: p.optStr("LocalServiceAddress") || "127.0.0.1",
    localServicePort: p.optNum("LocalServicePort") ?? 0,
    protocol: typeof protocol === "string" ? protocol : "tcp",
    localConnectTimeoutMs: msSetting(cfg.raw("local_connect_timeout_ms")),
    handshakeTimeoutMs: msSetting(cfg.raw("handshake_timeout_ms")),
    upstreams,
    meshGatewayMode: meshGatewayMode(p),
  };
}

/** `/v1/agent/services`: id → registration, for resolving -sidecar-for. */
export function parseAgentServices(body: unknown): ProxyRegistration[] {
  const ep = "/v1/agent/services";
  const r = Reader.of(ep, body);
  return r.keys().flatMap((id) => {
    const s = r.obj(id);
    return s.optStr("Kind") === "connect-proxy" ? [parseProxyRegistration(r.raw(id), ep)] : [];
  });
}

// ---- /v1/health/connect/:service ----

export interface HealthEndpoint {
  readonly id: string;
  readonly service: string;
  /** The worst of the instance's checks. */
  readonly status: "passing" | "warning" | "critical";
  readonly tags: readonly string[];
  readonly nodeMeta: Record<string, string>;
  readonly node: string;
  /** The LAN address: `Service.Address`, else `Node.Address` (what this datacenter dials). */
  readonly address: string;
  readonly port: number;
  /** The address another datacenter dials directly (Consul's BestAddress(wan)); see {@link bestAddress}. */
  readonly wan: { readonly address: string; readonly port: number };
  readonly datacenter: string;
  /** The service whose identity the instance presents. */
  readonly identityService: string;
  readonly healthy: boolean;
  readonly meta: Record<string, string>;
}

/**
 * Consul's CheckServiceNode.BestAddress (agent/structs/structs.go), which Envoy's endpoints use
 * (agent/xds/endpoints.go: `ep.BestAddress(<node in another datacenter>)`). WAN: the service's
 * `TaggedAddresses.wan` (its `Port` when set, else the service port), else `Service.Address`,
 * else the node's `TaggedAddresses.wan`, else `Node.Address`. LAN: `Service.Address`, else
 * `Node.Address`. An empty tagged address is passed over rather than dialled.
 */
function bestAddress(svc: Reader, node: Reader, wan: boolean): { address: string; port: number } {
  const port = svc.num("Port");
  if (!wan) return { address: svc.optStr("Address") || node.str("Address"), port };
  const tagged = svc.obj("TaggedAddresses").obj("wan");
  const taggedAddress = tagged.optStr("Address");
  if (taggedAddress) return { address: taggedAddress, port: tagged.optNum("Port") || port };
  return { address: svc.optStr("Address") || node.strMap("TaggedAddresses")["wan"] || node.str("Address"), port };
}

export function parseHealth(body: unknown, service: string): HealthEndpoint[] {
  const ep = `/v1/health/connect/${service}`;
  if (body === null) return [];
  if (!Array.isArray(body)) throw new WireError(ep, "$", "want an array of service entries");
  return body.map((entry, i) => {
    const r = Reader.of(ep, entry, `$[${i}]`);
    const node = r.obj("Node");
    const svc = r.obj("Service");
    const checks = r.arr("Checks");
    const proxy = svc.obj("Proxy");
    const native = svc.obj("Connect").bool("Native");
    const statuses = checks.map((c) => c.optStr("Status"));
    return {
      id: svc.str("ID"),
      service: svc.optStr("Service"),
      status: statuses.includes("critical") ? "critical" : statuses.includes("warning") ? "warning" : "passing",
      tags: svc.strArr("Tags"),
      nodeMeta: node.strMap("Meta"),
      node: node.optStr("Node"),
      address: svc.optStr("Address") || node.str("Address"),
      port: svc.num("Port"),
      wan: bestAddress(svc, node, true),
      datacenter: node.optStr("Datacenter"),
      identityService: native ? svc.str("Service") : proxy.optStr("DestinationServiceName") || service,
      // As Envoy weighs them: any critical check makes the instance unhealthy.
      healthy: checks.every((c) => c.optStr("Status") !== "critical"),
      meta: svc.strMap("Meta"),
    };
  });
}

// ---- mesh gateways: /v1/catalog/services?filter=ServiceKind == "mesh-gateway", /v1/health/service/:name ----

/** The filter that lists a datacenter's mesh gateway services (Consul's ServiceKind). */
export const MESH_GATEWAY_FILTER = 'ServiceKind == "mesh-gateway"';

/** `/v1/catalog/services`: the service names (keys); their tags are not needed. */
export function parseServiceNames(body: unknown): string[] {
  if (body === null) return [];
  return Reader.of("/v1/catalog/services", body).keys().sort();
}

export interface GatewayEndpoint {
  readonly id: string;
  readonly node: string;
  readonly datacenter: string;
  /** The LAN address (Service.Address, else the node's), which the gateway's own datacenter dials. */
  readonly lan: { readonly address: string; readonly port: number };
  /** The address other datacenters dial (Consul's BestAddress(wan): Service.TaggedAddresses.wan, Service.Address, the node's wan, Node.Address). */
  readonly wan: { readonly address: string; readonly port: number };
  readonly status: "passing" | "warning" | "critical";
  readonly meta: Record<string, string>;
}

/** `/v1/health/service/<gateway>`: the entries of Kind mesh-gateway; anything else under that name is left out. */
export function parseGatewayHealth(body: unknown, name: string): GatewayEndpoint[] {
  const ep = `/v1/health/service/${name}`;
  if (body === null) return [];
  if (!Array.isArray(body)) throw new WireError(ep, "$", "want an array of service entries");
  return body.flatMap((entry, i) => {
    const r = Reader.of(ep, entry, `$[${i}]`);
    const node = r.obj("Node");
    const svc = r.obj("Service");
    if (svc.optStr("Kind") !== "mesh-gateway") return [];
    const statuses = r.arr("Checks").map((c) => c.optStr("Status"));
    return [
      {
        id: svc.str("ID"),
        node: node.optStr("Node"),
        datacenter: node.optStr("Datacenter"),
        lan: bestAddress(svc, node, false),
        wan: bestAddress(svc, node, true),
        status: statuses.includes("critical") ? "critical" : statuses.includes("warning") ? "warning" : "passing",
        meta: svc.strMap("Meta"),
      },
    ];
  });
}

// ---- /v1/discovery-chain/:service ----

export interface ChainTarget {
  readonly id: string;
  readonly service: string;
  readonly subset: string;
  readonly namespace: string;
  readonly datacenter: string;
  readonly sni: string;
  readonly filter: string;
  readonly onlyPassing: boolean;
  readonly connectTimeoutMs: number | undefined;
}

export interface DiscoveryChain {
  readonly serviceName: string;
  readonly protocol: string;
  readonly startNode: string;
  /** Node name → node; kept whole for the L7 router/splitter work. */
  readonly nodes: Readonly<Record<string, unknown>>;
  readonly targets: Readonly<Record<string, ChainTarget>>;
  /** The target a plain TCP chain resolves to (its start resolver's), if it has one. */
  readonly defaultTarget: string | null;
}

export function parseChain(body: unknown, service: string): DiscoveryChain {
  const ep = `/v1/discovery-chain/${service}`;
  const c = Reader.of(ep, body).obj("Chain");
  const targets: Record<string, ChainTarget> = {};
  const t = c.obj("Targets");
  for (const id of t.keys()) {
    const x = t.obj(id);
    const subset = x.obj("Subset");
    targets[id] = {
      id,
      service: x.str("Service"),
      subset: x.optStr("ServiceSubset"),
      namespace: x.optStr("Namespace") || "default",
      datacenter: x.optStr("Datacenter"),
      sni: x.optStr("SNI"),
      filter: subset.optStr("Filter"),
      onlyPassing: subset.bool("OnlyPassing"),
      connectTimeoutMs: parseDurationMs(x.raw("ConnectTimeout")) ?? undefined,
    };
  }
  const nodes = c.obj("Nodes");
  const startNode = c.str("StartNode");
  const nodeMap: Record<string, unknown> = {};
  for (const k of nodes.keys()) nodeMap[k] = nodes.raw(k);
  const start = nodes.obj(startNode);
  const defaultTarget = start.optStr("Type") === "resolver" ? start.obj("Resolver").optStr("Target") || null : null;
  if (defaultTarget !== null && !targets[defaultTarget]) throw new WireError(ep, `$.Chain.Nodes["${startNode}"].Resolver.Target`, `"${defaultTarget}" is not in Targets`);
  return { serviceName: c.optStr("ServiceName") || service, protocol: c.optStr("Protocol") || "tcp", startNode, nodes: nodeMap, targets, defaultTarget };
}

// ---- /v1/connect/intentions/match ----

export interface WireIntention {
  readonly source: string;
  /** `*` for every namespace; `default` when the agent leaves it out (CE). */
  readonly sourceNamespace: string;
  readonly sourcePartition: string;
  /** Non-empty: the source is a service of a cluster peer. */
  readonly sourcePeer: string;
  readonly destination: string;
  readonly destinationNamespace: string;
  readonly destinationPartition: string;
  /** L7 intentions (with Permissions) have no Action; for L4 they deny, as the agent's authorize does. */
  readonly action: "allow" | "deny";
  /** Empty for an L4 intention. */
  readonly permissions: readonly Permission[];
  /** Permissions that required a JWT, which meshproxy cannot verify: they were made deny. */
  readonly jwtPermissionsDenied: number;
  readonly precedence: number;
}

/**
 * The match answer is a map from each queried name to its intentions in evaluation order. The
 * queried name must be there (`null` is an empty list, as Go writes a nil slice): an answer
 * without it is not "no intentions" but a broken answer, and must never turn into an allow.
 */
export function parseIntentionMatch(body: unknown, destination: string): WireIntention[] {
  const ep = "/v1/connect/intentions/match";
  const r = Reader.of(ep, body);
  if (r.raw(destination) === undefined) throw new WireError(ep, `$.${destination}`, "missing: the answer does not cover the service asked for");
  return r.arr(destination).map((x, i) => {
    const at = `$.${destination}[${i}]`;
    const name = (k: string): string => {
      const v = x.str(k);
      if (v === "") throw new WireError(ep, `${at}.${k}`, "empty");
      return v;
    };
    const { permissions, jwt } = intentionPermissions(x.raw("Permissions"), ep, `${at}.Permissions`);
    const l7 = permissions.length > 0;
    const action = x.optStr("Action");
    if (!l7 && action !== "allow" && action !== "deny") throw new WireError(ep, `${at}.Action`, `"${action}" is not allow or deny`);
    return {
      source: name("SourceName"),
      sourceNamespace: x.optStr("SourceNS") || "default",
      sourcePartition: x.optStr("SourcePartition") || "default",
      sourcePeer: x.optStr("SourcePeer"),
      destination: name("DestinationName"),
      destinationNamespace: x.optStr("DestinationNS") || "default",
      destinationPartition: x.optStr("DestinationPartition") || "default",
      action: l7 ? "deny" : action === "allow" ? "allow" : "deny",
      permissions,
      jwtPermissionsDenied: jwt,
      precedence: x.optNum("Precedence") ?? 0,
    };
  });
}

/**
 * Consul's IntentionPermission list, read by the config-entry parser (the same JSON shape).
 * A permission may also require a JWT (Consul 1.16+), which meshproxy does not verify: such a
 * permission is made deny, so what it would allow is refused and what it would deny still is.
 */
function intentionPermissions(raw: unknown, ep: string, at: string): { permissions: Permission[]; jwt: number } {
  let permissions: Permission[];
  try {
    permissions = parsePermissions(raw, at, "wire");
  } catch (e) {
    if (e instanceof EntryError) {
      // EntryError reads `<field>: <why>`, with the field under `at`.
      const cut = e.message.indexOf(": ");
      throw cut > 0 ? new WireError(ep, e.message.slice(0, cut), e.message.slice(cut + 2)) : new WireError(ep, at, e.message);
    }
    throw e;
  }
  if (!Array.isArray(raw)) return { permissions, jwt: 0 };
  let jwt = 0;
  permissions = permissions.map((p, i) => {
    const v: unknown = raw[i];
    const requiresJwt = isObj(v) && v["JWT"] !== undefined && v["JWT"] !== null;
    if (!requiresJwt || p.action === "deny") return p;
    jwt++;
    return { ...p, action: "deny" as const };
  });
  return { permissions, jwt };
}
