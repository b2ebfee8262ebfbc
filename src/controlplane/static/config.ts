// The static control plane's file: what the proxy is, where its certificates are, its listeners,
// its upstreams with fixed endpoints, and its intentions. Parsing is strict on purpose: the file
// is hand-written, so a typo in a key or a value must fail loudly and name the field, not
// silently fall back to a default. Paths in the file are relative to the file's directory.
import { isIP } from "node:net";
import { dirname, resolve } from "node:path";
import { DEFAULTS, type Endpoint, type HostPort, type Intention, type IntentionAction, type IntentionPolicy, type Protocol, type PublicListener } from "../../config/snapshot.js";
import { isValidServiceName } from "../../config/validate.js";
import { jsonErrorWhere } from "../json-error.js";

export interface StaticUpstream {
  /** Destination service name; also the cluster name. */
  readonly name: string;
  readonly bind: HostPort;
  /** The upstream's datacenter; the file's `datacenter` when not given. */
  readonly datacenter: string;
  readonly connectTimeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly endpoints: readonly Endpoint[];
  /** Overrides the Consul-format SNI, which needs the trust domain and so is computed later. */
  readonly sni?: string;
  /** Overrides the expected server SPIFFE ID (Consul format by default). */
  readonly spiffeId?: string;
}

export interface StaticConfig {
  readonly service: string;
  readonly datacenter: string;
  /** Null: take it from the leaf certificate's SPIFFE ID. */
  readonly trustDomain: string | null;
  /** Absolute (or cwd-relative) paths, already resolved against the file's directory. */
  readonly identity: { readonly certFile: string; readonly keyFile: string };
  readonly rootsFiles: readonly string[];
  readonly publicListener: PublicListener | null;
  readonly upstreams: readonly StaticUpstream[];
  readonly intentions: IntentionPolicy;
}

/** A bad config file: which file, which field (as a JSON path), and what a good value is. */
export class StaticConfigError extends Error {
  constructor(
    readonly file: string,
    /** JSON path such as `upstreams[1].bind`; empty for the whole document. */
    readonly path: string,
    readonly reason: string,
  ) {
    super(path ? `${file}: ${path}: ${reason}` : `${file}: ${reason}`);
    this.name = "StaticConfigError";
  }
}

const TOP_KEYS = ["service", "datacenter", "trust_domain", "identity", "roots_files", "public_listener", "upstreams", "intentions"] as const;
const IDENTITY_KEYS = ["cert_file", "key_file"] as const;
const PUBLIC_KEYS = ["bind", "local_app", "protocol", "handshake_timeout_ms", "local_connect_timeout_ms", "idle_timeout_ms"] as const;
const UPSTREAM_KEYS = ["name", "bind", "datacenter", "connect_timeout_ms", "idle_timeout_ms", "endpoints", "sni", "spiffe_id"] as const;
const ENDPOINT_KEYS = ["address", "port", "healthy", "meta"] as const;
const INTENTIONS_KEYS = ["default_action", "intentions"] as const;
const INTENTION_KEYS = ["source", "destination", "action", "description"] as const;
const PROTOCOLS: readonly Protocol[] = ["tcp", "http", "http2", "grpc"];
/** Timers above this fire at once in Node (TimeoutOverflowWarning), so a huge timeout would mean none. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;
const TRUST_DOMAIN = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/;
const HOST_NAME = /^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?)*\.?$/;

type JsonObject = Record<string, unknown>;

function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isProtocol(v: unknown): v is Protocol {
  return PROTOCOLS.some((p) => p === v);
}

function isAction(v: unknown): v is IntentionAction {
  return v === "allow" || v === "deny";
}

/** A short rendering of a bad value for messages: `"127.0.0.1:99999"`, `42`, `an object`. */
function show(v: unknown): string {
  if (Array.isArray(v)) return "an array";
  if (isObject(v)) return "an object";
  return clip(JSON.stringify(v) ?? String(v));
}

