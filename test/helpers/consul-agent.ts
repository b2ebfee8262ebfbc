// A test double of the Consul agent HTTP API (shared/reference/consul-connect.md §2 and §8) for
// the Consul control plane's tests: real HTTP on 127.0.0.1, real certificates from the dev CA,
// Consul's blocking-query semantics, and switches that make it misbehave the ways real agents do
// (errors, garbage, stalls, index resets, restarts).
import "reflect-metadata";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { createHash, createPrivateKey, X509Certificate } from "node:crypto";
import { once } from "node:events";
import * as x509 from "@peculiar/x509";
import { createRootCa, crossSign, issueLeaf, type CaMaterial, type IssuedLeaf } from "../../src/identity/ca.js";
import { parseServiceSpiffeId, serviceSpiffeId } from "../../src/identity/spiffe.js";
import { formatMeshSni } from "../../src/identity/sni.js";
import { parseDurationMs } from "../../src/config/duration.js";
import { precedence } from "../../src/authz/intentions.js";

// ---------------------------------------------------------------------------------------------
// Wire types. Optional fields are `?: T | undefined` so builders can assign undefined, which
// JSON.stringify drops — the same effect as Go's `omitempty`.

export type Json = null | boolean | number | string | readonly Json[] | { readonly [k: string]: Json };
export type JsonObject = { readonly [k: string]: Json };

export type CheckStatus = "passing" | "warning" | "critical";

/**
 * `none` clears; `500` and `403` answer with a short plain-text body; `garbage` is a 200 with
 * malformed JSON; `stall` holds the request unanswered until the fault is cleared (then it is
 * served normally) or the double stops; `slow:<ms>` serves it after a delay; `reset` destroys
 * the socket without an answer; `body:<text>` is a 200 `application/json` with exactly that body
 * (`body:` alone: an empty one), for well-formed JSON the agent should never send.
 */
export type FaultKind = "none" | "500" | "403" | "garbage" | "stall" | "reset" | `slow:${number}` | `body:${string}`;

export interface ConsulAgentDoubleOptions {
  /** ACL token every request must carry. Unset: ACLs are disabled and any token is accepted. */
  readonly token?: string | undefined;
  /** Default `dc1` (Consul's and meshproxy's default). */
  readonly datacenter?: string | undefined;
  /** Default {@link DEFAULT_TRUST_DOMAIN}, the §8 test-vector trust domain. */
  readonly trustDomain?: string | undefined;
  /** Lifetime of issued leafs; default 72 h (Consul's `LeafCertTTL`). */
  readonly leafTtlMs?: number | undefined;
  /**
   * The fraction of a leaf's lifetime after which the double re-issues it on its own and wakes
   * blocked leaf watchers, like the agent's soft renewal (§3.6). Default: a random point in
   * [0.6, 0.9], as the agent picks.
   */
  readonly leafRenewFraction?: number | undefined;
  /** The raft index the double starts at; default 40 (§8). */
  readonly startIndex?: number | undefined;
  /** The agent's node name, used for services registered through the API. Default `node-double`. */
  readonly nodeName?: string | undefined;
  /** Default 0: any free port. */
  readonly port?: number | undefined;
  /** `acl.default_policy`; default `allow` (Consul's). Sent in `X-Consul-Default-ACL-Policy` even with ACLs off, as the agent does. */
  readonly aclDefaultPolicy?: "allow" | "deny" | undefined;
  /** `default_intention_policy` (Consul 1.x agents); unset by default. When set it decides over the ACLs. */
  readonly defaultIntentionPolicy?: "allow" | "deny" | undefined;
  /**
   * The agent's admin partition (Consul Enterprise); default `default`. Leafs, default chains and
   * intentions are in it, as an Enterprise agent in that partition answers.
   */
  readonly partition?: string | undefined;
}

export interface CARoot {
  readonly ID: string;
  readonly Name: string;
  readonly SerialNumber: number;
  readonly SigningKeyID: string;
  readonly ExternalTrustDomain: string;
  readonly NotBefore: string;
  readonly NotAfter: string;
  readonly RootCert: string;
  readonly IntermediateCerts: readonly string[] | null;
  readonly Active: boolean;
  readonly PrivateKeyType: "ec";
  readonly PrivateKeyBits: 256;
  readonly CreateIndex: number;
  readonly ModifyIndex: number;
}

export interface CARootList {
  readonly ActiveRootID: string;
  readonly TrustDomain: string;
  readonly Roots: readonly CARoot[];
}

export interface IssuedCert {
  readonly SerialNumber: string;
  readonly CertPEM: string;
  readonly PrivateKeyPEM: string;
  readonly Service: string;
  readonly ServiceURI: string;
  readonly ValidAfter: string;
  readonly ValidBefore: string;
  readonly CreateIndex: number;
  readonly ModifyIndex: number;
}

export interface UpstreamRegistration {
  readonly DestinationType?: "service" | "prepared_query" | undefined;
  readonly DestinationName: string;
  readonly DestinationNamespace?: string | undefined;
  readonly DestinationPartition?: string | undefined;
  readonly DestinationPeer?: string | undefined;
  readonly Datacenter?: string | undefined;
  readonly LocalBindAddress?: string | undefined;
  readonly LocalBindPort?: number | undefined;
  readonly Config?: JsonObject | undefined;
  readonly MeshGateway?: JsonObject | undefined;
}

export interface ProxyRegistration {
  readonly DestinationServiceName: string;
  readonly DestinationServiceID?: string | undefined;
  readonly LocalServiceAddress?: string | undefined;
  readonly LocalServicePort?: number | undefined;
  readonly Mode?: string | undefined;
  readonly Config?: JsonObject | undefined;
  readonly Upstreams?: readonly UpstreamRegistration[] | undefined;
  readonly MeshGateway?: JsonObject | undefined;
  readonly Expose?: JsonObject | undefined;
  readonly TransparentProxy?: JsonObject | undefined;
}

export interface CheckRegistration {
  readonly CheckID?: string | undefined;
  readonly Name?: string | undefined;
  /** Go duration. A TTL check starts `critical` and turns critical again TTL after the last pass. */
  readonly TTL?: string | undefined;
  readonly TCP?: string | undefined;
  readonly HTTP?: string | undefined;
  readonly AliasService?: string | undefined;
  readonly Interval?: string | undefined;
  readonly Notes?: string | undefined;
  readonly Status?: CheckStatus | undefined;
}

/** The PUT /v1/agent/service/register body (the fields the double understands). */
export interface AgentServiceRegistration {
  readonly Kind?: string | undefined;
  readonly ID?: string | undefined;
  readonly Name: string;
  readonly Tags?: readonly string[] | undefined;
  readonly Port?: number | undefined;
  readonly Address?: string | undefined;
  readonly Meta?: Readonly<Record<string, string>> | undefined;
  readonly Proxy?: ProxyRegistration | undefined;
  /** `Native` and `SidecarService` are understood; a sidecar is expanded as the agent does (§2.5). */
  readonly Connect?: JsonObject | undefined;
  readonly Check?: CheckRegistration | undefined;
  readonly Checks?: readonly CheckRegistration[] | undefined;
  /** `lan`/`wan` addresses, as a mesh gateway registers them. */
  readonly TaggedAddresses?: Readonly<Record<string, TaggedAddress>> | undefined;
}

export interface TaggedAddress {
  readonly Address: string;
  readonly Port: number;
}

/** A mesh gateway in another datacenter, for {@link ConsulAgentDouble.setRemoteGateways}. */
export interface RemoteGatewaySpec {
  readonly id: string;
  /** Default `mesh-gateway`. */
  readonly name?: string | undefined;
  /** `Service.Address` and `Service.Port` (its LAN address). */
  readonly address: string;
  readonly port: number;
  /** `Service.TaggedAddresses.wan`, what other datacenters dial. */
  readonly wan?: TaggedAddress | undefined;
  readonly status?: CheckStatus | undefined;
}

export interface AgentServiceProxy {
  readonly DestinationServiceName: string;
  readonly DestinationServiceID?: string | undefined;
  readonly LocalServiceAddress?: string | undefined;
  readonly LocalServicePort?: number | undefined;
  readonly Mode: string;
  readonly Config: JsonObject;
  readonly Upstreams: readonly JsonObject[];
  readonly MeshGateway: JsonObject;
  readonly Expose: JsonObject;
  readonly TransparentProxy?: JsonObject | undefined;
}

export interface AgentService {
  readonly Kind?: string | undefined;
  readonly ID: string;
  readonly Service: string;
  readonly Tags: readonly string[];
  readonly Meta: Readonly<Record<string, string>>;
  readonly Port: number;
  readonly Address: string;
  readonly Weights: { readonly Passing: number; readonly Warning: number };
  readonly EnableTagOverride: boolean;
  readonly ContentHash: string;
  readonly Datacenter: string;
  readonly Proxy?: AgentServiceProxy | undefined;
  readonly Connect?: JsonObject | undefined;
  readonly TaggedAddresses?: Readonly<Record<string, TaggedAddress>> | undefined;
}

export interface HealthCheck {
  readonly Node: string;
  readonly CheckID: string;
  readonly Name: string;
  readonly Status: CheckStatus;
  readonly Notes: string;
  readonly Output: string;
  readonly ServiceID: string;
  readonly ServiceName: string;
  readonly ServiceTags: readonly string[];
  readonly Type: string;
}

export interface ServiceEntry {
  readonly Node: {
    readonly ID: string;
    readonly Node: string;
    readonly Address: string;
    readonly Datacenter: string;
    readonly TaggedAddresses: Readonly<Record<string, string>>;
    readonly Meta: Readonly<Record<string, string>>;
    readonly CreateIndex: number;
    readonly ModifyIndex: number;
  };
  readonly Service: {
    readonly Kind?: string | undefined;
    readonly ID: string;
    readonly Service: string;
    readonly Tags: readonly string[];
    readonly Address: string;
    readonly Meta: Readonly<Record<string, string>>;
    readonly Port: number;
    readonly Weights: { readonly Passing: number; readonly Warning: number };
    readonly EnableTagOverride: boolean;
    readonly Proxy?: AgentServiceProxy | { readonly DestinationServiceName: string; readonly DestinationServiceID?: string | undefined } | undefined;
    readonly Connect: JsonObject;
    readonly TaggedAddresses?: Readonly<Record<string, TaggedAddress>> | undefined;
    readonly CreateIndex: number;
    readonly ModifyIndex: number;
  };
  readonly Checks: readonly HealthCheck[];
}

/** One instance for {@link ConsulAgentDouble.setInstances}: a sidecar proxy (default) or a Connect-native service. */
export interface InstanceSpec {
  /** `Service.ID`, e.g. `billing-1-sidecar-proxy`. */
  readonly id: string;
  /** `Service.Address`; empty means "use the node address", as in Consul. */
  readonly address: string;
  readonly port: number;
  readonly meta?: Readonly<Record<string, string>> | undefined;
  readonly tags?: readonly string[] | undefined;
  /** Status of the instance's service check; default passing. The node check is always passing. */
  readonly status?: CheckStatus | undefined;
  /** Default `127.0.0.1`. */
  readonly nodeAddress?: string | undefined;
  /** `Node.TaggedAddresses.wan`; default the node address. */
  readonly nodeWan?: string | undefined;
  /** `Service.TaggedAddresses.wan` (and `lan`, the service address); default none. */
  readonly wan?: { readonly address: string; readonly port: number } | undefined;
  /** Default `node-<id>`. */
  readonly node?: string | undefined;
  /** Default the double's datacenter; served for `?dc=<that>`. */
  readonly datacenter?: string | undefined;
  /** A Connect-native instance (Kind "", `Connect.Native`), not a sidecar. */
  readonly native?: boolean | undefined;
  readonly weights?: { readonly passing: number; readonly warning: number } | undefined;
}

