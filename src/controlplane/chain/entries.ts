// Consul config entries (shared/reference/consul-connect.md §2.8) as the dev control plane stores
// them and `meshproxy config write` accepts them: Consul's JSON, CamelCase or snake_case keys,
// durations as Go strings or integer nanoseconds. Parsing narrows to typed entries and names
// the field when something is wrong.
import { parseDurationMs } from "../../config/duration.js";
import { FilterError, compileFilter } from "./bexpr.js";
import { isValidServiceName } from "../../config/validate.js";
import type { Protocol } from "../../config/snapshot.js";
import type { HashPolicy, HeaderMatch, HeaderMutation, LbPolicy, PathMatch, Permission, QueryParamMatch, RetryOn } from "../../config/http.js";

export class EntryError extends Error {
  constructor(where: string, why: string) {
    super(`${where}: ${why}`);
    this.name = "EntryError";
  }
}

/**
 * A bad value for an error message, bounded: JSON.stringify of an agent's arbitrary JSON could
 * be megabytes, or throw on nesting deeper than the stack.
 */
export function describeValue(v: unknown): string {
  if (v === undefined) return "nothing";
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "object") return "an object";
  if (typeof v === "string") return JSON.stringify(v.length > 64 ? `${v.slice(0, 64)}…` : v);
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return typeof v;
}

export const ENTRY_KINDS = ["service-defaults", "proxy-defaults", "service-router", "service-splitter", "service-resolver"] as const;
export type EntryKind = (typeof ENTRY_KINDS)[number];

/**
 * Consul's MeshGateway.Mode: how a target in another datacenter is reached. `none` dials its
 * instances directly, `local` this datacenter's mesh gateways, `remote` the target datacenter's.
 */
export type MeshGatewayMode = "none" | "local" | "remote";
export const MESH_GATEWAY_MODES: readonly MeshGatewayMode[] = ["none", "local", "remote"];

export interface UpstreamSettings {
  readonly connectTimeoutMs?: number;
  /** UpstreamConfig's MeshGateway.Mode for this destination. */
  readonly meshGatewayMode?: MeshGatewayMode;
  readonly limits?: { readonly maxConnections?: number; readonly maxPendingRequests?: number; readonly maxConcurrentRequests?: number };
  readonly passiveHealthCheck?: {
    readonly intervalMs?: number;
    readonly maxFailures?: number;
    readonly enforcingConsecutive5xx?: number;
    readonly maxEjectionPercent?: number;
    readonly baseEjectionTimeMs?: number;
  };
}

export interface ServiceDefaults {
  readonly kind: "service-defaults";
  readonly name: string;
  readonly protocol?: Protocol;
  readonly localConnectTimeoutMs?: number;
  readonly localRequestTimeoutMs?: number;
  readonly upstreamDefaults?: UpstreamSettings;
  readonly upstreamOverrides: ReadonlyArray<UpstreamSettings & { readonly name: string }>;
  /** MeshGateway.Mode: the default for this service's upstreams, and for reaching this service. */
  readonly meshGatewayMode?: MeshGatewayMode;
}

export interface ProxyDefaults {
  readonly kind: "proxy-defaults";
  readonly name: "global";
  readonly protocol?: Protocol;
  readonly meshGatewayMode?: MeshGatewayMode;
}

export interface RouteDestination {
  readonly service?: string;
  readonly serviceSubset?: string;
  readonly prefixRewrite?: string;
  readonly requestTimeoutMs?: number;
  readonly idleTimeoutMs?: number;
  readonly numRetries?: number;
  readonly retryOnConnectFailure?: boolean;
  readonly retryOnStatusCodes: readonly number[];
  readonly retryOn: readonly RetryOn[];
  readonly requestHeaders?: HeaderMutation;
  readonly responseHeaders?: HeaderMutation;
}

export interface RouterRoute {
  readonly path?: PathMatch;
  readonly headers: readonly HeaderMatch[];
  readonly queryParams: readonly QueryParamMatch[];
  readonly methods: readonly string[];
  readonly destination: RouteDestination;
}