/** A string from the file, shortened for a message. */
function clip(s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

function child(path: string, key: string): string {
  return path ? `${path}.${clip(key)}` : clip(key);
}

/** The closest known key within two edits, to turn "unknown key" into "did you mean". */
function suggest(key: string, known: readonly string[]): string | null {
  let best: string | null = null;
  let bestD = 3;
  for (const k of known) {
    // The distance is at least the difference in length; skipping keeps a huge key cheap.
    if (Math.abs(key.length - k.length) >= bestD) continue;
    const d = editDistance(key.toLowerCase(), k);
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur.push(Math.min((prev[j] ?? 0) + 1, (cur[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1)));
    }
    prev = cur;
  }
  return prev[b.length] ?? 0;
}

/** Parsing state: the file name for messages and its directory for relative paths. */
class Parser {
  private readonly dir: string;

  constructor(private readonly name: string) {
    this.dir = dirname(name);
  }

  fail(path: string, reason: string): never {
    throw new StaticConfigError(this.name, path, reason);
  }

  bad(path: string, value: unknown, want: string): never {
    this.fail(path, `${show(value)}: ${want}`);
  }

  object(path: string, v: unknown, known: readonly string[], what: string): JsonObject {
    if (!isObject(v)) this.bad(path, v, `must be an object (${what})`);
    for (const key of Object.keys(v)) {
      if (known.includes(key)) continue;
      const near = suggest(key, known);
      this.fail(child(path, key), `unknown key${near ? `; did you mean "${near}"?` : ""} (known keys: ${known.join(", ")})`);
    }
    return v;
  }

  required(o: JsonObject, path: string, key: string, what: string): unknown {
    const v = o[key];
    if (v === undefined || v === null) this.fail(child(path, key), `missing; want ${what}`);
    return v;
  }

  string(path: string, v: unknown, what: string): string {
    if (typeof v !== "string" || v.trim() === "") this.bad(path, v, `must be a non-empty string (${what})`);
    return v;
  }

  serviceName(path: string, v: unknown): string {
    const s = this.string(path, v, 'a service name such as "web"');
    if (!isValidServiceName(s)) this.bad(path, v, "not a valid service name (letters, digits, - _ . ; at most 64 characters)");
    return s;
  }

  datacenter(path: string, v: unknown): string {
    const s = this.string(path, v, 'a datacenter name such as "dc1"');
    if (!isValidServiceName(s)) this.bad(path, v, 'not a valid datacenter name (letters, digits, - _ . ; e.g. "dc1")');
    return s;
  }

  filePath(path: string, v: unknown, what: string): string {
    return resolve(this.dir, this.string(path, v, `${what}; relative paths are relative to the config file's directory`));
  }

  timeoutMs(path: string, v: unknown, dflt: number): number {
    if (v === undefined) return dflt;
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0 || v > MAX_TIMEOUT_MS) {
      this.bad(path, v, `must be a whole number of milliseconds from 1 to ${MAX_TIMEOUT_MS} (default ${dflt})`);
    }
    return v;
  }

  host(path: string, raw: unknown, host: string): string {
    if (isIP(host) !== 0 || HOST_NAME.test(host)) return host;
    this.bad(path, raw, `${show(host)} is not an IP address or host name`);
  }

  port(path: string, raw: unknown, v: unknown, allowZero: boolean): number {
    const range = allowZero ? "0-65535; 0 picks a free port" : "1-65535";
    let n: number;
    if (typeof v === "number") n = v;
    else if (typeof v === "string" && /^\d+$/.test(v)) n = Number(v);
    else this.bad(path, raw, `port ${show(v)} is not a number (${range})`);
    if (!Number.isInteger(n) || n < (allowZero ? 0 : 1) || n > 65535) this.bad(path, raw, `port out of range (${range})`);
    return n;
  }

  /** `host:port`, `[v6]:port`, or `:port` (the default host), as the CLI flags take them. */
  hostPort(path: string, v: unknown, defaultHost: string | null, allowZero: boolean): HostPort {
    const example = defaultHost === null ? '"10.0.0.5:21000"' : `"${defaultHost}:8080"`;
    if (typeof v !== "string") this.bad(path, v, `must be a "host:port" string such as ${example}`);
    const i = v.lastIndexOf(":");
    if (i < 0) this.bad(path, v, `want host:port, e.g. ${example}`);
    let host = v.slice(0, i);
    if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
    else if (host.includes(":")) this.bad(path, v, "an IPv6 address needs brackets: [::1]:8080");
    if (host === "") {
      if (defaultHost === null) this.bad(path, v, `the host is missing, e.g. ${example}`);
      host = defaultHost;
    }
    return { host: this.host(path, v, host), port: this.port(path, v, v.slice(i + 1), allowZero) };
  }

  parse(text: string): StaticConfig {
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (e) {
      this.fail("", `not valid JSON (${jsonErrorWhere(text, e)})`);
    }
    const o = this.object("", raw, TOP_KEYS, "the static proxy configuration");
    const service = this.serviceName("service", this.required(o, "", "service", 'the name of the service this proxy represents, e.g. "web"'));
    const datacenter = o["datacenter"] === undefined ? DEFAULTS.datacenter : this.datacenter("datacenter", o["datacenter"]);
    let trustDomain: string | null = null;
    if (o["trust_domain"] !== undefined) {
      const td = this.string("trust_domain", o["trust_domain"], 'a trust domain such as "7f3c...e1.consul"').toLowerCase();
      if (!TRUST_DOMAIN.test(td)) this.bad("trust_domain", o["trust_domain"], "not a DNS-like name (leave it out to use the one in the leaf certificate's SPIFFE ID)");
      trustDomain = td;
    }
    const idRaw = this.object("identity", this.required(o, "", "identity", '{"cert_file": ..., "key_file": ...}'), IDENTITY_KEYS, "the leaf certificate and key files");
    const identity = {
      certFile: this.filePath("identity.cert_file", this.required(idRaw, "identity", "cert_file", "the path of the leaf certificate PEM"), "the leaf certificate PEM, leaf first then intermediates"),
      keyFile: this.filePath("identity.key_file", this.required(idRaw, "identity", "key_file", "the path of the leaf's private key PEM"), "the leaf's private key PEM"),
    };
    const rootsRaw = this.required(o, "", "roots_files", 'a list of CA root PEM files, e.g. ["certs/root.pem"]');
    if (!Array.isArray(rootsRaw) || rootsRaw.length === 0) this.bad("roots_files", rootsRaw, 'must be a non-empty list of CA root PEM files, e.g. ["certs/root.pem"]');
    const rootsFiles = rootsRaw.map((v: unknown, i) => this.filePath(`roots_files[${i}]`, v, "a CA root PEM file"));
    const publicListener = o["public_listener"] === undefined ? null : this.publicListener(o["public_listener"]);
    const upstreams = this.upstreams(o["upstreams"], datacenter);
    const intentions = this.intentions(o["intentions"]);
    return { service, datacenter, trustDomain, identity, rootsFiles, publicListener, upstreams, intentions };
  }

  private publicListener(v: unknown): PublicListener {
    const p = "public_listener";
    const o = this.object(p, v, PUBLIC_KEYS, "the inbound mTLS listener");
    const protocol = o["protocol"] ?? "tcp";
    if (!isProtocol(protocol)) this.bad(`${p}.protocol`, protocol, `must be one of ${PROTOCOLS.join(", ")}`);
    return {
      bind: this.hostPort(`${p}.bind`, this.required(o, p, "bind", 'the mTLS listener address, e.g. "0.0.0.0:21000"'), "0.0.0.0", true),
      localApp: this.hostPort(`${p}.local_app`, this.required(o, p, "local_app", 'the local app\'s address, e.g. "127.0.0.1:8080"'), "127.0.0.1", false),
      protocol,
      handshakeTimeoutMs: this.timeoutMs(`${p}.handshake_timeout_ms`, o["handshake_timeout_ms"], DEFAULTS.handshakeTimeoutMs),
      localConnectTimeoutMs: this.timeoutMs(`${p}.local_connect_timeout_ms`, o["local_connect_timeout_ms"], DEFAULTS.localConnectTimeoutMs),
      idleTimeoutMs: this.timeoutMs(`${p}.idle_timeout_ms`, o["idle_timeout_ms"], DEFAULTS.idleTimeoutMs),
    };
  }

  private upstreams(v: unknown, datacenter: string): StaticUpstream[] {
    if (v === undefined) return [];
    if (!Array.isArray(v)) this.bad("upstreams", v, "must be a list of upstream objects");
    const names = new Map<string, number>();
    const binds = new Map<string, number>();
    return v.map((item: unknown, i) => {
      const p = `upstreams[${i}]`;
      const u = this.upstream(p, item, datacenter);
      const sameName = names.get(u.name);
      if (sameName !== undefined) this.bad(`${p}.name`, u.name, `upstreams[${sameName}] has the same name; each destination service is listed once`);
      names.set(u.name, i);
      const key = `${u.bind.host}:${u.bind.port}`;
      const sameBind = binds.get(key);
      if (u.bind.port !== 0 && sameBind !== undefined) this.bad(`${p}.bind`, key, `upstreams[${sameBind}] binds the same address; give each upstream its own port`);
      binds.set(key, i);
      return u;
    });
  }

  private upstream(p: string, v: unknown, datacenter: string): StaticUpstream {
    const o = this.object(p, v, UPSTREAM_KEYS, "an upstream");
    const name = this.serviceName(`${p}.name`, this.required(o, p, "name", 'the destination service name, e.g. "db"'));
    const epRaw = this.required(o, p, "endpoints", 'a list of "host:port" or {"address", "port"} entries');
    if (!Array.isArray(epRaw)) this.bad(`${p}.endpoints`, epRaw, 'must be a list of "host:port" strings or {"address", "port"} objects');
    const endpoints = epRaw.map((e: unknown, j) => this.endpoint(`${p}.endpoints[${j}]`, e));
    const seen = new Map<string, number>();
    endpoints.forEach((e, j) => {
      const dup = seen.get(e.id);
      if (dup !== undefined) this.bad(`${p}.endpoints[${j}]`, e.id, `the same address as endpoints[${dup}]; list each instance once`);
      seen.set(e.id, j);
    });
    const u: StaticUpstream = {
      name,
      bind: this.hostPort(`${p}.bind`, this.required(o, p, "bind", 'the local address the app connects to, e.g. "127.0.0.1:8181"'), "127.0.0.1", true),
      datacenter: o["datacenter"] === undefined ? datacenter : this.datacenter(`${p}.datacenter`, o["datacenter"]),
      connectTimeoutMs: this.timeoutMs(`${p}.connect_timeout_ms`, o["connect_timeout_ms"], DEFAULTS.upstreamConnectTimeoutMs),
      idleTimeoutMs: this.timeoutMs(`${p}.idle_timeout_ms`, o["idle_timeout_ms"], DEFAULTS.idleTimeoutMs),
      endpoints,
    };
    const sni = o["sni"] === undefined ? undefined : this.string(`${p}.sni`, o["sni"], "the TLS server name to send");
    const spiffeId = o["spiffe_id"] === undefined ? undefined : this.spiffeId(`${p}.spiffe_id`, o["spiffe_id"]);
    return { ...u, ...(sni !== undefined ? { sni } : {}), ...(spiffeId !== undefined ? { spiffeId } : {}) };
  }

  private spiffeId(path: string, v: unknown): string {
    const s = this.string(path, v, "the SPIFFE ID the server must present");
    if (!/^spiffe:\/\/[^/\s]+\/\S*$/i.test(s)) this.bad(path, v, 'must be a spiffe:// URI such as "spiffe://<trust-domain>/ns/default/dc/dc1/svc/db"');
    return s;
  }

  private endpoint(p: string, v: unknown): Endpoint {
    if (typeof v === "string") {
      const hp = this.hostPort(p, v, null, false);
      return { ...hp, healthy: true, id: endpointId(hp), meta: {} };
    }
    const o = this.object(p, v, ENDPOINT_KEYS, 'an endpoint: "host:port" or {"address", "port", "healthy", "meta"}');
    const address = this.string(`${p}.address`, this.required(o, p, "address", 'an IP address or host name, e.g. "10.0.0.6"'), "an IP address or host name");
    const host = this.host(`${p}.address`, address, address);
    const portRaw = this.required(o, p, "port", "the instance's public listener port, e.g. 21000");
    if (typeof portRaw !== "number") this.bad(`${p}.port`, portRaw, "must be a number from 1 to 65535");
    const port = this.port(`${p}.port`, portRaw, portRaw, false);
    const healthy = o["healthy"] ?? true;
    if (typeof healthy !== "boolean") this.bad(`${p}.healthy`, healthy, "must be true or false (default true)");
    const metaRaw = o["meta"] ?? {};
    if (!isObject(metaRaw)) this.bad(`${p}.meta`, metaRaw, 'must be an object of strings, e.g. {"version": "v2"}');
    const meta: Record<string, string> = {};
    for (const [k, mv] of Object.entries(metaRaw)) {
      if (typeof mv !== "string") this.bad(child(`${p}.meta`, k), mv, "meta values must be strings");
      meta[k] = mv;
    }
    return { host, port, healthy, id: endpointId({ host, port }), meta };
  }

  private intentions(v: unknown): IntentionPolicy {
    const p = "intentions";
    if (v === undefined) return { defaultAction: "allow", intentions: [] };
    const o = this.object(p, v, INTENTIONS_KEYS, '{"default_action": ..., "intentions": [...]}');
    const def = o["default_action"] ?? "allow";
    if (!isAction(def)) this.bad(`${p}.default_action`, def, 'must be "allow" or "deny" (default "allow")');
    const list = o["intentions"] ?? [];
    if (!Array.isArray(list)) this.bad(`${p}.intentions`, list, 'must be a list of {"source", "destination", "action"} objects');
    const seen = new Map<string, number>();
    const intentions = list.map((item: unknown, i): Intention => {
      const ip = `${p}.intentions[${i}]`;
      const it = this.object(ip, item, INTENTION_KEYS, 'an intention: {"source", "destination", "action"}');
      const side = (key: "source" | "destination"): string => {
        const s = this.required(it, ip, key, 'a service name or "*"');
        if (s === "*") return s;
        if (typeof s !== "string" || !isValidServiceName(s)) this.bad(`${ip}.${key}`, s, 'must be a service name or "*"');
        return s;
      };
      const source = side("source");
      const destination = side("destination");
      const action = this.required(it, ip, "action", '"allow" or "deny"');
      if (!isAction(action)) this.bad(`${ip}.action`, action, 'must be "allow" or "deny"');
      const pair = `${source} => ${destination}`;
      const dup = seen.get(pair);
      if (dup !== undefined) this.fail(ip, `a second intention for ${pair} (the first is intentions.intentions[${dup}]); keep one`);
      seen.set(pair, i);
      const description = it["description"];
      if (description === undefined) return { source, destination, action };
      if (typeof description !== "string") this.bad(`${ip}.description`, description, "must be a string");
      return { source, destination, action, description };
    });
    return { defaultAction: def, intentions };
  }
}

function endpointId(hp: HostPort): string {
  return hp.host.includes(":") ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

/** Parses the static config file. Throws StaticConfigError naming the bad field and what a good value is. */
export function parseStaticConfig(text: string, file: string): StaticConfig {
  return new Parser(file).parse(text);
}