/** One mesh gateway instance for {@link ConsulAgentDouble.setMeshGateways} (Kind mesh-gateway). */
export interface MeshGatewaySpec {
  readonly id: string;
  /** `Service.Address` and `Service.Port`: the LAN address, which its own datacenter dials. */
  readonly address: string;
  readonly port: number;
  /** `Service.TaggedAddresses.wan`, which other datacenters dial; default the LAN address. */
  readonly wan?: { readonly address: string; readonly port: number } | undefined;
  /** Default the double's datacenter; served for `?dc=<that>`. */
  readonly datacenter?: string | undefined;
  readonly status?: CheckStatus | undefined;
}

export interface IntentionSpec {
  /** Source service name or `*`. */
  readonly source: string;
  /** Omit for an L7 intention (one with permissions). */
  readonly action?: "allow" | "deny" | undefined;
  /** Consul `IntentionPermission` JSON, passed through untouched; makes this an L7 intention. */
  readonly permissions?: readonly JsonObject[] | undefined;
  readonly description?: string | undefined;
  /** Default: Consul's CE precedence (9, 8, 6, 5) for the source/destination pair. */
  readonly precedence?: number | undefined;
  /** `SourceNS`; default `default`. `*` for every namespace. */
  readonly sourceNamespace?: string | undefined;
  /** `SourcePartition`; default the double's own partition (`default`). */
  readonly sourcePartition?: string | undefined;
  /** `SourcePeer`: the source is a service of this cluster peer. */
  readonly sourcePeer?: string | undefined;
  /** `DestinationNS`; default `default`. */
  readonly destinationNamespace?: string | undefined;
}

export interface Intention {
  readonly Description?: string | undefined;
  readonly SourceNS: string;
  readonly SourceName: string;
  readonly DestinationNS: string;
  readonly DestinationName: string;
  readonly SourcePartition: string;
  readonly DestinationPartition: string;
  readonly SourcePeer?: string | undefined;
  readonly SourceType: "consul";
  readonly Action?: "allow" | "deny" | undefined;
  readonly Permissions?: readonly JsonObject[] | undefined;
  readonly Meta: JsonObject;
  readonly Precedence: number;
  readonly CreateIndex: number;
  readonly ModifyIndex: number;
}

export interface RecordedRequest {
  readonly method: string;
  /** The URL path, without the query. */
  readonly path: string;
  /** Query parameters; a repeated one keeps its last value (see `rawQuery` for all of them). */
  readonly query: Readonly<Record<string, string>>;
  readonly rawQuery: string;
  /** From `X-Consul-Token`, `Authorization: Bearer`, or `?token=`, in that order; null if none. */
  readonly token: string | null;
  readonly body: string;
  /** `Date.now()` when the request arrived. */
  readonly at: number;
  /** The status answered, or null while held (blocking, stalled) or if never answered. */
  status: number | null;
}

export interface Heartbeat {
  readonly checkId: string;
  readonly status: CheckStatus;
  readonly note: string;
  readonly at: number;
}

/** The material behind one listed root, for tests that need to sign or verify with it. */
export interface RootInfo {
  readonly id: string;
  readonly active: boolean;
  readonly ca: CaMaterial;
  /** PEMs listed in the root's `IntermediateCerts` (the cross-signed cert after a rotation). */
  readonly intermediates: readonly string[];
}

/** The leaf the double currently serves for a service. */
export interface LeafInfo {
  readonly service: string;
  readonly spiffeId: string;
  /** The leaf PEM followed by the active root's intermediates, as in `CertPEM`. */
  readonly certPem: string;
  /** SEC1 (`EC PRIVATE KEY`), as the agent serves it. */
  readonly keyPem: string;
  readonly serial: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly rootId: string;
}

export const DEFAULT_TRUST_DOMAIN = "0c4a3f6e-2b1d-4e8a-9f7c-5d6e7a8b9c01.consul";
export const DEFAULT_DATACENTER = "dc1";

const DEFAULT_WAIT_MS = 5 * 60_000;
const MAX_WAIT_MS = 10 * 60_000;
const DEFAULT_LEAF_TTL_MS = 72 * 3600_000;
const MAX_TIMER_MS = 2 ** 31 - 1;
const MAX_BODY_BYTES = 1 << 20;
const NS = "default";

// ---------------------------------------------------------------------------------------------
// JSON narrowing. JSON.parse output only ever holds Json values, so a shallow shape check is a
// sound guard for it; these are never used on anything else.

function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isJsonArray(v: unknown): v is readonly Json[] {
  return Array.isArray(v);
}

class BadRequest extends Error {}

function optString(o: JsonObject, k: string): string | undefined {
  const v = o[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") throw new BadRequest(`Request decode failed: ${k} must be a string`);
  return v;
}

function optNumber(o: JsonObject, k: string): number | undefined {
  const v = o[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v)) throw new BadRequest(`Request decode failed: ${k} must be a number`);
  return v;
}

function optObject(o: JsonObject, k: string): JsonObject | undefined {
  const v = o[k];
  if (v === undefined || v === null) return undefined;
  if (!isObject(v)) throw new BadRequest(`Request decode failed: ${k} must be an object`);
  return v;
}

function optArray(o: JsonObject, k: string): readonly Json[] | undefined {
  const v = o[k];
  if (v === undefined || v === null) return undefined;
  if (!isJsonArray(v)) throw new BadRequest(`Request decode failed: ${k} must be an array`);
  return v;
}

function optStringArray(o: JsonObject, k: string): string[] | undefined {
  const a = optArray(o, k);
  if (a === undefined) return undefined;
  return a.map((v) => {
    if (typeof v !== "string") throw new BadRequest(`Request decode failed: ${k} must hold strings`);
    return v;
  });
}

function optStringMap(o: JsonObject, k: string): Record<string, string> | undefined {
  const m = optObject(o, k);
  if (m === undefined) return undefined;
  const out: Record<string, string> = {};
  for (const [mk, mv] of Object.entries(m)) {
    if (typeof mv !== "string") throw new BadRequest(`Request decode failed: ${k}.${mk} must be a string`);
    out[mk] = mv;
  }
  return out;
}

function objects(o: JsonObject, k: string): JsonObject[] | undefined {
  const a = optArray(o, k);
  if (a === undefined) return undefined;
  return a.map((v) => {
    if (!isObject(v)) throw new BadRequest(`Request decode failed: ${k} must hold objects`);
    return v;
  });
}

function checkStatus(o: JsonObject, k: string): CheckStatus | undefined {
  const s = optString(o, k);
  if (s === undefined || s === "") return undefined;
  if (s === "passing" || s === "warning" || s === "critical") return s;
  throw new BadRequest(`Request decode failed: ${k} must be passing, warning or critical`);
}

function parseUpstream(o: JsonObject): UpstreamRegistration {
  const name = optString(o, "DestinationName");
  if (!name) throw new BadRequest("Upstream DestinationName must be set");
  const type = optString(o, "DestinationType");
  if (type !== undefined && type !== "" && type !== "service" && type !== "prepared_query") {
    throw new BadRequest(`Upstream DestinationType must be service or prepared_query, not ${type}`);
  }
  return {
    DestinationType: type === "prepared_query" ? "prepared_query" : type === "service" ? "service" : undefined,
    DestinationName: name,
    DestinationNamespace: optString(o, "DestinationNamespace"),
    DestinationPartition: optString(o, "DestinationPartition"),
    DestinationPeer: optString(o, "DestinationPeer"),
    Datacenter: optString(o, "Datacenter"),
    LocalBindAddress: optString(o, "LocalBindAddress"),
    LocalBindPort: optNumber(o, "LocalBindPort"),
    Config: optObject(o, "Config"),
    MeshGateway: optObject(o, "MeshGateway"),
  };
}

function parseProxy(o: JsonObject): Omit<ProxyRegistration, "DestinationServiceName"> & { DestinationServiceName: string | undefined } {
  return {
    DestinationServiceName: optString(o, "DestinationServiceName"),
    DestinationServiceID: optString(o, "DestinationServiceID"),
    LocalServiceAddress: optString(o, "LocalServiceAddress"),
    LocalServicePort: optNumber(o, "LocalServicePort"),
    Mode: optString(o, "Mode"),
    Config: optObject(o, "Config"),
    Upstreams: objects(o, "Upstreams")?.map(parseUpstream),
    MeshGateway: optObject(o, "MeshGateway"),
    Expose: optObject(o, "Expose"),
    TransparentProxy: optObject(o, "TransparentProxy"),
  };
}

function parseCheck(o: JsonObject): CheckRegistration {
  return {
    CheckID: optString(o, "CheckID") ?? optString(o, "ID"),
    Name: optString(o, "Name"),
    TTL: optString(o, "TTL"),
    TCP: optString(o, "TCP"),
    HTTP: optString(o, "HTTP"),
    AliasService: optString(o, "AliasService"),
    Interval: optString(o, "Interval"),
    Notes: optString(o, "Notes"),
    Status: checkStatus(o, "Status"),
  };
}

export function parseRegistration(o: JsonObject): AgentServiceRegistration {
  const name = optString(o, "Name");
  if (!name) throw new BadRequest("Missing service name");
  const proxyObj = optObject(o, "Proxy");
  const proxy = proxyObj ? parseProxy(proxyObj) : undefined;
  const kind = optString(o, "Kind");
  if (kind === "connect-proxy" && !proxy?.DestinationServiceName) {
    throw new BadRequest("Proxy.DestinationServiceName must be non-empty for Connect proxy services");
  }
  const check = optObject(o, "Check");
  return {
    Kind: kind,
    ID: optString(o, "ID"),
    Name: name,
    Tags: optStringArray(o, "Tags"),
    Port: optNumber(o, "Port"),
    Address: optString(o, "Address"),
    Meta: optStringMap(o, "Meta"),
    Proxy: proxy?.DestinationServiceName ? { ...proxy, DestinationServiceName: proxy.DestinationServiceName } : undefined,
    Connect: optObject(o, "Connect"),
    TaggedAddresses: parseTaggedAddresses(optObject(o, "TaggedAddresses")),
    Check: check ? parseCheck(check) : undefined,
    Checks: objects(o, "Checks")?.map(parseCheck),
  };
}