export interface ServiceRouter {
  readonly kind: "service-router";
  readonly name: string;
  readonly routes: readonly RouterRoute[];
}

export interface Split {
  /** Percent, 0–100, 0.01 resolution. */
  readonly weight: number;
  readonly service?: string;
  readonly serviceSubset?: string;
  readonly requestHeaders?: HeaderMutation;
  readonly responseHeaders?: HeaderMutation;
}

export interface ServiceSplitter {
  readonly kind: "service-splitter";
  readonly name: string;
  readonly splits: readonly Split[];
}

export interface FailoverTarget {
  readonly service?: string;
  readonly serviceSubset?: string;
  readonly datacenter?: string;
}

export interface ServiceResolver {
  readonly kind: "service-resolver";
  readonly name: string;
  readonly defaultSubset?: string;
  readonly subsets: Readonly<Record<string, { readonly filter: string; readonly onlyPassing: boolean }>>;
  readonly redirect?: { readonly service?: string; readonly serviceSubset?: string; readonly datacenter?: string };
  /** Keyed by subset name or `*`. */
  readonly failover: Readonly<Record<string, readonly FailoverTarget[]>>;
  readonly connectTimeoutMs?: number;
  readonly requestTimeoutMs?: number;
  readonly loadBalancer?: { readonly policy: LbPolicy; readonly choiceCount?: number; readonly ringSize?: { readonly min?: number; readonly max?: number }; readonly hashPolicies: readonly HashPolicy[] };
}

export type ConfigEntry = ServiceDefaults | ProxyDefaults | ServiceRouter | ServiceSplitter | ServiceResolver;

// ---- narrowing ----

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * The deepest real entry (a router's Routes[].Match.HTTP.Header[]) nests six levels. Anything
 * far deeper is refused up front, so nothing that later walks the entry recursively (storing it
 * with JSON.stringify, printing it) can overflow the stack on it.
 */
export const MAX_ENTRY_DEPTH = 32;

/** Throws EntryError when `v` nests deeper than MAX_ENTRY_DEPTH; iterative, so any depth is safe to check. */
function checkDepth(v: unknown, where: string): void {
  const stack: { readonly v: unknown; readonly depth: number }[] = [{ v, depth: 0 }];
  for (let top = stack.pop(); top !== undefined; top = stack.pop()) {
    if (typeof top.v !== "object" || top.v === null) continue;
    if (top.depth >= MAX_ENTRY_DEPTH) throw new EntryError(where, `nested more than ${MAX_ENTRY_DEPTH} levels deep; no config entry is`);
    for (const child of Object.values(top.v)) stack.push({ v: child, depth: top.depth + 1 });
  }
}

/** A string from the input, shortened for a message. */
function clip(s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/** The keys a field may be written as, in the order pick tries them: `ServiceSubset`, `service_subset`, `serviceSubset`. */
function spellings(camel: string): string[] {
  return [camel, camel.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toLowerCase(), camel.charAt(0).toLowerCase() + camel.slice(1)];
}

/** Accepts every spelling of a field (spellings). */
function pick(o: Obj, camel: string): unknown {
  // Own properties only: a subset or map key such as "constructor" must not find Object.prototype's.
  for (const k of spellings(camel)) if (Object.hasOwn(o, k)) return o[k];
  return undefined;
}

class Fields {
  constructor(
    readonly where: string,
    private readonly o: Obj,
  ) {}

  static of(where: string, v: unknown): Fields {
    if (!isObj(v)) throw new EntryError(where, "want a JSON object");
    return new Fields(where, v);
  }

  at(k: string): string {
    return `${this.where}.${clip(k)}`;
  }

  str(k: string): string | undefined {
    const v = pick(this.o, k);
    if (v === undefined || v === null || v === "") return undefined;
    if (typeof v !== "string") throw new EntryError(this.at(k), `want a string, got ${describeValue(v)}`);
    return v;
  }

  num(k: string): number | undefined {
    const v = pick(this.o, k);
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isFinite(v) || v < 0) throw new EntryError(this.at(k), `want a non-negative number, got ${describeValue(v)}`);
    return v;
  }

  bool(k: string): boolean {
    const v = pick(this.o, k);
    if (v === undefined || v === null) return false;
    if (typeof v !== "boolean") throw new EntryError(this.at(k), `want true or false, got ${describeValue(v)}`);
    return v;
  }

  duration(k: string): number | undefined {
    const v = pick(this.o, k);
    if (v === undefined || v === null || v === "") return undefined;
    const ms = parseDurationMs(v);
    if (ms === null) throw new EntryError(this.at(k), `want a duration like "5s" or integer nanoseconds, got ${describeValue(v)}`);
    return ms;
  }

  /** `*_ms` settings are plain milliseconds. */
  ms(k: string): number | undefined {
    return this.num(k);
  }

  list(k: string): Fields[] {
    const v = pick(this.o, k);
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v)) throw new EntryError(this.at(k), "want an array");
    return v.map((x, i) => Fields.of(`${this.at(k)}[${i}]`, x));
  }

  strList(k: string): string[] {
    const v = pick(this.o, k);
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v) || !v.every((x): x is string => typeof x === "string")) throw new EntryError(this.at(k), "want an array of strings");
    return v;
  }

  numList(k: string): number[] {
    const v = pick(this.o, k);
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v) || !v.every((x): x is number => typeof x === "number" && Number.isInteger(x))) throw new EntryError(this.at(k), "want an array of whole numbers");
    return v;
  }

  obj(k: string): Fields | undefined {
    const v = pick(this.o, k);
    if (v === undefined || v === null) return undefined;
    return Fields.of(this.at(k), v);
  }

  strMap(k: string): Record<string, string> {
    const v = pick(this.o, k);
    if (v === undefined || v === null) return {};
    if (!isObj(v)) throw new EntryError(this.at(k), "want a map of strings");
    const out: Record<string, string> = {};
    for (const [key, val] of Object.entries(v)) {
      if (typeof val !== "string") throw new EntryError(`${this.at(k)}.${clip(key)}`, `want a string, got ${describeValue(val)}`);
      out[key] = val;
    }
    return out;
  }

  keys(): string[] {
    return Object.keys(this.o);
  }

  raw(k: string): unknown {
    return pick(this.o, k);
  }
}

const PROTOCOLS = ["tcp", "http", "http2", "grpc"] as const;
function protocol(f: Fields, k: string): Protocol | undefined {
  const p = f.str(k);
  if (p === undefined) return undefined;
  const found = PROTOCOLS.find((x) => x === p.toLowerCase());
  if (!found) throw new EntryError(`${f.where}.${k}`, `${describeValue(p)} is not one of ${PROTOCOLS.join(", ")}`);
  return found;
}

/**
 * `MeshGateway: {"Mode": "local"}`. An empty or absent Mode is Consul's default (unset: the next
 * level decides), not `none`.
 */
function meshGatewayMode(f: Fields): MeshGatewayMode | undefined {
  const mg = f.obj("MeshGateway");
  const m = mg?.str("Mode");
  if (m === undefined) return undefined;
  const found = MESH_GATEWAY_MODES.find((x) => x === m.toLowerCase());
  if (!found) throw new EntryError(`${mg!.where}.Mode`, `${describeValue(m)} is not one of ${MESH_GATEWAY_MODES.join(", ")} (or empty for the default)`);
  return found;
}