function parseTaggedAddresses(o: JsonObject | undefined): Record<string, TaggedAddress> | undefined {
  if (!o) return undefined;
  const out: Record<string, TaggedAddress> = {};
  for (const [k, v] of Object.entries(o)) {
    if (!isObject(v)) throw new BadRequest(`TaggedAddresses.${k}: want {Address, Port}`);
    const address = optString(v, "Address");
    const port = optNumber(v, "Port");
    if (address === undefined || port === undefined) throw new BadRequest(`TaggedAddresses.${k}: want {Address, Port}`);
    out[k] = { Address: address, Port: port };
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// A small subset of go-bexpr, enough for `-sidecar-for` lookups and subset filters (§2.5, §8.6):
// `<Selector> == <value>`, `!=`, `<value> in <Selector>`, `not in`, `is empty`, `is not empty`,
// joined by `and` / `or` (no parentheses). Values may be "quoted", `backquoted` or bare.

type Predicate = (v: unknown) => boolean;

function field(v: unknown, k: string): unknown {
  if (typeof v !== "object" || v === null) return undefined;
  return Object.getOwnPropertyDescriptor(v, k)?.value;
}

function select(v: unknown, selector: string): unknown {
  return selector.split(".").reduce<unknown>((acc, k) => field(acc, k), v);
}

function unquote(s: string): string {
  const t = s.trim();
  if ((t.startsWith('"') && t.endsWith('"')) || (t.startsWith("`") && t.endsWith("`"))) return t.slice(1, -1);
  return t;
}

function scalar(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return null;
}

const SELECTOR = /^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$/;

function compileClause(clause: string): Predicate | null {
  let m = /^(\S+)\s+is\s+(not\s+)?empty$/.exec(clause);
  if (m && SELECTOR.test(m[1]!)) {
    const sel = m[1]!;
    const negate = Boolean(m[2]);
    return (v) => {
      const x = select(v, sel);
      const empty = x === undefined || x === null || x === "" || (Array.isArray(x) && x.length === 0) || (isObject(x) && Object.keys(x).length === 0);
      return negate ? !empty : empty;
    };
  }
  m = /^(.+?)\s+(not\s+)?in\s+(\S+)$/.exec(clause);
  if (m && SELECTOR.test(m[3]!)) {
    const needle = unquote(m[1]!);
    const sel = m[3]!;
    const negate = Boolean(m[2]);
    return (v) => {
      const x = select(v, sel);
      let hit = false;
      if (Array.isArray(x)) hit = x.some((e) => scalar(e) === needle);
      else if (typeof x === "string") hit = x.includes(needle);
      else if (isObject(x)) hit = Object.prototype.hasOwnProperty.call(x, needle);
      return negate ? !hit : hit;
    };
  }
  m = /^(\S+)\s*(==|!=)\s*(.+)$/.exec(clause);
  if (m && SELECTOR.test(m[1]!)) {
    const sel = m[1]!;
    const want = unquote(m[3]!);
    const eq = m[2] === "==";
    return (v) => (scalar(select(v, sel)) === want) === eq;
  }
  return null;
}

/** A predicate, or null when the expression is outside the supported subset (→ 400). */
export function compileFilter(expr: string): Predicate | null {
  const alternatives: Predicate[][] = [];
  for (const alt of expr.trim().split(/\s+or\s+/)) {
    const all: Predicate[] = [];
    for (const clause of alt.split(/\s+and\s+/)) {
      const p = compileClause(clause.trim());
      if (!p) return null;
      all.push(p);
    }
    alternatives.push(all);
  }
  return (v) => alternatives.some((all) => all.every((p) => p(v)));
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

/** RFC 3339 the way Go writes a whole-second time. */
function rfc3339(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

function colonHex(hex: string): string {
  return (hex.toLowerCase().match(/../g) ?? []).join(":");
}

function sha256Hex(s: string): string {
  return createHash("sha256").update(s).digest("hex");
}

/** A stable UUID-shaped node ID, so the same node name always gets the same ID. */
function nodeUuid(name: string): string {
  const h = sha256Hex(`node:${name}`);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

function toSec1(pkcs8Pem: string): string {
  // The agent hands out SEC1 keys (`EC PRIVATE KEY`, §3.3); the dev CA writes PKCS#8.
  const out = createPrivateKey(pkcs8Pem).export({ type: "sec1", format: "pem" });
  return typeof out === "string" ? out : out.toString("utf8");
}

function tokenOf(req: IncomingMessage, url: URL): string | null {
  const h = req.headers["x-consul-token"];
  if (typeof h === "string" && h !== "") return h;
  const auth = req.headers.authorization;
  if (typeof auth === "string") {
    const m = /^Bearer\s+(.+)$/i.exec(auth.trim());
    if (m) return m[1]!;
  }
  return url.searchParams.get("token");
}

/** The default compiled chain: a single resolver, protocol tcp (§2.7). */
export function defaultDiscoveryChain(service: string, datacenter: string, trustDomain: string, partition = "default"): JsonObject {
  const target = `${service}.${NS}.${partition}.${datacenter}`;
  const sni = formatMeshSni({ kind: "service", subset: null, service, namespace: NS, partition, datacenter, trustDomain });
  return {
    ServiceName: service,
    Namespace: NS,
    Partition: partition,
    Datacenter: datacenter,
    Default: true,
    Protocol: "tcp",
    StartNode: `resolver:${target}`,
    Nodes: {
      [`resolver:${target}`]: {
        Type: "resolver",
        Name: target,
        Resolver: { Default: true, ConnectTimeout: "5s", Target: target },
      },
    },
    Targets: {
      [target]: {
        ID: target,
        Service: service,
        Namespace: NS,
        Partition: partition,
        Datacenter: datacenter,
        MeshGateway: {},
        Subset: {},
        TransparentProxy: {},
        ConnectTimeout: "5s",
        SNI: sni,
        Name: sni,
      },
    },
  };
}

// ---------------------------------------------------------------------------------------------
// State.

interface RootState {
  readonly ca: CaMaterial;
  readonly id: string;
  readonly name: string;
  readonly serialNumber: number;
  readonly signingKeyId: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly intermediates: readonly string[];
  createIndex: number;
  active: boolean;
  modifyIndex: number;
}

interface LeafState {
  readonly service: string;
  readonly spiffeId: string;
  readonly issued: IssuedLeaf;
  readonly certPem: string;
  readonly keyPem: string;
  readonly rootId: string;
  readonly createIndex: number;
  timer: NodeJS.Timeout | null;
}

interface CheckState {
  readonly id: string;
  readonly name: string;
  readonly serviceId: string;
  readonly serviceName: string;
  readonly type: string;
  readonly ttlMs: number | null;
  readonly notes: string;
  status: CheckStatus;
  output: string;
  timer: NodeJS.Timeout | null;
}

interface ServiceState {
  readonly reg: AgentServiceRegistration & { readonly ID: string };
  readonly createIndex: number;
  readonly modifyIndex: number;
  readonly checkIds: readonly string[];
  /** The `<id>-sidecar-proxy` registered through `Connect.SidecarService`, removed with it. */
  readonly sidecarId: string | null;
}

interface StoredIntention {
  readonly destination: string;
  readonly spec: IntentionSpec;
  readonly createIndex: number;
}

interface StoredInstances {
  readonly instances: readonly InstanceSpec[];
  readonly index: number;
}

interface Ctx {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly url: URL;
  readonly record: RecordedRequest;
}

/** A request the double is holding: blocked on a watch, or stalled by a fault. */
interface Held {
  readonly kind: "blocking" | "stall";
  readonly path: string;
  /** Watch keys; a change to any of them wakes the request. */
  readonly keys: readonly string[];
  wake(abandon: boolean): void;
  /** Stall only: the fault may have changed, serve it (or keep stalling). */
  release(): void;
  cancel(): void;
}

type Route = (ctx: Ctx, params: readonly string[]) => Promise<void> | void;

// ---------------------------------------------------------------------------------------------

export class ConsulAgentDouble {
  readonly datacenter: string;
  readonly trustDomain: string;
  readonly partition: string;
  readonly nodeName: string;
  /** Every request, in arrival order. */
  readonly requests: RecordedRequest[] = [];
  /** Every check update through `/v1/agent/check/{pass,warn,fail}/:id`. */
  readonly heartbeats: Heartbeat[] = [];

  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private readonly held = new Set<Held>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly heldListeners = new Set<() => void>();
  private readonly requestListeners = new Set<(r: RecordedRequest) => void>();
  private token: string | null;
  private readonly aclsEnabled: boolean;
  private readonly leafTtlMs: number;
  private readonly leafRenewFraction: number | undefined;
  private listenPort = 0;
  private stopped = false;
  private paused = false;

  // Blocking-query bookkeeping: one raft-like counter, and per watch key the index of its last
  // change (Consul's ModifyIndex), so a change wakes only the watchers of what changed.
  private raftIndex: number;
  private baseline: number;
  private readonly modIndex = new Map<string, number>();
  private zeroIndex = false;

  private readonly rootList: RootState[] = [];
  private rootSeq = 0;
  private readonly leafs = new Map<string, LeafState>();
  private readonly leafPending = new Map<string, Promise<LeafState>>();
  private readonly services = new Map<string, ServiceState>();
  private readonly checks = new Map<string, CheckState>();
  private proxyDefaults: JsonObject = {};
  private readonly instances = new Map<string, StoredInstances>();
  private readonly meshGateways = new Map<string, { readonly gateways: readonly MeshGatewaySpec[]; readonly index: number }>();
  private readonly chains = new Map<string, JsonObject>();
  private readonly remoteGateways = new Map<string, readonly RemoteGatewaySpec[]>();
  private readonly configEntries = new Map<string, JsonObject>();
  private intentions: StoredIntention[] = [];
  private aclDefaultPolicy: "allow" | "deny";
  private defaultIntentionPolicy: "allow" | "deny" | "";
  private readonly faults = new Map<string, FaultKind>();
  private readonly routes: Array<{ method: readonly string[]; pattern: RegExp; handler: Route }> = [];

  private constructor(opts: ConsulAgentDoubleOptions) {
    this.token = opts.token ?? null;
    this.aclDefaultPolicy = opts.aclDefaultPolicy ?? "allow";
    this.defaultIntentionPolicy = opts.defaultIntentionPolicy ?? "";
    this.aclsEnabled = opts.token !== undefined;
    this.datacenter = opts.datacenter ?? DEFAULT_DATACENTER;
    this.trustDomain = (opts.trustDomain ?? DEFAULT_TRUST_DOMAIN).toLowerCase();
    this.partition = opts.partition ?? "default";
    this.nodeName = opts.nodeName ?? "node-double";
    this.leafTtlMs = opts.leafTtlMs ?? DEFAULT_LEAF_TTL_MS;
    this.leafRenewFraction = opts.leafRenewFraction;
    this.raftIndex = opts.startIndex ?? 40;
    this.baseline = this.raftIndex;
    // No request timeout: blocking queries legitimately stay open for up to 10 minutes.
    this.server = createServer({ requestTimeout: 0 }, (req, res) => this.onRequest(req, res));
    this.server.on("connection", (s: Socket) => {
      this.sockets.add(s);
      s.once("close", () => this.sockets.delete(s));
    });
    this.defineRoutes();
  }

  static async start(opts: ConsulAgentDoubleOptions = {}): Promise<ConsulAgentDouble> {
    const d = new ConsulAgentDouble(opts);
    d.rootList.push(await d.newRoot(null));
    await d.listen(opts.port ?? 0);
    return d;
  }

  /** `http://127.0.0.1:<port>`, stable across pause/resume. */
  get url(): string {
    return `http://127.0.0.1:${this.listenPort}`;
  }

  get port(): number {
    return this.listenPort;
  }

  /** The current raft index (the last change). */
  get index(): number {
    return this.raftIndex;
  }

  // -------------------------------------------------------------------------------------------
  // Lifecycle.

  private async listen(port: number): Promise<void> {
    this.server.listen(port, "127.0.0.1");
    await once(this.server, "listening");
    const addr = this.server.address();
    if (addr === null || typeof addr === "string") throw new Error("the double is not listening on TCP");
    this.listenPort = addr.port;
  }

  private async closeListener(): Promise<void> {
    for (const h of [...this.held]) h.cancel();
    const closed = this.server.listening ? new Promise<void>((r) => this.server.close(() => r())) : Promise.resolve();
    // close() waits for open connections, held blocking queries included: end them all.
    for (const s of this.sockets) s.destroy();
    this.server.closeAllConnections();
    await closed;
  }

  /** Simulates an agent going away: the listener closes and every open connection is cut, so new connections are refused. */
  async pause(): Promise<void> {
    if (this.paused || this.stopped) return;
    this.paused = true;
    await this.closeListener();
  }

  /** Listens again on the same port. */
  async resume(): Promise<void> {
    if (!this.paused || this.stopped) return;
    this.paused = false;
    await this.listen(this.listenPort);
  }

  /** Closes the server, cuts every held request and socket, clears every timer. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const l of this.leafs.values()) if (l.timer) clearTimeout(l.timer);
    for (const c of this.checks.values()) if (c.timer) clearTimeout(c.timer);
    await this.closeListener();
  }

  private later(ms: number, fn: () => void): NodeJS.Timeout {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  // -------------------------------------------------------------------------------------------
  // Index and watchers.

  private indexOf(key: string): number {
    return this.modIndex.get(key) ?? this.baseline;
  }

  private indexOfKeys(keys: readonly string[]): number {
    return keys.reduce((max, k) => Math.max(max, this.indexOf(k)), 0);
  }

  /** Stored indexes never exceed the current one: after a reset they collapse to it. */
  private clamp(n: number): number {
    return Math.min(n, this.raftIndex);
  }

  /** Records a change to `keys` at a new index and wakes only their watchers. */
  private bump(keys: readonly string[]): number {
    this.raftIndex += 1;
    for (const k of keys) this.modIndex.set(k, this.raftIndex);
    const changed = new Set(keys);
    for (const h of [...this.held]) if (h.kind === "blocking" && h.keys.some((k) => changed.has(k))) h.wake(false);
    return this.raftIndex;
  }

  /**
   * Simulates a snapshot restore: the index drops to `to` (default 10, below the start index)
   * and every blocked query returns at once with that lower index. Clients must reset to 0.
   */
  resetIndex(to = 10): number {
    if (!Number.isInteger(to) || to < 1 || to >= this.raftIndex) throw new Error(`resetIndex(${to}) must go down from ${this.raftIndex} and stay >= 1`);
    this.raftIndex = to;
    this.baseline = to;
    this.modIndex.clear();
    for (const h of [...this.held]) if (h.kind === "blocking") h.wake(true);
    return to;
  }

  /**
   * The historic bug (§2.0): responses carry `X-Consul-Index: 0`. While on, a query with
   * index >= 1 blocks until its resource changes or the wait ends; index 0 returns at once,
   * so a client that sends the 0 back busy-loops.
   */
  zeroIndexBug(on: boolean): void {
    this.zeroIndex = on;
  }

  private hold(ctx: Ctx, keys: readonly string[], waitMs: number, fresh: () => boolean, anyChange: boolean): Promise<boolean> {
    if (!anyChange && fresh()) return Promise.resolve(true);
    // A client that left while a leaf was being issued would otherwise be held for the whole wait.
    if (ctx.res.destroyed || ctx.req.socket.destroyed) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      let done = false;
      const finish = (answer: boolean): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.held.delete(h);
        ctx.res.off("close", onClose);
        resolve(answer);
      };
      const h: Held = {
        kind: "blocking",
        path: ctx.url.pathname,
        keys,
        wake: (abandon) => {
          if (abandon || anyChange || fresh()) finish(true);
        },
        release: () => undefined,
        cancel: () => finish(false),
      };
      // Consul adds up to wait/16 of jitter so that watchers do not return in lockstep.
      const timer = setTimeout(() => finish(true), waitMs + Math.random() * (waitMs / 16));
      const onClose = (): void => finish(false);
      ctx.res.once("close", onClose);
      this.held.add(h);
      this.heldChanged();
    });
  }

  private heldChanged(): void {
    for (const l of [...this.heldListeners]) l();
  }

  /** How many requests are held (blocked or stalled) on paths starting with `pathPrefix`. */
  heldCount(pathPrefix = "/"): number {
    let n = 0;
    for (const h of this.held) if (h.path.startsWith(pathPrefix)) n++;
    return n;
  }

  /** Resolves once at least `count` requests are held on paths starting with `pathPrefix`: wait on this, not on a sleep, before mutating. */
  waitForHeld(pathPrefix: string, count = 1, timeoutMs = 5000): Promise<void> {
    if (this.heldCount(pathPrefix) >= count) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (this.heldCount(pathPrefix) < count) return;
        clearTimeout(timer);
        this.heldListeners.delete(check);
        resolve();
      };
      const timer = setTimeout(() => {
        this.heldListeners.delete(check);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${count} held request(s) on ${pathPrefix} (held: ${this.heldCount(pathPrefix)})`));
      }, timeoutMs);
      this.heldListeners.add(check);
    });
  }

  /** Resolves with the first recorded request (past or future) matching `pred`. */
  waitForRequest(pred: (r: RecordedRequest) => boolean, timeoutMs = 5000): Promise<RecordedRequest> {
    const hit = this.requests.find(pred);
    if (hit) return Promise.resolve(hit);
    return new Promise<RecordedRequest>((resolve, reject) => {
      const l = (r: RecordedRequest): void => {
        if (!pred(r)) return;
        clearTimeout(timer);
        this.requestListeners.delete(l);
        resolve(r);
      };
      const timer = setTimeout(() => {
        this.requestListeners.delete(l);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for a request; saw: ${this.requests.map((r) => `${r.method} ${r.path}`).join(", ")}`));
      }, timeoutMs);
      this.requestListeners.add(l);
    });
  }

  /** Requests whose path starts with `pathPrefix`. */
  requestsTo(pathPrefix: string): RecordedRequest[] {
    return this.requests.filter((r) => r.path.startsWith(pathPrefix));
  }

  // -------------------------------------------------------------------------------------------
  // Faults and ACLs.

  /**
   * Sets a fault for every path starting with `pathPrefix`; the longest matching prefix wins, so
   * `none` both clears a prefix and exempts a sub-path from a shorter prefix's fault. Requests
   * stalled by a fault that no longer applies are served at once.
   */
  fault(pathPrefix: string, kind: FaultKind): void {
    if (kind !== "none" && kind !== "500" && kind !== "403" && kind !== "garbage" && kind !== "stall" && kind !== "reset" && !/^slow:\d+$/.test(kind) && !kind.startsWith("body:")) {
      throw new Error(`unknown fault kind ${kind}`);
    }
    this.faults.set(pathPrefix, kind);
    for (const h of [...this.held]) if (h.kind === "stall") h.release();
  }

  clearFaults(): void {
    this.faults.clear();
    for (const h of [...this.held]) if (h.kind === "stall") h.release();
  }

  private faultFor(path: string): Exclude<FaultKind, "none"> | null {
    let best: string | null = null;
    for (const p of this.faults.keys()) if (path.startsWith(p) && (best === null || p.length > best.length)) best = p;
    const kind = best === null ? undefined : this.faults.get(best);
    return kind === undefined || kind === "none" ? null : kind;
  }

  /** Changes the required token at run time (null: accept anything, as with ACLs disabled). */
  setToken(token: string | null): void {
    this.token = token;
  }

  // -------------------------------------------------------------------------------------------
  // Request plumbing.

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? "/", "http://agent.invalid");
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on("error", () => res.destroy());
    req.on("end", () => {
      const record: RecordedRequest = {
        method: req.method ?? "GET",
        path: url.pathname,
        query: Object.fromEntries(url.searchParams),
        rawQuery: url.search.replace(/^\?/, ""),
        token: tokenOf(req, url),
        body: Buffer.concat(chunks).toString("utf8"),
        at: Date.now(),
        status: null,
      };
      this.requests.push(record);
      for (const l of [...this.requestListeners]) l(record);
      this.dispatch({ req, res, url, record });
    });
  }

  private dispatch(ctx: Ctx): void {
    if (ctx.res.destroyed) return;
    const kind = this.faultFor(ctx.url.pathname);
    if (kind === null) return this.serve(ctx);
    if (kind.startsWith("body:")) return this.send(ctx, 200, "application/json", kind.slice("body:".length), { "X-Consul-Index": String(this.raftIndex) });
    switch (kind) {
      case "500":
        return this.text(ctx, 500, "rpc error making call: No cluster leader");
      case "403":
        return this.text(ctx, 403, "Permission denied");
      case "garbage":
        return this.send(ctx, 200, "application/json", '{"ActiveRootID":"3d:91:0e","Roots":[{"ID":', { "X-Consul-Index": String(this.raftIndex) });
      case "reset":
        ctx.req.socket.destroy();
        return;
      case "stall":
        return this.stall(ctx);
      default: {
        const t = this.later(Number(kind.slice("slow:".length)), () => {
          ctx.res.off("close", onClose);
          this.serve(ctx);
        });
        const onClose = (): void => {
          clearTimeout(t);
          this.timers.delete(t);
        };
        ctx.res.once("close", onClose);
      }
    }
  }

  private stall(ctx: Ctx): void {
    if (ctx.res.destroyed || ctx.req.socket.destroyed) return;
    const onClose = (): void => {
      this.held.delete(h);
    };
    const h: Held = {
      kind: "stall",
      path: ctx.url.pathname,
      keys: [],
      wake: () => undefined,
      release: () => {
        if (this.faultFor(ctx.url.pathname) === "stall") return;
        this.held.delete(h);
        ctx.res.off("close", onClose);
        this.dispatch(ctx);
      },
      cancel: () => {
        this.held.delete(h);
        ctx.res.off("close", onClose);
        ctx.req.socket.destroy();
      },
    };
    ctx.res.once("close", onClose);
    this.held.add(h);
    this.heldChanged();
  }

  private serve(ctx: Ctx): void {
    void this.route(ctx).catch((e: unknown) => {
      if (e instanceof BadRequest) this.text(ctx, 400, e.message);
      else this.text(ctx, 500, `double: ${e instanceof Error ? e.message : String(e)}`);
    });
  }

  private async route(ctx: Ctx): Promise<void> {
    if (this.token !== null && ctx.record.token !== this.token) {
      // As Consul answers: a token it does not know is `ACL not found`; none is the anonymous token's denial.
      return ctx.record.token ? this.text(ctx, 403, "ACL not found") : this.text(ctx, 403, "Permission denied: anonymous token lacks permission");
    }
    const path = ctx.url.pathname;
    let allowed: readonly string[] | null = null;
    for (const r of this.routes) {
      const m = r.pattern.exec(path);
      if (!m) continue;
      if (!r.method.includes(ctx.record.method)) {
        allowed = r.method;
        continue;
      }
      let params: string[];
      try {
        params = m.slice(1).map((p) => decodeURIComponent(p ?? ""));
      } catch {
        return this.text(ctx, 400, "Invalid URL path encoding");
      }
      return r.handler(ctx, params);
    }
    if (allowed) return this.text(ctx, 405, `method ${ctx.record.method} not allowed`);
    return this.text(ctx, 404, `Invalid URL path: not a recognized HTTP API endpoint: ${path}`);
  }

  private send(ctx: Ctx, status: number, contentType: string, body: string, headers: Readonly<Record<string, string>> = {}): void {
    const { res } = ctx;
    if (res.destroyed || res.writableEnded) return;
    ctx.record.status = status;
    res.writeHead(status, {
      "Content-Type": contentType,
      "Content-Length": Buffer.byteLength(body),
      Vary: "Accept-Encoding",
      "X-Consul-Default-ACL-Policy": this.aclDefaultPolicy,
      ...headers,
    });
    res.end(body);
  }

  /** Errors are non-2xx with a short plain-text body (§2.0). */
  private text(ctx: Ctx, status: number, body: string): void {
    this.send(ctx, status, "text/plain; charset=utf-8", body);
  }

  private json(ctx: Ctx, body: unknown, headers: Readonly<Record<string, string>> = {}): void {
    this.send(ctx, 200, "application/json", JSON.stringify(body), headers);
  }

  private parseWait(ctx: Ctx): number {
    const raw = ctx.url.searchParams.get("wait");
    if (raw === null || raw === "") return DEFAULT_WAIT_MS;
    const ms = parseDurationMs(raw);
    if (ms === null) throw new BadRequest("Invalid wait time");
    if (ms <= 0) return DEFAULT_WAIT_MS;
    return Math.min(ms, MAX_WAIT_MS);
  }

  private parseIndex(ctx: Ctx): number {
    const raw = ctx.url.searchParams.get("index");
    if (raw === null || raw === "") return 0;
    if (!/^\d+$/.test(raw)) throw new BadRequest("Invalid index");
    return Number(raw);
  }

  /** An index-blocking GET (§2.0): returns at once without `index`, else when `keys` change or the wait ends. */
  private async indexed(ctx: Ctx, keys: readonly string[], render: () => unknown): Promise<void> {
    const waitMs = this.parseWait(ctx);
    const min = this.parseIndex(ctx);
    if (min > 0) {
      const answered = await this.hold(ctx, keys, waitMs, () => this.indexOfKeys(keys) > min, this.zeroIndex);
      if (!answered) return;
    }
    this.json(ctx, render(), {
      "X-Consul-Index": String(this.zeroIndex ? 0 : this.indexOfKeys(keys)),
      "X-Consul-KnownLeader": "true",
      "X-Consul-LastContact": "0",
    });
  }

  private async readJson(ctx: Ctx): Promise<JsonObject> {
    let v: unknown;
    try {
      v = JSON.parse(ctx.record.body);
    } catch (e) {
      throw new BadRequest(`Request decode failed: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (!isObject(v)) throw new BadRequest("Request decode failed: body must be a JSON object");
    return v;
  }

  private defineRoutes(): void {
    const add = (method: string | readonly string[], pattern: RegExp, handler: Route): void => {
      this.routes.push({ method: typeof method === "string" ? [method] : method, pattern, handler });
    };
    add("GET", /^\/v1\/agent\/self$/, (ctx) => this.json(ctx, this.self()));
    add("GET", /^\/v1\/agent\/connect\/ca\/roots$/, (ctx) => this.indexed(ctx, ["roots"], () => this.rootsBody()));
    add("GET", /^\/v1\/agent\/connect\/ca\/leaf\/([^/]+)$/, (ctx, [service]) => this.getLeaf(ctx, service!));
    add("POST", /^\/v1\/agent\/connect\/authorize$/, (ctx) => this.authorizeRoute(ctx));
    add("GET", /^\/v1\/agent\/services$/, (ctx) => this.getServices(ctx));
    add("PUT", /^\/v1\/agent\/service\/register$/, (ctx) => this.registerRoute(ctx));
    add("PUT", /^\/v1\/agent\/service\/deregister\/([^/]+)$/, (ctx, [id]) => this.deregisterRoute(ctx, id!));
    add("GET", /^\/v1\/agent\/service\/([^/]+)$/, (ctx, [id]) => this.getService(ctx, id!));
    add("PUT", /^\/v1\/agent\/check\/(pass|warn|fail)\/([^/]+)$/, (ctx, [verb, id]) => this.checkRoute(ctx, verb!, id!));
    add("GET", /^\/v1\/health\/connect\/([^/]+)$/, (ctx, [service]) => this.healthRoute(ctx, service!));
    add(["GET", "POST"], /^\/v1\/discovery-chain\/([^/]+)$/, (ctx, [service]) => this.chainRoute(ctx, service!));
    add("GET", /^\/v1\/connect\/intentions\/match$/, (ctx) => this.matchRoute(ctx));
    add("GET", /^\/v1\/catalog\/datacenters$/, (ctx) => this.json(ctx, this.datacenters()));
    add("GET", /^\/v1\/catalog\/services$/, (ctx) => this.catalogServicesRoute(ctx));
    add("GET", /^\/v1\/health\/service\/([^/]+)$/, (ctx, [service]) => this.healthServiceRoute(ctx, service!));
    add("GET", /^\/v1\/config\/([^/]+)$/, (ctx, [kind]) => this.configListRoute(ctx, kind!));
  }

  private self(): JsonObject {
    const id = nodeUuid(this.nodeName);
    return {
      Config: { Datacenter: this.datacenter, NodeName: this.nodeName, NodeID: id, Revision: "double", Server: false, Version: "1.17.0" },
      Member: { Name: this.nodeName, Addr: "127.0.0.1", Port: 8301, Tags: { dc: this.datacenter, role: "node" }, Status: 1 },
      // The sanitized runtime config, as Consul 1.11+ nests it; only what the default intention action needs.
      DebugConfig: {
        DefaultIntentionPolicy: this.defaultIntentionPolicy,
        ACLResolverSettings: { ACLsEnabled: this.aclsEnabled, ACLDefaultPolicy: this.aclDefaultPolicy, ACLDownPolicy: "extend-cache" },
      },
    };
  }

  // -------------------------------------------------------------------------------------------
  // CA roots.

  private async newRoot(previous: RootState | null): Promise<RootState> {
    this.rootSeq += 1;
    // Distinct subjects per root: the cross-signed cert must not look self-issued.
    const ca = await createRootCa(this.trustDomain, { commonName: `Consul CA Root Cert ${this.rootSeq}` });
    const cert = new X509Certificate(ca.certPem);
    const ski = new x509.X509Certificate(ca.certPem).getExtension(x509.SubjectKeyIdentifierExtension);
    const intermediates = previous ? [await crossSign(ca, previous.ca)] : [];
    // Callers set the real indexes when the root goes live.
    const index = this.raftIndex;
    return {
      ca,
      id: cert.fingerprint.toLowerCase(),
      name: this.rootSeq === 1 ? "Consul CA Primary Cert" : `Consul CA Primary Cert (rotation ${this.rootSeq - 1})`,
      // The real root's serial is 128 bits and does not fit Consul's uint64; a sequence stands in.
      serialNumber: this.rootSeq,
      signingKeyId: colonHex(ski?.keyId ?? ""),
      notBefore: new Date(cert.validFrom),
      notAfter: new Date(cert.validTo),
      intermediates,
      createIndex: index,
      active: true,
      modifyIndex: index,
    };
  }

  private get activeRootState(): RootState {
    const r = this.rootList.find((x) => x.active);
    if (!r) throw new Error("the double has no active root");
    return r;
  }

  /** The active root's key material, to issue certificates the proxy should (or should not) accept. */
  get activeRoot(): CaMaterial {
    return this.activeRootState.ca;
  }

  /** Every listed root, active and inactive. */
  roots(): RootInfo[] {
    return this.rootList.map((r) => ({ id: r.id, active: r.active, ca: r.ca, intermediates: r.intermediates }));
  }

  private rootsBody(): CARootList {
    return {
      ActiveRootID: this.activeRootState.id,
      TrustDomain: this.trustDomain,
      Roots: this.rootList.map((r) => ({
        ID: r.id,
        Name: r.name,
        SerialNumber: r.serialNumber,
        SigningKeyID: r.signingKeyId,
        ExternalTrustDomain: "",
        NotBefore: rfc3339(r.notBefore),
        NotAfter: rfc3339(r.notAfter),
        RootCert: r.ca.certPem,
        IntermediateCerts: r.intermediates.length > 0 ? r.intermediates : null,
        Active: r.active,
        PrivateKeyType: "ec",
        PrivateKeyBits: 256,
        CreateIndex: this.clamp(r.createIndex),
        ModifyIndex: this.clamp(r.modifyIndex),
      })),
    };
  }

  /**
   * A root rotation (§3.7): a new root, cross-signed by the old one, becomes active; the old one
   * stays listed, inactive. Roots watchers wake first; then, unless `reissueLeafs` is false, every
   * leaf issued so far is re-issued from the new root (CertPEM ends with the cross-signed cert)
   * and its watchers wake. Returns the new root's ID.
   */
  async rotateRoots(opts: { reissueLeafs?: boolean | undefined } = {}): Promise<string> {
    const old = this.activeRootState;
    const next = await this.newRoot(old);
    // State first, then the bump, in one synchronous step: woken watchers render the new state.
    const index = this.raftIndex + 1;
    old.active = false;
    old.modifyIndex = index;
    next.createIndex = index;
    next.modifyIndex = index;
    this.rootList.push(next);
    this.bump(["roots"]);
    if (opts.reissueLeafs ?? true) {
      for (const service of [...this.leafs.keys()]) await this.rotateLeaf(service);
    }
    return next.id;
  }

  /** Ends a rotation: inactive roots are no longer listed. */
  pruneInactiveRoots(): void {
    const keep = this.rootList.filter((r) => r.active);
    if (keep.length === this.rootList.length) return;
    this.rootList.splice(0, this.rootList.length, ...keep);
    this.bump(["roots"]);
  }

  // -------------------------------------------------------------------------------------------
  // Leafs.

  private async issue(service: string, ttlMs: number): Promise<LeafState> {
    const root = this.activeRootState;
    const spiffeId = serviceSpiffeId({ trustDomain: this.trustDomain, partition: this.partition, namespace: NS, datacenter: this.datacenter, service });
    // Back-dated for clock skew like the dev CA, but never by more than a quarter of the
    // lifetime, so a test's 2-second leaf is not born expired.
    const notBefore = new Date(Date.now() - Math.min(60_000, ttlMs / 4));
    const issued = await issueLeaf(root.ca, { spiffeId, commonName: service, ttlMs, notBefore });
    const previous = this.leafs.get(service);
    if (previous?.timer) clearTimeout(previous.timer);
    // State first, then the bump, in one synchronous step: woken watchers render the new leaf.
    const index = this.raftIndex + 1;
    const state: LeafState = {
      service,
      spiffeId,
      issued,
      certPem: issued.certPem + root.intermediates.join(""),
      keyPem: toSec1(issued.keyPem),
      rootId: root.id,
      createIndex: index,
      timer: null,
    };
    state.timer = this.renewalTimer(service, issued, ttlMs);
    this.leafs.set(service, state);
    this.bump([`leaf:${service}`]);
    return state;
  }

  private renewalTimer(service: string, issued: IssuedLeaf, ttlMs: number): NodeJS.Timeout | null {
    const fraction = this.leafRenewFraction ?? 0.6 + Math.random() * 0.3;
    const delay = issued.notBefore.getTime() + fraction * (issued.notAfter.getTime() - issued.notBefore.getTime()) - Date.now();
    if (this.stopped || delay > MAX_TIMER_MS) return null;
    const t = setTimeout(() => {
      if (this.stopped || this.leafs.get(service)?.issued !== issued) return;
      this.rotateLeaf(service, { ttlMs }).catch((e: unknown) => {
        // No caller sees a timer's failure: the current leaf stays served (as an agent's would),
        // and the failure is said on stderr rather than ending the process as an unhandled rejection.
        console.error(`consul agent double: renewing the leaf of ${service} failed: ${e instanceof Error ? e.message : String(e)}`);
      });
    }, Math.max(0, delay));
    // A 72 h leaf must not keep a test process alive.
    t.unref();
    return t;
  }

  /** One issuance at a time per service, so concurrent first fetches get the same leaf. */
  private issueOnce(service: string, ttlMs: number): Promise<LeafState> {
    const pending = this.leafPending.get(service);
    if (pending) return pending;
    const p = this.issue(service, ttlMs).finally(() => this.leafPending.delete(service));
    this.leafPending.set(service, p);
    return p;
  }

  /** The agent revalidates on every fetch: an expired leaf, or one from a root no longer active, is replaced (§3.6). */
  private async currentLeaf(service: string): Promise<LeafState> {
    const l = this.leafs.get(service);
    if (l && l.issued.notAfter.getTime() > Date.now() && l.rootId === this.activeRootState.id) return l;
    return this.issueOnce(service, this.leafTtlMs);
  }

  /**
   * A leaf from the active root for a service in another namespace or partition (callers the
   * double does not otherwise issue for). Not stored, not watched.
   */
  async foreignLeaf(service: string, where: { namespace?: string; partition?: string }): Promise<{ spiffeId: string; certPem: string; keyPem: string }> {
    const root = this.activeRootState;
    const spiffeId = serviceSpiffeId({ trustDomain: this.trustDomain, namespace: where.namespace ?? NS, datacenter: this.datacenter, service, partition: where.partition ?? this.partition });
    const issued = await issueLeaf(root.ca, { spiffeId, commonName: service, ttlMs: this.leafTtlMs, notBefore: new Date(Date.now() - 60_000) });
    return { spiffeId, certPem: issued.certPem + root.intermediates.join(""), keyPem: toSec1(issued.keyPem) };
  }

  /** The leaf currently served for `service`, issuing it if none was yet. */
  async leaf(service: string): Promise<LeafInfo> {
    const l = await this.currentLeaf(service);
    return {
      service,
      spiffeId: l.spiffeId,
      certPem: l.certPem,
      keyPem: l.keyPem,
      serial: l.issued.serial,
      notBefore: l.issued.notBefore,
      notAfter: l.issued.notAfter,
      rootId: l.rootId,
    };
  }

  /** Issues a new leaf for `service` (new key and serial) and wakes its watchers. Returns the new serial. */
  async rotateLeaf(service: string, opts: { ttlMs?: number | undefined } = {}): Promise<string> {
    await this.leafPending.get(service);
    const l = await this.issueOnce(service, opts.ttlMs ?? this.leafTtlMs);
    return l.issued.serial;
  }

  private async getLeaf(ctx: Ctx, service: string): Promise<void> {
    const waitMs = this.parseWait(ctx);
    const min = this.parseIndex(ctx);
    await this.currentLeaf(service);
    const key = `leaf:${service}`;
    if (min > 0) {
      const answered = await this.hold(ctx, [key], waitMs, () => this.indexOf(key) > min, this.zeroIndex);
      if (!answered) return;
    }
    const l = this.leafs.get(service);
    if (!l) throw new Error(`no leaf for ${service}`);
    const modify = this.indexOf(key);
    const body: IssuedCert = {
      SerialNumber: l.issued.serial,
      CertPEM: l.certPem,
      PrivateKeyPEM: l.keyPem,
      Service: service,
      ServiceURI: l.spiffeId,
      ValidAfter: rfc3339(l.issued.notBefore),
      ValidBefore: rfc3339(l.issued.notAfter),
      CreateIndex: Math.min(this.clamp(l.createIndex), modify),
      ModifyIndex: modify,
    };
    this.json(ctx, body, { "X-Consul-Index": String(this.zeroIndex ? 0 : modify), "X-Cache": "MISS" });
  }

  // -------------------------------------------------------------------------------------------
  // Intentions and authorize.

  /** Replaces the intentions whose destination is `destination` (a name or `*`). */
  setIntentions(destination: string, intentions: readonly IntentionSpec[]): void {
    const index = this.raftIndex + 1;
    this.intentions = [...this.intentions.filter((i) => i.destination !== destination), ...intentions.map((spec) => ({ destination, spec, createIndex: index }))];
    this.bump(["intentions", `intentions:${destination}`]);
  }

  /**
   * `acl.default_policy`: `X-Consul-Default-ACL-Policy` on every response, and authorize's
   * fallback when ACLs are enabled and no `default_intention_policy` is set. (A real agent needs
   * a restart for it; intention watchers are woken all the same.)
   */
  setAclDefaultPolicy(policy: "allow" | "deny"): void {
    this.aclDefaultPolicy = policy;
    this.bump(["intentions", "intentions:default-policy"]);
  }

  /** `default_intention_policy` (empty: unset). When set, authorize's fallback is this, ACLs or not. */
  setDefaultIntentionPolicy(policy: "allow" | "deny" | ""): void {
    this.defaultIntentionPolicy = policy;
    this.bump(["intentions", "intentions:default-policy"]);
  }

  private intentionOut(i: StoredIntention): Intention {
    const p = i.spec.precedence ?? precedence({ source: i.spec.source, destination: i.destination });
    const modify = this.clamp(this.indexOf(`intentions:${i.destination}`));
    return {
      Description: i.spec.description,
      SourceNS: i.spec.sourceNamespace ?? NS,
      SourceName: i.spec.source,
      DestinationNS: i.spec.destinationNamespace ?? NS,
      DestinationName: i.destination,
      SourcePartition: i.spec.sourcePartition ?? this.partition,
      DestinationPartition: this.partition,
      ...(i.spec.sourcePeer ? { SourcePeer: i.spec.sourcePeer } : {}),
      SourceType: "consul",
      Action: i.spec.permissions && i.spec.permissions.length > 0 ? undefined : (i.spec.action ?? "allow"),
      Permissions: i.spec.permissions,
      Meta: {},
      Precedence: p,
      CreateIndex: Math.min(this.clamp(i.createIndex), modify),
      ModifyIndex: modify,
    };
  }

  /** Intentions that apply, most specific first; a stable sort keeps the written order among equals. */
  private matching(by: "source" | "destination", name: string): Intention[] {
    return this.intentions
      .filter((i) => (by === "destination" ? i.destination === name || i.destination === "*" : i.spec.source === name || i.spec.source === "*"))
      .map((i) => this.intentionOut(i))
      .sort((a, b) => b.Precedence - a.Precedence);
  }

  private async matchRoute(ctx: Ctx): Promise<void> {
    const by = ctx.url.searchParams.get("by");
    if (by === null || by === "") throw new BadRequest("required query parameter 'by' not set");
    if (by !== "source" && by !== "destination") throw new BadRequest("'by' parameter must be one of 'source' or 'destination'");
    const names = ctx.url.searchParams.getAll("name").filter((n) => n !== "");
    if (names.length === 0) throw new BadRequest("required query parameter 'name' not set");
    const keys =
      by === "source" ? ["intentions"] : ["intentions:*", "intentions:default-policy", ...names.map((n) => `intentions:${n}`)];
    await this.indexed(ctx, keys, () => Object.fromEntries(names.map((n) => [n, this.matching(by, n)])));
  }

  private async authorizeRoute(ctx: Ctx): Promise<void> {
    const body = await this.readJson(ctx);
    const target = optString(body, "Target");
    const uri = optString(body, "ClientCertURI") ?? "";
    if (!target) throw new BadRequest("Target service must be specified");
    if (!isConnectIdentifier(uri)) throw new BadRequest("ClientCertURI not a valid Connect identifier");
    const client = parseServiceSpiffeId(uri);
    if (!client) throw new BadRequest("ClientCertURI not a valid Service identifier");
    this.json(ctx, this.authorize(client.service, client.namespace, target, client.partition));
  }

  /**
   * Agent-side authorize semantics (§1.3, AgentConnectAuthorize in Consul 1.x): the first
   * intention whose source matches (IntentionMatch: no peer, same partition, namespace and name
   * equal or `*`) wins, L7 ones always deny; else `default_intention_policy` if set, else allow
   * with ACLs off, else `acl.default_policy`.
   */
  authorize(source: string, sourceNamespace: string, target: string, sourcePartition = this.partition): { Authorized: boolean; Reason: string } {
    for (const it of this.matching("destination", target)) {
      if (it.SourcePeer || it.SourcePartition !== sourcePartition) continue;
      if (it.SourceNS !== "*" && it.SourceNS !== sourceNamespace) continue;
      if (it.SourceName !== "*" && it.SourceName !== source) continue;
      if (it.Permissions && it.Permissions.length > 0) {
        return { Authorized: false, Reason: `Matched L7 intention: ${it.SourceName} => ${it.DestinationName} (Permissions)` };
      }
      const action = it.Action ?? "allow";
      return { Authorized: action === "allow", Reason: `Matched L4 intention: ${it.SourceName} => ${it.DestinationName} (${action})` };
    }
    if (this.defaultIntentionPolicy !== "") return { Authorized: this.defaultIntentionPolicy === "allow", Reason: "Default intention policy" };
    if (!this.aclsEnabled) return { Authorized: true, Reason: "ACLs disabled, access is allowed by default" };
    return { Authorized: this.aclDefaultPolicy === "allow", Reason: "Default behavior configured by ACLs" };
  }

  // -------------------------------------------------------------------------------------------
  // Agent services and checks.

  /** Registers (or replaces) a service, as PUT /v1/agent/service/register does. */
  registerService(reg: AgentServiceRegistration): AgentService {
    const id = reg.ID || reg.Name;
    const previous = this.services.get(id);
    if (previous) this.removeService(id, false);
    let sidecarId: string | null = null;
    const sidecar = reg.Connect?.["SidecarService"];
    if (isObject(sidecar)) {
      sidecarId = `${id}-sidecar-proxy`;
      const proxy = optObject(sidecar, "Proxy");
      this.registerService({
        Kind: "connect-proxy",
        ID: sidecarId,
        Name: `${reg.Name}-sidecar-proxy`,
        Port: optNumber(sidecar, "Port") ?? 21000 + this.services.size,
        Address: reg.Address,
        Proxy: {
          ...(proxy ? parseProxy(proxy) : {}),
          DestinationServiceName: reg.Name,
          DestinationServiceID: id,
          LocalServiceAddress: "127.0.0.1",
          LocalServicePort: reg.Port,
        },
      });
    }
    const checkRegs = [...(reg.Check ? [reg.Check] : []), ...(reg.Checks ?? [])];
    const checkIds = checkRegs.map((c, i) => {
      const checkId = c.CheckID || (checkRegs.length === 1 ? `service:${id}` : `service:${id}:${i + 1}`);
      const ttlMs = c.TTL ? parseDurationMs(c.TTL) : null;
      this.checks.set(checkId, {
        id: checkId,
        name: c.Name ?? `Service '${reg.Name}' check`,
        serviceId: id,
        serviceName: reg.Name,
        type: c.TTL ? "ttl" : c.TCP ? "tcp" : c.HTTP ? "http" : c.AliasService ? "alias" : "",
        ttlMs,
        notes: c.Notes ?? "",
        // New TTL checks start critical, as in Consul; the double never probes the others, so
        // they report passing, as they would for a live proxy.
        status: c.Status ?? (c.TTL ? "critical" : "passing"),
        output: "",
        timer: null,
      });
      return checkId;
    });
    const index = this.raftIndex + 1;
    this.services.set(id, { reg: { ...reg, ID: id }, createIndex: previous?.createIndex ?? index, modifyIndex: index, checkIds, sidecarId });
    const keys = [`service:${id}`, "services", `health:${destinationOf(reg)}`, "catalog"];
    // A re-registration may move the proxy to another destination: both lists change.
    if (previous) keys.push(`health:${destinationOf(previous.reg)}`);
    this.bump(keys);
    return this.agentService(id);
  }

  /** {@link registerService} with `Kind` defaulting to `connect-proxy`. */
  registerProxy(reg: AgentServiceRegistration): AgentService {
    return this.registerService({ ...reg, Kind: reg.Kind ?? "connect-proxy" });
  }

  /** Removes a service (and its checks and expanded sidecar). False if it was not registered. */
  deregister(id: string): boolean {
    return this.removeService(id, true);
  }

  private removeService(id: string, notify: boolean): boolean {
    const s = this.services.get(id);
    if (!s) return false;
    this.services.delete(id);
    for (const c of s.checkIds) {
      const check = this.checks.get(c);
      if (check?.timer) clearTimeout(check.timer);
      this.checks.delete(c);
    }
    if (s.sidecarId) this.removeService(s.sidecarId, notify);
    if (notify) this.bump([`service:${id}`, "services", `health:${destinationOf(s.reg)}`, "catalog"]);
    return true;
  }

  /** The effective definition the agent serves for `id`, or undefined. */
  service(id: string): AgentService | undefined {
    return this.services.has(id) ? this.agentService(id) : undefined;
  }

  /**
   * The proxy-defaults `Config` the agent merges under every proxy's own `Proxy.Config` (§2.4).
   * Changes every proxy's ContentHash, waking hash watchers.
   */
  setProxyDefaults(config: JsonObject): void {
    this.proxyDefaults = config;
    const keys = [...this.services.values()].filter((s) => s.reg.Kind === "connect-proxy").map((s) => `service:${s.reg.ID}`);
    this.bump(["services", ...keys]);
  }

  private agentService(id: string): AgentService {
    const s = this.services.get(id);
    if (!s) throw new Error(`no service ${id}`);
    const r = s.reg;
    const p = r.Proxy;
    const proxy: AgentServiceProxy | undefined = p
      ? {
          DestinationServiceName: p.DestinationServiceName,
          DestinationServiceID: p.DestinationServiceID,
          LocalServiceAddress: p.LocalServiceAddress,
          LocalServicePort: p.LocalServicePort,
          Mode: p.Mode ?? "",
          Config: { ...this.proxyDefaults, ...(p.Config ?? {}) },
          Upstreams: (p.Upstreams ?? []).map((u) => upstreamOut(u)),
          MeshGateway: p.MeshGateway ?? {},
          Expose: p.Expose ?? {},
          TransparentProxy: p.TransparentProxy,
        }
      : undefined;
    const base = {
      Kind: r.Kind ? r.Kind : undefined,
      ID: r.ID,
      Service: r.Name,
      Tags: r.Tags ?? [],
      Meta: r.Meta ?? {},
      Port: r.Port ?? 0,
      Address: r.Address ?? "",
      Weights: { Passing: 1, Warning: 1 },
      EnableTagOverride: false,
      Datacenter: this.datacenter,
      Proxy: proxy,
      Connect: r.Connect,
      ...(r.TaggedAddresses ? { TaggedAddresses: r.TaggedAddresses } : {}),
    };
    // Opaque and stable: the same effective definition always hashes the same (§2.0).
    return { ...base, ContentHash: sha256Hex(JSON.stringify(base)).slice(0, 16) };
  }

  private getServices(ctx: Ctx): void {
    const raw = ctx.url.searchParams.get("filter");
    const filter = raw ? compileFilter(raw) : null;
    if (raw && !filter) throw new BadRequest(`Failed to create boolean expression evaluator: unsupported filter ${raw}`);
    const out: Record<string, AgentService> = {};
    for (const id of this.services.keys()) {
      const svc = this.agentService(id);
      if (!filter || filter(svc)) out[id] = svc;
    }
    this.json(ctx, out);
  }

  /** Hash blocking only (§2.4): `index` is ignored. */
  private async getService(ctx: Ctx, id: string): Promise<void> {
    const waitMs = this.parseWait(ctx);
    const hash = ctx.url.searchParams.get("hash");
    const current = (): string | null => (this.services.has(id) ? this.agentService(id).ContentHash : null);
    if (hash) {
      const answered = await this.hold(ctx, [`service:${id}`], waitMs, () => current() !== hash, false);
      if (!answered) return;
    }
    const svc = this.service(id);
    if (!svc) return this.text(ctx, 404, `unknown service ID: ${id}`);
    this.json(ctx, svc, { "X-Consul-ContentHash": svc.ContentHash });
  }

  private async registerRoute(ctx: Ctx): Promise<void> {
    const reg = parseRegistration(await this.readJson(ctx));
    if (reg.Kind === "connect-proxy" && !reg.Port) throw new BadRequest("Port must be set for a Connect proxy");
    this.registerService(reg);
    this.send(ctx, 200, "text/plain; charset=utf-8", "");
  }

  private deregisterRoute(ctx: Ctx, id: string): void {
    if (!this.deregister(id)) return this.text(ctx, 404, `Unknown service ID "${id}". Ensure that the service ID is passed, not the service name.`);
    this.send(ctx, 200, "text/plain; charset=utf-8", "");
  }

  private checkRoute(ctx: Ctx, verb: string, id: string): void {
    const c = this.checks.get(id);
    if (!c) return this.text(ctx, 404, `Unknown check ID "${id}". Ensure that the check ID is passed, not the check name.`);
    if (c.ttlMs === null) return this.text(ctx, 500, `CheckID "${id}" does not have associated TTL`);
    const status: CheckStatus = verb === "pass" ? "passing" : verb === "warn" ? "warning" : "critical";
    const note = ctx.url.searchParams.get("note") ?? "";
    this.heartbeats.push({ checkId: id, status, note, at: Date.now() });
    this.setCheckStatus(id, status, note);
    if (c.timer) clearTimeout(c.timer);
    c.timer = null;
    if (c.ttlMs > 0 && c.ttlMs <= MAX_TIMER_MS && !this.stopped) {
      c.timer = setTimeout(() => {
        c.timer = null;
        if (this.checks.get(id) === c) this.setCheckStatus(id, "critical", `TTL expired`);
      }, c.ttlMs);
      c.timer.unref();
    }
    this.send(ctx, 200, "text/plain; charset=utf-8", "");
  }

  /** Sets a registered check's status; wakes `/v1/health/connect` watchers if it changed. */
  setCheckStatus(checkId: string, status: CheckStatus, output = ""): void {
    const c = this.checks.get(checkId);
    if (!c) throw new Error(`no check ${checkId}`);
    c.output = output;
    if (c.status === status) return;
    c.status = status;
    const s = this.services.get(c.serviceId);
    if (s) this.bump([`health:${destinationOf(s.reg)}`]);
  }

  /** A registered check's status, or undefined. */
  checkStatus(checkId: string): CheckStatus | undefined {
    return this.checks.get(checkId)?.status;
  }

  // -------------------------------------------------------------------------------------------
  // Health.

  /** Replaces the mesh instances of `service` served by `/v1/health/connect/:service` (services registered through the API are listed too). */
  setInstances(service: string, instances: readonly InstanceSpec[]): void {
    this.instances.set(service, { instances, index: this.raftIndex + 1 });
    this.bump([`health:${service}`, "catalog"]);
  }

  /**
   * Replaces the mesh gateways registered under `name` (Kind mesh-gateway): served by
   * `/v1/health/service/:name` and listed by `/v1/catalog/services` (which filters on ServiceKind).
   */
  setMeshGateways(name: string, gateways: readonly MeshGatewaySpec[]): void {
    this.meshGateways.set(name, { gateways, index: this.raftIndex + 1 });
    this.bump([`gateway:${name}`, "catalog", "datacenters"]);
  }

  private meshGatewayEntry(name: string, g: MeshGatewaySpec, storedIndex: number): ServiceEntry {
    const node = `node-${g.id}`;
    const index = this.clamp(storedIndex);
    const status = g.status ?? "passing";
    const wan = g.wan ?? { address: g.address, port: g.port };
    return {
      Node: { ID: nodeUuid(node), Node: node, Address: g.address, Datacenter: g.datacenter ?? this.datacenter, TaggedAddresses: { lan: g.address, wan: wan.address }, Meta: {}, CreateIndex: index, ModifyIndex: index },
      Service: {
        Kind: "mesh-gateway",
        ID: g.id,
        Service: name,
        Tags: [],
        Address: g.address,
        Meta: {},
        Port: g.port,
        Weights: { Passing: 1, Warning: 1 },
        EnableTagOverride: false,
        TaggedAddresses: { lan: { Address: g.address, Port: g.port }, wan: { Address: wan.address, Port: wan.port } },
        Connect: {},
        CreateIndex: index,
        ModifyIndex: index,
      },
      Checks: [check(node, "serfHealth", "Serf Health Status", "passing", "", "", [], "serf"), check(node, `service:${g.id}`, "Mesh Gateway Listening", status, g.id, name, [], "tcp")],
    };
  }

  private instanceEntry(service: string, inst: InstanceSpec, storedIndex: number): ServiceEntry {
    const node = inst.node ?? `node-${inst.id}`;
    const nodeAddress = inst.nodeAddress ?? "127.0.0.1";
    const index = this.clamp(storedIndex);
    const status = inst.status ?? "passing";
    const native = inst.native ?? false;
    const name = native ? service : `${service}-sidecar-proxy`;
    return {
      Node: {
        ID: nodeUuid(node),
        Node: node,
        Address: nodeAddress,
        Datacenter: inst.datacenter ?? this.datacenter,
        TaggedAddresses: { lan: nodeAddress, wan: inst.nodeWan ?? nodeAddress },
        Meta: {},
        CreateIndex: index,
        ModifyIndex: index,
      },
      Service: {
        Kind: native ? undefined : "connect-proxy",
        ID: inst.id,
        Service: name,
        Tags: inst.tags ?? [],
        Address: inst.address,
        ...(inst.wan ? { TaggedAddresses: { lan: { Address: inst.address, Port: inst.port }, wan: { Address: inst.wan.address, Port: inst.wan.port } } } : {}),
        Meta: inst.meta ?? {},
        Port: inst.port,
        Weights: { Passing: inst.weights?.passing ?? 1, Warning: inst.weights?.warning ?? 1 },
        EnableTagOverride: false,
        Proxy: native ? undefined : { DestinationServiceName: service, DestinationServiceID: inst.id.replace(/-sidecar-proxy$/, "") },
        Connect: native ? { Native: true } : {},
        CreateIndex: index,
        ModifyIndex: index,
      },
      Checks: [
        check(node, "serfHealth", "Serf Health Status", "passing", "", "", [], "serf"),
        check(node, `service:${inst.id}`, status === "passing" ? "Connect Sidecar Listening" : "Connect Sidecar Health", status, inst.id, name, inst.tags ?? [], "tcp"),
      ],
    };
  }

  private registeredEntry(s: ServiceState): ServiceEntry {
    const svc = this.agentService(s.reg.ID);
    const index = this.clamp(s.modifyIndex);
    return {
      Node: {
        ID: nodeUuid(this.nodeName),
        Node: this.nodeName,
        Address: "127.0.0.1",
        Datacenter: this.datacenter,
        TaggedAddresses: { lan: "127.0.0.1", wan: "127.0.0.1" },
        Meta: {},
        CreateIndex: this.clamp(this.baseline),
        ModifyIndex: this.clamp(this.baseline),
      },
      Service: {
        Kind: svc.Kind,
        ID: svc.ID,
        Service: svc.Service,
        Tags: svc.Tags,
        Address: svc.Address,
        Meta: svc.Meta,
        Port: svc.Port,
        Weights: svc.Weights,
        EnableTagOverride: false,
        Proxy: svc.Proxy,
        Connect: svc.Connect ?? {},
        ...(svc.TaggedAddresses ? { TaggedAddresses: svc.TaggedAddresses } : {}),
        CreateIndex: Math.min(this.clamp(s.createIndex), index),
        ModifyIndex: index,
      },
      Checks: [
        check(this.nodeName, "serfHealth", "Serf Health Status", "passing", "", "", [], "serf"),
        ...s.checkIds.flatMap((id) => {
          const c = this.checks.get(id);
          return c ? [check(this.nodeName, c.id, c.name, c.status, c.serviceId, c.serviceName, svc.Tags, c.type, c.output, c.notes)] : [];
        }),
      ],
    };
  }

  private async healthRoute(ctx: Ctx, service: string): Promise<void> {
    const params = ctx.url.searchParams;
    let passing = false;
    if (params.has("passing")) {
      const v = (params.get("passing") ?? "").toLowerCase();
      if (["", "1", "t", "true"].includes(v)) passing = true;
      else if (!["0", "f", "false"].includes(v)) throw new BadRequest("Invalid value for ?passing");
    }
    const raw = params.get("filter");
    const filter = raw ? compileFilter(raw) : null;
    if (raw && !filter) throw new BadRequest(`Failed to create boolean expression evaluator: unsupported filter ${raw}`);
    const tags = params.getAll("tag");
    const dc = params.get("dc") || this.datacenter;
    await this.indexed(ctx, [`health:${service}`], () => {
      const stored = this.instances.get(service);
      const entries = [
        ...(stored?.instances ?? []).map((i) => this.instanceEntry(service, i, stored?.index ?? this.baseline)),
        ...[...this.services.values()].filter((s) => destinationOf(s.reg) === service && isMeshService(s.reg)).map((s) => this.registeredEntry(s)),
      ];
      return entries.filter(
        (e) =>
          e.Node.Datacenter === dc &&
          (!passing || e.Checks.every((c) => c.Status === "passing")) &&
          tags.every((t) => e.Service.Tags.includes(t)) &&
          (!filter || filter(e)),
      );
    });
  }

  // -------------------------------------------------------------------------------------------
  // The catalog a mesh gateway reads: datacenters, service names, other datacenters' gateways,
  // config entries.

  /** Replaces the mesh gateways registered in datacenter `dc` (another datacenter: listed by /v1/catalog/datacenters). */
  setRemoteGateways(dc: string, gateways: readonly RemoteGatewaySpec[]): void {
    if (dc === this.datacenter) throw new Error("setRemoteGateways is for other datacenters; register this one's through the API");
    this.remoteGateways.set(dc, gateways);
    this.bump(["catalog", "datacenters"]);
  }

  /** Stores a config entry as Consul's JSON (`Kind`, `Name`, …), served by `GET /v1/config/:kind`. */
  setConfigEntry(entry: JsonObject): void {
    const kind = entry["Kind"];
    const name = entry["Name"];
    if (typeof kind !== "string" || typeof name !== "string") throw new Error("a config entry needs Kind and Name");
    this.configEntries.set(`${kind}/${name}`, entry);
    this.bump([`config:${kind}`]);
  }

  deleteConfigEntry(kind: string, name: string): void {
    this.configEntries.delete(`${kind}/${name}`);
    this.bump([`config:${kind}`]);
  }

  private datacenters(): string[] {
    const gatewayDcs = [...this.meshGateways.values()].flatMap((m) => m.gateways.map((g) => g.datacenter ?? this.datacenter));
    return [...new Set([this.datacenter, ...this.remoteGateways.keys(), ...gatewayDcs])].sort();
  }

  /** The catalog's service nodes in `dc`, as `ServiceNode`-like objects for filters. */
  private serviceNodes(dc: string): Array<{ ServiceName: string; ServiceKind: string; ServiceTags: readonly string[]; entry: ServiceEntry }> {
    // Gateways stored with setMeshGateways, in whichever datacenter each names.
    const gateways = [...this.meshGateways].flatMap(([name, stored]) =>
      stored.gateways.filter((g) => (g.datacenter ?? this.datacenter) === dc).map((g) => {
        const entry = this.meshGatewayEntry(name, g, stored.index);
        return { ServiceName: name, ServiceKind: "mesh-gateway", ServiceTags: [] as readonly string[], entry };
      }),
    );
    if (dc !== this.datacenter) {
      return [
        ...gateways,
        ...(this.remoteGateways.get(dc) ?? []).map((g) => {
          const entry = this.remoteGatewayEntry(dc, g);
          return { ServiceName: entry.Service.Service, ServiceKind: "mesh-gateway", ServiceTags: [] as readonly string[], entry };
        }),
      ];
    }
    const out: Array<{ ServiceName: string; ServiceKind: string; ServiceTags: readonly string[]; entry: ServiceEntry }> = [...gateways];
    for (const [service, stored] of this.instances) {
      for (const i of stored.instances) {
        if ((i.datacenter ?? this.datacenter) !== dc) continue;
        const entry = this.instanceEntry(service, i, stored.index);
        out.push({ ServiceName: entry.Service.Service, ServiceKind: entry.Service.Kind ?? "", ServiceTags: entry.Service.Tags, entry });
        // A sidecar's app is in the catalog too, under its own name.
        if (entry.Service.Kind === "connect-proxy") out.push({ ServiceName: service, ServiceKind: "", ServiceTags: [], entry });
      }
    }
    for (const st of this.services.values()) {
      const entry = this.registeredEntry(st);
      out.push({ ServiceName: entry.Service.Service, ServiceKind: entry.Service.Kind ?? "", ServiceTags: entry.Service.Tags, entry });
    }
    return out;
  }

  private remoteGatewayEntry(dc: string, g: RemoteGatewaySpec): ServiceEntry {
    const node = `node-${g.id}`;
    const index = this.clamp(this.indexOf("catalog"));
    const name = g.name ?? "mesh-gateway";
    return {
      Node: { ID: nodeUuid(node), Node: node, Address: g.address, Datacenter: dc, TaggedAddresses: { lan: g.address, wan: g.address }, Meta: {}, CreateIndex: index, ModifyIndex: index },
      Service: {
        Kind: "mesh-gateway",
        ID: g.id,
        Service: name,
        Tags: [],
        Address: g.address,
        Meta: {},
        Port: g.port,
        Weights: { Passing: 1, Warning: 1 },
        EnableTagOverride: false,
        Connect: {},
        TaggedAddresses: { lan: { Address: g.address, Port: g.port }, ...(g.wan ? { wan: g.wan } : {}) },
        CreateIndex: index,
        ModifyIndex: index,
      },
      Checks: [
        check(node, "serfHealth", "Serf Health Status", "passing", "", "", [], "serf"),
        check(node, `service:${g.id}`, "mesh-gateway listening", g.status ?? "passing", g.id, name, [], "tcp"),
      ],
    };
  }

  private async catalogServicesRoute(ctx: Ctx): Promise<void> {
    const raw = ctx.url.searchParams.get("filter");
    const filter = raw ? compileFilter(raw) : null;
    if (raw && !filter) throw new BadRequest(`Failed to create boolean expression evaluator: unsupported filter ${raw}`);
    const dc = ctx.url.searchParams.get("dc") || this.datacenter;
    await this.indexed(ctx, ["catalog"], () => {
      const out: Record<string, string[]> = {};
      for (const n of this.serviceNodes(dc)) {
        if (filter && !filter(n)) continue;
        out[n.ServiceName] = [...new Set([...(out[n.ServiceName] ?? []), ...n.ServiceTags])];
      }
      return out;
    });
  }

  private async healthServiceRoute(ctx: Ctx, service: string): Promise<void> {
    const dc = ctx.url.searchParams.get("dc") || this.datacenter;
    const passing = ["", "1", "t", "true"].includes((ctx.url.searchParams.get("passing") ?? "0").toLowerCase());
    await this.indexed(ctx, ["catalog"], () =>
      this.serviceNodes(dc)
        .filter((n) => n.ServiceName === service && n.entry.Service.Service === service)
        .map((n) => n.entry)
        .filter((e) => !passing || e.Checks.every((c) => c.Status === "passing")),
    );
  }

  private async configListRoute(ctx: Ctx, kind: string): Promise<void> {
    await this.indexed(ctx, [`config:${kind}`], () => [...this.configEntries.values()].filter((e) => e["Kind"] === kind));
  }

  // -------------------------------------------------------------------------------------------
  // Discovery chain.

  /** Serves `chain` (a CompiledDiscoveryChain, the value of `Chain`) for `service`; null restores the default. */
  setChain(service: string, chain: JsonObject | null): void {
    if (chain === null) this.chains.delete(service);
    else this.chains.set(service, chain);
    this.bump([`chain:${service}`]);
  }

  private async chainRoute(ctx: Ctx, service: string): Promise<void> {
    // POST carries read-only overrides (§2.7); the double accepts and ignores them.
    if (ctx.record.method === "POST" && ctx.record.body.trim() !== "") await this.readJson(ctx);
    const dc = ctx.url.searchParams.get("compile-dc") || this.datacenter;
    await this.indexed(ctx, [`chain:${service}`], () => ({
      Chain: this.chains.get(service) ?? defaultDiscoveryChain(service, dc, this.trustDomain, this.partition),
    }));
  }
}

// ---------------------------------------------------------------------------------------------

function upstreamOut(u: UpstreamRegistration): JsonObject {
  const out: Record<string, Json> = {
    DestinationType: u.DestinationType ?? "service",
    DestinationName: u.DestinationName,
    Config: u.Config ?? {},
    MeshGateway: u.MeshGateway ?? {},
  };
  if (u.DestinationNamespace !== undefined) out["DestinationNamespace"] = u.DestinationNamespace;
  if (u.DestinationPartition !== undefined) out["DestinationPartition"] = u.DestinationPartition;
  if (u.DestinationPeer !== undefined) out["DestinationPeer"] = u.DestinationPeer;
  if (u.Datacenter !== undefined) out["Datacenter"] = u.Datacenter;
  if (u.LocalBindAddress !== undefined) out["LocalBindAddress"] = u.LocalBindAddress;
  if (u.LocalBindPort !== undefined) out["LocalBindPort"] = u.LocalBindPort;
  return out;
}

function check(
  node: string,
  id: string,
  name: string,
  status: CheckStatus,
  serviceId: string,
  serviceName: string,
  tags: readonly string[],
  type: string,
  output = "",
  notes = "",
): HealthCheck {
  return { Node: node, CheckID: id, Name: name, Status: status, Notes: notes, Output: output, ServiceID: serviceId, ServiceName: serviceName, ServiceTags: tags, Type: type };
}

/** The service name a registration is discovered under in `/v1/health/connect`. */
function destinationOf(reg: AgentServiceRegistration): string {
  return reg.Kind === "connect-proxy" && reg.Proxy ? reg.Proxy.DestinationServiceName : reg.Name;
}

function isMeshService(reg: AgentServiceRegistration): boolean {
  return reg.Kind === "connect-proxy" || reg.Connect?.["Native"] === true;
}

/**
 * Whether the agent's `connect.ParseCertURI` would accept `uri` as some Connect identity
 * (service, agent, server, mesh gateway, or the CA's bare trust domain).
 */
function isConnectIdentifier(uri: string): boolean {
  if (parseServiceSpiffeId(uri)) return true;
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    return false;
  }
  if (u.protocol !== "spiffe:" || u.hostname === "") return false;
  const path = u.pathname;
  return (
    path === "" ||
    path === "/" ||
    /^\/agent\/[^/]+$/.test(path) ||
    /^(\/ap\/[^/]+)?\/agent\/client\/dc\/[^/]+\/id\/[^/]+$/.test(path) ||
    /^\/agent\/server\/dc\/[^/]+$/.test(path) ||
    /^(\/ap\/[^/]+)?\/gateway\/mesh\/dc\/[^/]+$/.test(path)
  );
}