function upstreamSettings(f: Fields): UpstreamSettings {
  const limits = f.obj("Limits");
  const phc = f.obj("PassiveHealthCheck");
  const connectTimeoutMs = f.num("ConnectTimeoutMs");
  return {
    ...(connectTimeoutMs !== undefined ? { connectTimeoutMs } : {}),
    ...opt("meshGatewayMode", meshGatewayMode(f)),
    ...(limits
      ? {
          limits: {
            ...opt("maxConnections", limits.num("MaxConnections")),
            ...opt("maxPendingRequests", limits.num("MaxPendingRequests")),
            ...opt("maxConcurrentRequests", limits.num("MaxConcurrentRequests")),
          },
        }
      : {}),
    ...(phc
      ? {
          passiveHealthCheck: {
            ...opt("intervalMs", phc.duration("Interval")),
            ...opt("maxFailures", phc.num("MaxFailures")),
            ...opt("enforcingConsecutive5xx", phc.num("EnforcingConsecutive5xx")),
            ...opt("maxEjectionPercent", phc.num("MaxEjectionPercent")),
            ...opt("baseEjectionTimeMs", phc.duration("BaseEjectionTime")),
          },
        }
      : {}),
  };
}

/** `{ k: v }` when v is set, `{}` otherwise: exactOptionalPropertyTypes forbids `k: undefined`. */
function opt<K extends string, V>(k: K, v: V | undefined): Partial<Record<K, V>> {
  const out: Partial<Record<K, V>> = {};
  if (v !== undefined) out[k] = v;
  return out;
}

/**
 * An upstream's `Config` map as a Consul agent hands it over (service-defaults' UpstreamConfig
 * merged in): `connect_timeout_ms`, `limits`, `passive_health_check`, either key spelling.
 */
export function parseUpstreamSettings(raw: unknown, where: string): UpstreamSettings | undefined {
  if (raw === undefined || raw === null) return undefined;
  return upstreamSettings(Fields.of(where, raw));
}

function headerMutation(f: Fields | undefined): HeaderMutation | undefined {
  if (!f) return undefined;
  const lower = (m: Record<string, string>) => Object.fromEntries(Object.entries(m).map(([k, v]) => [k.toLowerCase(), v]));
  return { add: lower(f.strMap("Add")), set: lower(f.strMap("Set")), remove: f.strList("Remove").map((h) => h.toLowerCase()) };
}

/** A route's path match: a permission's, plus CaseInsensitive on PathExact and PathPrefix (Envoy's case_sensitive: false). */
function routePathMatch(f: Fields): PathMatch | undefined {
  const p = pathMatch(f);
  if (!f.bool("CaseInsensitive") || p === undefined) return p;
  if (p.kind === "exact" || p.kind === "prefix") return { ...p, caseInsensitive: true };
  throw new EntryError(f.at("CaseInsensitive"), "applies to PathExact and PathPrefix only (write the PathRegex case-insensitively, e.g. (?i))");
}

function pathMatch(f: Fields): PathMatch | undefined {
  const exact = f.str("PathExact");
  const prefix = f.str("PathPrefix");
  const regex = f.str("PathRegex");
  const set = [exact, prefix, regex].filter((x) => x !== undefined).length;
  if (set > 1) throw new EntryError(f.where, "set at most one of PathExact, PathPrefix, PathRegex");
  if (exact !== undefined) return { kind: "exact", value: exact };
  if (prefix !== undefined) return { kind: "prefix", value: prefix };
  if (regex !== undefined) return { kind: "regex", value: regex };
  return undefined;
}

/**
 * Header matchers: a service-router's (Consul's ServiceRouteHTTPMatchHeader) or, with `permission`,
 * an intention permission's (IntentionHTTPHeaderPermission, which adds Contains and IgnoreCase).
 */
function headerMatches(list: Fields[], keys: KeyCheck, permission: boolean): HeaderMatch[] {
  return list.map((h) => {
    keys(h, permission ? PERMISSION_HEADER_KEYS : ROUTE_HEADER_KEYS);
    const name = h.str("Name");
    if (!name) throw new EntryError(h.where, "Name is required");
    return {
      name: name.toLowerCase(),
      ...(h.bool("Present") ? { present: true } : {}),
      ...opt("exact", h.str("Exact")),
      ...opt("prefix", h.str("Prefix")),
      ...opt("suffix", h.str("Suffix")),
      ...(permission ? opt("contains", h.str("Contains")) : {}),
      ...opt("regex", h.str("Regex")),
      ...(h.bool("Invert") ? { invert: true } : {}),
      ...(permission && h.bool("IgnoreCase") ? { ignoreCase: true } : {}),
    };
  });
}

/** Consul's ServiceRouteHTTPMatchHeader. */
const ROUTE_HEADER_KEYS = ["Name", "Present", "Exact", "Prefix", "Suffix", "Regex", "Invert"] as const;
/** Consul's IntentionHTTPHeaderPermission. */
const PERMISSION_HEADER_KEYS = [...ROUTE_HEADER_KEYS, "Contains", "IgnoreCase"] as const;
/** Consul's IntentionHTTPPermission fields. */
const HTTP_PERMISSION_KEYS = ["PathExact", "PathPrefix", "PathRegex", "Header", "Methods"] as const;
/** Consul's ServiceRouteMatch and ServiceRouteHTTPMatch. */
const ROUTE_MATCH_KEYS = ["HTTP"] as const;
const ROUTE_HTTP_MATCH_KEYS = ["PathExact", "PathPrefix", "PathRegex", "CaseInsensitive", "Header", "QueryParam", "Methods"] as const;
/** Consul's ServiceRouteHTTPMatchQueryParam. */
const ROUTE_QUERY_KEYS = ["Name", "Present", "Exact", "Regex"] as const;

/** Throws EntryError for a key of `f` that is none of `known` (in any spelling pick accepts). */
type KeyCheck = (f: Fields, known: readonly string[]) => void;

/** Go's omitempty zero values: a field written with one of them says nothing. */
function isZeroValue(v: unknown): boolean {
  return v === null || v === false || v === "" || v === 0 || (Array.isArray(v) && v.length === 0) || (isObj(v) && Object.keys(v).length === 0);
}

/** Where an entry came from: a file meshproxy reads (strict, as `consul config write` is), or a Consul agent's answer. */
export type EntrySource = "file" | "wire";

function keyCheck(source: EntrySource): KeyCheck {
  return (f, known) => {
    for (const k of f.keys()) {
      if (known.some((c) => spellings(c).includes(k))) continue;
      // An agent newer than meshproxy may write a field it added with its zero value; any other
      // value is a condition meshproxy would not evaluate, and a permission read without it
      // allows (or fails to deny) what it was written to refuse.
      if (source === "wire" && isZeroValue(f.raw(k))) continue;
      throw new EntryError(f.at(k), `unknown key: meshproxy does not evaluate it, and a match read without it would match what it was written to exclude (known keys: ${known.join(", ")})`);
    }
  };
}

/**
 * An L7 intention's `Permissions` (Consul's IntentionPermission), in the key styles config entries
 * accept: `{Action, HTTP: {PathExact|PathPrefix|PathRegex, Methods, Header: [...]}}` or snake_case.
 * `where` names the list for messages, e.g. `intentions.json: intentions[2].permissions`.
 * A key meshproxy does not evaluate is an error, never ignored: a misspelt `path_prefx` would leave
 * an allow on every path, an `IgnoreCase` a deny that `ADMIN` passes. `source` "wire" (a Consul
 * agent's answer) also takes `JWT`, which the caller turns into a deny, and tolerates unknown
 * fields holding their zero value; "file" (intentions.json) refuses any unknown key, JWT included.
 */
export function parsePermissions(v: unknown, where: string, source: EntrySource = "file"): Permission[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new EntryError(where, "want an array");
  checkDepth(v, where);
  const keys = keyCheck(source);
  return v.map((x, i) => {
    const p = Fields.of(`${where}[${i}]`, x);
    if (source === "file" && p.raw("JWT") !== undefined) throw new EntryError(p.at("JWT"), "JWT requirements are not supported: meshproxy cannot verify tokens");
    keys(p, source === "wire" ? ["Action", "HTTP", "JWT"] : ["Action", "HTTP"]);
    const action = p.str("Action");
    if (action !== "allow" && action !== "deny") throw new EntryError(`${p.where}.Action`, `want "allow" or "deny", got ${describeValue(action ?? null)}`);
    // Consul requires the HTTP block (JWT-only permissions are not supported here); an empty one matches every request.
    const http = p.obj("HTTP");
    if (!http) throw new EntryError(`${p.where}.HTTP`, "is required (an empty {} matches every request)");
    keys(http, HTTP_PERMISSION_KEYS);
    const path = pathMatch(http);
    return {
      action,
      ...(path ? { path } : {}),
      headers: headerMatches(http.list("Header"), keys, true),
      methods: http.strList("Methods").map((m) => m.toUpperCase()),
    };
  });
}

const RETRY_ON: readonly RetryOn[] = ["5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream", "retriable-status-codes"];

/**
 * A route's Match is checked key by key as a permission is: a misspelt `PathPrefx` would leave a
 * match on every request, sending all of the service's traffic to the route's destination.
 */
function router(f: Fields, name: string, source: EntrySource): ServiceRouter {
  const keys = keyCheck(source);
  const routes = f.list("Routes").map((r) => {
    const match = r.obj("Match");
    if (match) keys(match, ROUTE_MATCH_KEYS);
    const http = match?.obj("HTTP");
    if (http) keys(http, ROUTE_HTTP_MATCH_KEYS);
    const d = r.obj("Destination") ?? Fields.of(`${r.where}.Destination`, {});
    const retryOn = d.strList("RetryOn").map((x) => {
      const found = RETRY_ON.find((c) => c === x);
      if (!found) throw new EntryError(`${d.where}.RetryOn`, `${describeValue(x)} is not one of ${RETRY_ON.join(", ")}`);
      return found;
    });
    const reqH = headerMutation(d.obj("RequestHeaders"));
    const resH = headerMutation(d.obj("ResponseHeaders"));
    const path = http ? routePathMatch(http) : undefined;
    const destination: RouteDestination = {
      ...opt("service", d.str("Service")),
      ...opt("serviceSubset", d.str("ServiceSubset")),
      ...opt("prefixRewrite", d.str("PrefixRewrite")),
      ...opt("requestTimeoutMs", d.duration("RequestTimeout")),
      ...opt("idleTimeoutMs", d.duration("IdleTimeout")),
      ...opt("numRetries", d.num("NumRetries")),
      ...(d.bool("RetryOnConnectFailure") ? { retryOnConnectFailure: true } : {}),
      retryOnStatusCodes: d.numList("RetryOnStatusCodes"),
      retryOn,
      ...(reqH ? { requestHeaders: reqH } : {}),
      ...(resH ? { responseHeaders: resH } : {}),
    };
    if (destination.prefixRewrite !== undefined && path && path.kind !== "prefix") {
      throw new EntryError(`${d.where}.PrefixRewrite`, "needs a PathPrefix match (or no path match)");
    }
    return {
      ...(path ? { path } : {}),
      headers: http ? headerMatches(http.list("Header"), keys, false) : [],
      queryParams: http
        ? http.list("QueryParam").map((q) => {
            keys(q, ROUTE_QUERY_KEYS);
            const qn = q.str("Name");
            if (!qn) throw new EntryError(q.where, "Name is required");
            return { name: qn, ...(q.bool("Present") ? { present: true } : {}), ...opt("exact", q.str("Exact")), ...opt("regex", q.str("Regex")) };
          })
        : [],
      methods: http ? http.strList("Methods").map((m) => m.toUpperCase()) : [],
      destination,
    };
  });
  return { kind: "service-router", name, routes };
}

function splitter(f: Fields, name: string): ServiceSplitter {
  const splits = f.list("Splits").map((s) => {
    const weight = s.num("Weight") ?? 0;
    if (weight > 100) throw new EntryError(`${s.where}.Weight`, `${weight} is over 100`);
    const reqH = headerMutation(s.obj("RequestHeaders"));
    const resH = headerMutation(s.obj("ResponseHeaders"));
    return {
      weight,
      ...opt("service", s.str("Service")),
      ...opt("serviceSubset", s.str("ServiceSubset")),
      ...(reqH ? { requestHeaders: reqH } : {}),
      ...(resH ? { responseHeaders: resH } : {}),
    };
  });
  if (splits.length === 0) throw new EntryError(`${f.where}.Splits`, "needs at least one split");
  // Consul scales weights to 0.01% units and requires the sum to be exactly 100%.
  const total = splits.reduce((n, s) => n + Math.round(s.weight * 100), 0);
  if (total !== 10_000) throw new EntryError(`${f.where}.Splits`, `the sum of all split weights must be 100, got ${total / 100}`);
  const seen = new Set<string>();
  for (const s of splits) {
    const key = `${s.service ?? name}/${s.serviceSubset ?? ""}`;
    if (seen.has(key)) throw new EntryError(`${f.where}.Splits`, `duplicate destination ${key}`);
    seen.add(key);
  }
  return { kind: "service-splitter", name, splits };
}

/** A datacenter ends up in SNIs, SPIFFE IDs and catalog paths: a simple name or an error. */
function datacenterName(f: Fields, k: string, v: string | undefined): string | undefined {
  if (v !== undefined && !isValidServiceName(v)) throw new EntryError(f.at(k), `${describeValue(v)} is not a datacenter name (letters, digits, - _), e.g. "dc2"`);
  return v;
}

const LB: readonly LbPolicy[] = ["round_robin", "least_request", "random", "ring_hash", "maglev", "peak_ewma"];

function resolver(f: Fields, name: string): ServiceResolver {
  const subsets: Record<string, { filter: string; onlyPassing: boolean }> = {};
  const sf = f.obj("Subsets");
  for (const k of sf?.keys() ?? []) {
    // A subset written as null is an error, not a crash; at() keeps a huge key short.
    const s = Fields.of(sf!.at(k), sf!.raw(k));
    const filter = s.str("Filter") ?? "";
    // Checked here, as Consul checks it when the entry is written: a Filter first compiled when an
    // upstream (a Connect-native app's, added later) routes to the subset would fail every build
    // from then on, and no other change (intentions, a renewed leaf) would reach the proxy.
    if (filter !== "") {
      try {
        compileFilter(filter);
      } catch (e) {
        if (e instanceof FilterError) throw new EntryError(s.at("Filter"), e.message);
        throw e;
      }
    }
    subsets[k] = { filter, onlyPassing: s.bool("OnlyPassing") };
  }
  const failover: Record<string, FailoverTarget[]> = {};
  const ff = f.obj("Failover");
  for (const k of ff?.keys() ?? []) {
    const x = Fields.of(ff!.at(k), ff!.raw(k));
    const one = (t: Fields): FailoverTarget => ({ ...opt("service", t.str("Service")), ...opt("serviceSubset", t.str("ServiceSubset")), ...opt("datacenter", datacenterName(t, "Datacenter", t.str("Datacenter"))) });
    const targets = x.list("Targets").map(one);
    // Consul's Failover: Targets, or Service/ServiceSubset in each of Datacenters, or one of them here.
    const dcs = x.strList("Datacenters").map((d, i) => datacenterName(x, `Datacenters[${i}]`, d)!);
    if (targets.length > 0 && dcs.length > 0) throw new EntryError(x.where, "set Targets or Datacenters, not both");
    const here = one(x);
    failover[k] = targets.length > 0 ? targets : dcs.length > 0 ? dcs.map((datacenter) => ({ ...here, datacenter })) : [here];
  }
  const red = f.obj("Redirect");
  const lb = f.obj("LoadBalancer");
  let loadBalancer: ServiceResolver["loadBalancer"];
  if (lb) {
    const p = lb.str("Policy") ?? "round_robin";
    const policy = LB.find((x) => x === p);
    if (!policy) throw new EntryError(`${lb.where}.Policy`, `${describeValue(p)} is not one of ${LB.join(", ")}`);
    const rh = lb.obj("RingHashConfig");
    const lr = lb.obj("LeastRequestConfig");
    const hashPolicies: HashPolicy[] = lb.list("HashPolicies").map((h) => {
      const terminal = h.bool("Terminal");
      if (h.bool("SourceIP")) return { field: "source_ip", terminal };
      const field = h.str("Field");
      const value = h.str("FieldValue");
      if ((field === "header" || field === "cookie" || field === "query_parameter") && value) return { field, name: field === "header" ? value.toLowerCase() : value, terminal };
      throw new EntryError(h.where, `want Field header|cookie|query_parameter with a FieldValue, or SourceIP: true`);
    });
    loadBalancer = {
      policy,
      ...opt("choiceCount", lr?.num("ChoiceCount")),
      ...(rh ? { ringSize: { ...opt("min", rh.num("MinimumRingSize")), ...opt("max", rh.num("MaximumRingSize")) } } : {}),
      hashPolicies,
    };
  }
  return {
    kind: "service-resolver",
    name,
    ...opt("defaultSubset", f.str("DefaultSubset")),
    subsets,
    ...(red ? { redirect: { ...opt("service", red.str("Service")), ...opt("serviceSubset", red.str("ServiceSubset")), ...opt("datacenter", datacenterName(red, "Datacenter", red.str("Datacenter"))) } } : {}),
    failover,
    ...opt("connectTimeoutMs", f.duration("ConnectTimeout")),
    ...opt("requestTimeoutMs", f.duration("RequestTimeout")),
    ...(loadBalancer ? { loadBalancer } : {}),
  };
}

/**
 * Parses one config entry; `where` names the file for messages. `source` "wire" (an entry from a
 * Consul agent, which validated it) tolerates unknown keys in a route's match that hold their zero
 * value; "file" refuses them, as `consul config write` does.
 */
export function parseEntry(v: unknown, where: string, source: EntrySource = "file"): ConfigEntry {
  const f = Fields.of(where, v);
  checkDepth(v, where);
  const kind = f.str("Kind");
  const name = f.str("Name");
  if (!kind) throw new EntryError(where, `Kind is required (one of ${ENTRY_KINDS.join(", ")})`);
  if (!name) throw new EntryError(where, "Name is required");
  switch (kind) {
    case "service-defaults": {
      const uc = f.obj("UpstreamConfig");
      const defaults = uc?.obj("Defaults");
      return {
        kind,
        name,
        ...opt("protocol", protocol(f, "Protocol")),
        ...opt("localConnectTimeoutMs", f.ms("LocalConnectTimeoutMs")),
        ...opt("localRequestTimeoutMs", f.ms("LocalRequestTimeoutMs")),
        ...(defaults ? { upstreamDefaults: upstreamSettings(defaults) } : {}),
        upstreamOverrides: (uc?.list("Overrides") ?? []).map((o) => {
          const n = o.str("Name");
          if (!n) throw new EntryError(o.where, "Name is required in an override");
          return { name: n, ...upstreamSettings(o) };
        }),
        ...opt("meshGatewayMode", meshGatewayMode(f)),
      };
    }
    case "proxy-defaults": {
      if (name !== "global") throw new EntryError(`${where}.Name`, `proxy-defaults must be named "global"`);
      const cfg = f.obj("Config");
      return { kind, name: "global", ...opt("protocol", cfg ? protocol(cfg, "protocol") : undefined), ...opt("meshGatewayMode", meshGatewayMode(f)) };
    }
    case "service-router":
      return router(f, name, source);
    case "service-splitter":
      return splitter(f, name);
    case "service-resolver":
      return resolver(f, name);
    default:
      throw new EntryError(`${where}.Kind`, `${describeValue(kind)} is not supported (one of ${ENTRY_KINDS.join(", ")})`);
  }
}
