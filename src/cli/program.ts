// The command line, with Consul's built-in proxy flags (single or double dash) and our own.
// Commander parses; this file turns its values into typed options and validates them.
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { Command, CommanderError, Option } from "commander";
import { goStyleArgv, parseBool, parseHostPort, parseUpstream, UsageError } from "./args.js";
import { parseLevel, parseLogDestination, type Level, type LogDestination } from "../telemetry/log.js";
import { parseDurationMs } from "../config/duration.js";
import { isValidServiceName } from "../config/validate.js";
import { defaultDataDir } from "../controlplane/dev/state.js";
import { DEFAULTS, type HostPort } from "../config/snapshot.js";
import type { ProxyRequest } from "../controlplane/controlplane.js";
import type { AgentTlsOptions } from "../controlplane/consul/client.js";
import { sslVerifyFromEnv, tokenSource } from "../controlplane/consul/env.js";
import { MESH_GATEWAY_MODES, type MeshGatewayMode } from "../controlplane/chain/entries.js";
import { parseAccessLogTarget, type AccessLogTarget } from "../telemetry/access-log.js";
import type { ListenerLimits } from "../tcp/admission.js";
import { CANARY_DEFAULTS, toCanaryCommand, type CanaryCommand, type RawCanaryOptions } from "./canary-args.js";

export interface ConsulSettings {
  readonly httpAddr: string;
  readonly token: string | undefined;
  /** Where the token came from, named when the agent answers 403. */
  readonly tokenSource: string | undefined;
  readonly datacenter: string | undefined;
  readonly register: boolean;
  readonly registerId: string | undefined;
  readonly tls: AgentTlsOptions;
}

export interface GatewaySettings {
  readonly kind: "mesh";
  /** Where it binds: -listen, else -address (as Consul's -address both binds and advertises). */
  readonly listen: HostPort;
  /** -address: the LAN address registered (default: the bound one). */
  readonly address: HostPort | undefined;
  /** -wan-address: what other datacenters' gateways dial (default: the LAN address). */
  readonly wanAddress: HostPort | undefined;
  /** Register as a mesh-gateway: always in the dev catalog; with a Consul agent, with -register. */
  readonly register: boolean;
}

export interface ProxyCommand {
  readonly request: ProxyRequest;
  readonly dataDir: string;
  readonly consul: ConsulSettings | null;
  /** Static config file; when set, the file (not flags) says what the proxy is. */
  readonly configFile: string | undefined;
  readonly sidecarFor: string | undefined;
  readonly admin: HostPort | null;
  /** False when -admin-addr was left at its default: a taken default port is not fatal. */
  readonly adminExplicit: boolean;
  readonly logLevel: Level;
  readonly logJson: boolean;
  /** -log-dest: the stream log lines go to (default stderr). */
  readonly logDest: LogDestination;
  readonly drainTimeoutMs: number;
  /** -metrics-addr; null: none, unless Consul's Proxy.Config names one (envoy_prometheus_bind_addr). */
  readonly metrics: HostPort | null;
  /** -app-metrics-url: the app's metrics, merged into the proxy's at each scrape. */
  readonly appMetricsUrl: string | undefined;
  /** -tracing-endpoint and -tracing-sample-rate; null: tracing off. */
  readonly tracing: { readonly endpoint: string; readonly sampleRate: number } | null;
  readonly accessLog: AccessLogTarget;
  /** -max-connections and -max-tls-handshakes as given; the rest default from the fd limit. */
  readonly limits: Partial<ListenerLimits>;
  /** -datacenter: with the dev control plane, this proxy's own datacenter (default: the CA config's, dc1). */
  readonly datacenter: string | undefined;
  /** -gateway mesh: run a mesh gateway on -listen instead of a sidecar. */
  readonly gateway: GatewaySettings | null;
  /** -concurrency: event loops (worker processes) serving the listeners; 1 is one process, no workers. */
  readonly concurrency: number;
}

interface RawProxyOptions {
  service?: string;
  upstream: string[];
  meta: string[];
  listen?: string;
  serviceAddr?: string;
  proxyId?: string;
  sidecarFor?: string;
  httpAddr?: string;
  configFile?: string;
  token?: string;
  tokenFile?: string;
  logLevel: string;
  logJson: boolean;
  logDest: string;
  dataDir: string;
  adminAddr: string;
  drainTimeout: string;
  metricsAddr?: string;
  appMetricsUrl?: string;
  tracingEndpoint?: string;
  tracingSampleRate: string;
  accessLog: string;
  maxConnections?: string;
  maxTlsHandshakes?: string;
  register: boolean;
  registerId?: string;
  datacenter?: string;
  caFile?: string;
  caPath?: string;
  clientCert?: string;
  clientKey?: string;
  tlsServerName?: string;
  gateway?: string;
  address?: string;
  wanAddress?: string;
  meshGatewayMode?: string;
  concurrency: string;
}

function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

/** Turns commander's values into a validated ProxyCommand, or throws a UsageError. */
export function toProxyCommand(o: RawProxyOptions, adminExplicit: boolean): ProxyCommand {
  const logLevel = parseLevel(o.logLevel);
  if (!logLevel) throw new UsageError(`-log-level "${o.logLevel}": want trace, debug, info, warn or error`);
  const logDest = parseLogDestination(o.logDest);
  if (!logDest) throw new UsageError(`-log-dest "${o.logDest}": want stderr or stdout (a file is the runtime's or journald's job)`);
  const consul: ConsulSettings | null = o.httpAddr
    ? {
        httpAddr: o.httpAddr,
        token: readToken(o),
        tokenSource: tokenSource(o),
        datacenter: o.datacenter,
        register: o.register,
        registerId: o.registerId,
        tls: {
          ...(o.caFile ? { caFile: o.caFile } : {}),
          ...(o.caPath ? { caPath: o.caPath } : {}),
          ...(o.clientCert ? { clientCert: o.clientCert } : {}),
          ...(o.clientKey ? { clientKey: o.clientKey } : {}),
          ...(o.tlsServerName ? { serverName: o.tlsServerName } : {}),
          verify: sslVerifyFromEnv(),
        },
      }
    : null;
  if (o.configFile !== undefined) checkConfigFileAlone(o);
  if (o.datacenter !== undefined && !isValidServiceName(o.datacenter)) throw new UsageError(`-datacenter "${o.datacenter}": not a datacenter name (letters, digits, - _), e.g. dc2`);
  const gateway = o.gateway === undefined ? null : checkGateway(o, consul !== null);
  if (gateway === null && (o.address !== undefined || o.wanAddress !== undefined)) throw new UsageError(`${o.address !== undefined ? "-address" : "-wan-address"} is a mesh gateway's registered address: use it with -gateway mesh (a sidecar's is -listen)`);
  if (o.register && gateway === null && !(o.service && o.listen)) throw new UsageError("-register needs -service and -listen (it registers the public listener)");
  if (gateway === null && o.configFile === undefined && !o.service && !o.proxyId && !o.sidecarFor) throw new UsageError("-service or -proxy-id must be specified so that the proxy knows what service it represents");
  if (!consul && o.sidecarFor) throw new UsageError("-sidecar-for reads the proxy registration from a Consul agent: give -http-addr or CONSUL_HTTP_ADDR");
  if (gateway === null && !consul && !o.service && o.configFile === undefined) throw new UsageError("-proxy-id without -service reads the proxy registration from a Consul agent: give -http-addr or CONSUL_HTTP_ADDR, or use -service");
  if (o.service && !isValidServiceName(o.service)) throw new UsageError(`-service "${o.service}": not a valid service name (letters, digits, - _ .)`);
  if (gateway === null && o.listen && !o.serviceAddr) throw new UsageError("-listen requires -service-addr (the local app's host:port that inbound connections are forwarded to)");
  if (o.serviceAddr && !o.listen) throw new UsageError("-service-addr needs -listen (the public mTLS listener's host:port)");
  if (o.register && !consul) throw new UsageError("-register registers the proxy in a Consul agent: give -http-addr or CONSUL_HTTP_ADDR (the dev control plane registers on its own)");
  const upstreams = o.upstream.map((u) => parseUpstream(u));
  const meshGatewayMode = o.meshGatewayMode === undefined ? undefined : parseMeshGatewayMode(o.meshGatewayMode);
  const byName = new Map(upstreams.map((u) => [u.name, u]));
  const drainTimeoutMs = parseDurationMs(o.drainTimeout);
  if (drainTimeoutMs === null) throw new UsageError(`-drain-timeout "${o.drainTimeout}": want a duration like 15s`);
  const admin = o.adminAddr === "" ? null : parseHostPort("-admin-addr", o.adminAddr, "127.0.0.1", true);
  const metrics = o.metricsAddr === undefined || o.metricsAddr === "" ? null : parseHostPort("-metrics-addr", o.metricsAddr, "127.0.0.1", true);
  if (o.appMetricsUrl !== undefined) checkAppMetricsUrl(o.appMetricsUrl);
  const sampleRate = Number(o.tracingSampleRate);
  if (!Number.isFinite(sampleRate) || sampleRate < 0 || sampleRate > 1) throw new UsageError(`-tracing-sample-rate "${o.tracingSampleRate}": want a number from 0 to 1, e.g. 0.1`);
  if (o.tracingEndpoint) checkHttpUrl("-tracing-endpoint", o.tracingEndpoint, "http://127.0.0.1:4318/v1/traces");
  const concurrency = parseConcurrency(o.concurrency);
  if (gateway !== null && concurrency > 1) throw new UsageError(`-concurrency ${o.concurrency} with -gateway mesh: a mesh gateway runs on one event loop for now; leave -concurrency at 1`);
  return {
    request: {
      service: o.service ?? (gateway ? "mesh-gateway" : ""),
      ...(o.proxyId ? { proxyId: o.proxyId } : {}),
      ...(gateway === null && o.listen && o.serviceAddr
        ? { publicListener: { bind: parseHostPort("-listen", o.listen, "0.0.0.0", true), localApp: parseHostPort("-service-addr", o.serviceAddr, "127.0.0.1") } }
        : {}),
      // Consul keys upstreams by name: a repeated name overwrites the earlier one.
      upstreams: [...byName.values()].sort((a, b) => a.name.localeCompare(b.name)),
      ...(o.meta.length > 0 ? { meta: parseMeta(o.meta) } : {}),
      ...(meshGatewayMode ? { meshGatewayMode } : {}),
    },
    dataDir: o.dataDir,
    consul,
    configFile: o.configFile,
    sidecarFor: o.sidecarFor,
    admin,
    adminExplicit,
    logLevel,
    logJson: o.logJson,
    logDest,
    drainTimeoutMs,
    metrics,
    appMetricsUrl: o.appMetricsUrl,
    tracing: o.tracingEndpoint ? { endpoint: o.tracingEndpoint, sampleRate } : null,
    accessLog: parseAccessLogTarget(o.accessLog),
    limits: {
      ...(o.maxConnections !== undefined ? { maxConnections: positiveInt("-max-connections", o.maxConnections) } : {}),
      ...(o.maxTlsHandshakes !== undefined ? { maxTlsHandshakes: positiveInt("-max-tls-handshakes", o.maxTlsHandshakes) } : {}),
    },
    datacenter: o.datacenter,
    gateway,
    concurrency,
  };
}

/** The most workers -concurrency takes: more is a typo, not a host. */
export const MAX_CONCURRENCY = 256;

/** `-concurrency N`: a whole number of workers; 0 or `auto` is one per CPU (Envoy's --concurrency, whose default is the CPU count). */
export function parseConcurrency(raw: string): number {
  if (raw === "auto") return availableParallelism();
  if (!/^\d+$/.test(raw) || Number(raw) > MAX_CONCURRENCY) throw new UsageError(`-concurrency "${raw}": want a whole number of workers from 1 to ${MAX_CONCURRENCY}, or 0 or auto for one per CPU`);
  const n = Number(raw);
  return n === 0 ? availableParallelism() : n;
}

/**
 * `-gateway mesh` (Consul's `consul connect envoy -gateway=mesh`): a listener that routes by SNI
 * and never terminates TLS, so the flags that describe a sidecar's app and upstreams have no
 * meaning for it; naming one is a mistake to report, not to ignore.
 */
function checkGateway(o: RawProxyOptions, consul: boolean): GatewaySettings {
  if (o.gateway !== "mesh") throw new UsageError(`-gateway "${o.gateway}": the only gateway kind is mesh (terminating and ingress gateways are not supported)`);
  if (!o.listen && !o.address) throw new UsageError("-gateway mesh needs -listen or -address (the gateway's address, which other datacenters' gateways dial)");
  const clash = [
    o.serviceAddr !== undefined ? "-service-addr" : null,
    o.upstream.length > 0 ? "-upstream" : null,
    o.meshGatewayMode !== undefined ? "-mesh-gateway-mode" : null,
    o.configFile !== undefined ? "-config-file" : null,
    o.sidecarFor !== undefined ? "-sidecar-for (or CONNECT_SIDECAR_FOR)" : null,
    o.proxyId !== undefined ? "-proxy-id (or CONNECT_PROXY_ID)" : null,
  ].filter((f) => f !== null);
  if (clash.length > 0) throw new UsageError(`-gateway mesh cannot be combined with ${clash.join(", ")}: a mesh gateway has no local app and no upstreams, it forwards by SNI`);
  const address = o.address !== undefined ? parseHostPort("-address", o.address, "0.0.0.0", true) : undefined;
  const wanAddress = o.wanAddress !== undefined ? parseHostPort("-wan-address", o.wanAddress, "0.0.0.0", true) : undefined;
  if (!consul && o.register) throw new UsageError("-register registers the gateway in a Consul agent: give -http-addr or CONSUL_HTTP_ADDR (with the dev control plane the gateway always registers in its catalog)");
  const listen = o.listen !== undefined ? parseHostPort("-listen", o.listen, "0.0.0.0", true) : address!;
  return { kind: "mesh", listen, address, wanAddress, register: consul ? o.register : true };
}

function parseMeshGatewayMode(raw: string): MeshGatewayMode {
  const m = MESH_GATEWAY_MODES.find((x) => x === raw);
  if (!m) throw new UsageError(`-mesh-gateway-mode "${raw}": want local (through this datacenter's mesh gateways), remote (the destination datacenter's) or none (dial the instances directly)`);
  return m;
}

function positiveInt(flag: string, raw: string): number {
  const n = Number(raw);
  if (!/^[0-9]+$/.test(raw.trim()) || !Number.isSafeInteger(n) || n < 1) throw new UsageError(`${flag} "${raw}": want a whole number of connections, at least 1`);
  return n;
}

function checkHttpUrl(flag: string, raw: string, example: string): void {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new UsageError(`${flag} "${raw}": not a URL; want e.g. ${example}`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new UsageError(`${flag} "${raw}": want an http:// or https:// URL, e.g. ${example}`);
}

function checkAppMetricsUrl(raw: string): void {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new UsageError(`-app-metrics-url "${raw}": not a URL; want e.g. http://127.0.0.1:9464/metrics`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new UsageError(`-app-metrics-url "${raw}": want an http:// or https:// URL, e.g. http://127.0.0.1:9464/metrics`);
}

/** The file is the whole configuration: a flag that said part of it again would be ignored or contradict it. */
function checkConfigFileAlone(o: RawProxyOptions): void {
  if (o.configFile === "") throw new UsageError("-config-file: give the path of the static config file");
  if (o.httpAddr) throw new UsageError("-config-file selects the static control plane and -http-addr (or CONSUL_HTTP_ADDR) the Consul one: give only one");
  const clash = [
    o.service !== undefined ? "-service" : null,
    o.upstream.length > 0 ? "-upstream" : null,
    o.meshGatewayMode !== undefined ? "-mesh-gateway-mode" : null,
    o.listen !== undefined ? "-listen" : null,
    o.serviceAddr !== undefined ? "-service-addr" : null,
    o.proxyId !== undefined ? "-proxy-id (or CONNECT_PROXY_ID)" : null,
    o.sidecarFor !== undefined ? "-sidecar-for (or CONNECT_SIDECAR_FOR)" : null,
    o.datacenter !== undefined ? "-datacenter" : null,
    o.register ? "-register" : null,
  ].filter((f) => f !== null);
  if (clash.length > 0) {
    throw new UsageError(`-config-file cannot be combined with ${clash.join(", ")}: the file sets the service, datacenter, listeners and upstreams (put them there), and there is no catalog to register in`);
  }
}

function parseMeta(pairs: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const i = p.indexOf("=");
    if (i <= 0) throw new UsageError(`-meta "${p}": want key=value, e.g. version=v2`);
    out[p.slice(0, i)] = p.slice(i + 1);
  }
  return out;
}

function readToken(o: RawProxyOptions): string | undefined {
  if (!o.tokenFile) return o.token;
  try {
    return readFileSync(o.tokenFile, "utf8").trim();
  } catch (e) {
    throw new UsageError(`-token-file "${o.tokenFile}": ${(e as Error).message}`);
  }
}

export interface Handlers {
  proxy(cmd: ProxyCommand): Promise<number>;
  intention(action: "create" | "delete" | "list" | "check", args: string[], opts: { dataDir: string; allow: boolean; deny: boolean; replace: boolean; description?: string }): Promise<number>;
  demo(opts: { dataDir?: string; count?: number; interval: number }): Promise<number>;
  config(action: "write" | "read" | "list" | "delete", args: { file?: string; kind?: string; name?: string; dataDir: string }): Promise<number>;
  canary(cmd: CanaryCommand): Promise<number>;
  ca(action: "rotate" | "roots", opts: { dataDir: string }): Promise<number>;
}

/** `meshproxy 0.1.0 (node v20.20.2, OpenSSL 3.0.19)`: the runtime decides TLS and speed (bench/RESULTS.md), so it is part of the answer. */
function versionLine(): string {
  // dist/cli/program.js and src/cli/program.ts both sit two levels below the package root.
  const pkg: unknown = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8"));
  const version = typeof pkg === "object" && pkg !== null && "version" in pkg && typeof pkg.version === "string" ? pkg.version : "unknown";
  return `meshproxy ${version} (node ${process.version}, OpenSSL ${process.versions.openssl})`;
}

export function buildProgram(h: Handlers, setResult: (p: Promise<number>) => void): Command {
  const program = new Command("meshproxy")
    .description("A service-mesh sidecar proxy: mTLS, intentions and traffic management for Consul Connect meshes.\nFlags take one dash or two: -service web or --service web.")
    .usage("-service <name> [-listen host:port -service-addr host:port] [-upstream name:port ...] | -config-file <path>")
    .helpOption("-h, --help", "show this help")
    .version(versionLine(), "--version", "print meshproxy's version and the runtime's (node, OpenSSL), then exit")
    .showSuggestionAfterError(false)
    // Flags after a subcommand belong to it: without this the proxy's own --data-dir swallows
    // `intention create web db -data-dir X` and the subcommand silently uses ./.meshproxy.
    .enablePositionalOptions()
    .exitOverride()
    // The proxy's flags before a command (`meshproxy -data-dir X intention create web db`) are
    // the proxy's, read by no command: the command would silently use ./.meshproxy. Refused,
    // naming the flags and where they go.
    .hook("preSubcommand", (root, sub) => {
      const given = root.options.filter((o) => root.getOptionValueSource(o.attributeName()) === "cli").map((o) => `-${o.name()}`);
      if (given.length === 0) return;
      throw new UsageError(`${given.join(", ")} before the command "${sub.name()}" ${given.length === 1 ? "is a proxy flag" : "are proxy flags"}, not read by it; put a command's flags after it (meshproxy ${sub.name()} ... ${given[0]} <value>)`);
    });

  program
    .addOption(new Option("--service <name>", "name of the service this proxy represents"))
    .addOption(new Option("--upstream <name:port>", "upstream listener: name:port or name:host:port (repeatable)").argParser(collect).default([]))
    .addOption(new Option("--listen <host:port>", "public mTLS listener address (needs -service-addr)"))
    .addOption(new Option("--service-addr <host:port>", "address of the local app that inbound connections are forwarded to"))
    .addOption(new Option("--meta <key=value>", "service metadata registered with the instance (repeatable); subset filters select on it").argParser(collect).default([]))
    .addOption(new Option("--proxy-id <id>", "proxy instance id (with a Consul agent: the registered connect-proxy service id)").env("CONNECT_PROXY_ID"))
    .addOption(new Option("--sidecar-for <id>", "app service id whose sidecar registration to use (Consul agent)").env("CONNECT_SIDECAR_FOR"))
    .addOption(new Option("--http-addr <addr>", "Consul agent HTTP address; selects the Consul control plane").env("CONSUL_HTTP_ADDR"))
    .addOption(new Option("--config-file <path>", "static config file; selects the static control plane"))
    .addOption(new Option("--token <token>", "ACL token for the Consul agent").env("CONSUL_HTTP_TOKEN"))
    .addOption(new Option("--token-file <path>", "file holding the ACL token (wins over -token)").env("CONSUL_HTTP_TOKEN_FILE"))
    .addOption(new Option("--register [bool]", "register the proxy in the Consul agent").argParser(parseBool("-register")).preset(true).default(false))
    .addOption(new Option("--register-id <suffix>", "suffix of the registered proxy's id (<service>-proxy-<suffix>)"))
    .addOption(new Option("--datacenter <dc>", "this proxy's datacenter (dev control plane: whose catalog; Consul: sent on every API request)"))
    .addOption(new Option("--mesh-gateway-mode <mode>", "how upstreams in another datacenter are reached: local (this datacenter's mesh gateways), remote (theirs) or none (directly); an upstream's own setting wins"))
    .addOption(new Option("--gateway <kind>", "run a mesh gateway on -listen (kind: mesh): routes connections by SNI, never terminates TLS"))
    .addOption(new Option("--address <host:port>", "mesh gateway: LAN address to register (and bind, without -listen)"))
    .addOption(new Option("--wan-address <host:port>", "mesh gateway: WAN address other datacenters' gateways dial (default: the LAN address)"))
    .addOption(new Option("--ca-file <path>", "CA bundle for HTTPS to the agent").env("CONSUL_CACERT"))
    .addOption(new Option("--ca-path <dir>", "directory of CA certificates for HTTPS to the agent").env("CONSUL_CAPATH"))
    .addOption(new Option("--client-cert <path>", "client certificate for HTTPS to the agent").env("CONSUL_CLIENT_CERT"))
    .addOption(new Option("--client-key <path>", "client key for HTTPS to the agent").env("CONSUL_CLIENT_KEY"))
    .addOption(new Option("--tls-server-name <name>", "server name to verify the agent's HTTPS certificate against").env("CONSUL_TLS_SERVER_NAME"))
    .addOption(new Option("--log-level <level>", "trace, debug, info, warn or error").default("info"))
    .addOption(new Option("--log-json [bool]", "log one JSON object per line").argParser(parseBool("-log-json")).preset(true).default(false))
    .addOption(new Option("--log-dest <stream>", "where log lines go: stderr or stdout").default("stderr"))
    .addOption(new Option("--data-dir <dir>", "dev control plane state directory (CA, catalog, intentions)").env("MESHPROXY_DATA_DIR").default(defaultDataDir()))
    .addOption(new Option("--admin-addr <host:port>", "admin API address (empty to disable)").default(`${DEFAULTS.adminAddr.host}:${DEFAULTS.adminAddr.port}`))
    .addOption(new Option("--drain-timeout <duration>", "how long open connections may finish on shutdown").default("15s"))
    .addOption(new Option("--tracing-endpoint <url>", "OTLP/HTTP traces endpoint; turns tracing on").env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    .addOption(new Option("--tracing-sample-rate <0..1>", "share of new traces sampled (a caller's decision always wins)").default("1"))
    .addOption(new Option("--access-log <dest>", "access log: off, stdout, stderr or a file path (JSON lines)").default("off"))
    .addOption(new Option("--metrics-addr <host:port>", "Prometheus metrics listener (default none; with Consul, Proxy.Config envoy_prometheus_bind_addr)"))
    .addOption(new Option("--max-connections <n>", "connections each listener holds at once; more are closed at accept (default: half the file-descriptor limit less 256, at most 50000)"))
    .addOption(new Option("--max-tls-handshakes <n>", "TLS handshakes in flight on the public listener; more connections are closed at accept (default 1024)"))
    .addOption(new Option("--concurrency <n>", "worker processes serving the listeners (Envoy's --concurrency); 0 or auto: one per CPU").default("1"))
    .addOption(new Option("--app-metrics-url <url>", "the app's metrics, merged into the proxy's at each scrape, e.g. http://127.0.0.1:9464/metrics"))
    .action((opts: RawProxyOptions, cmd: Command) => {
      const adminExplicit = cmd.getOptionValueSource("adminAddr") !== "default";
      setResult(h.proxy(toProxyCommand(opts, adminExplicit)));
    });

  const intention = program.command("intention").description("manage intentions in the dev control plane (like `consul intention`)");
  const dataDirOption = () => new Option("--data-dir <dir>", "dev control plane state directory").env("MESHPROXY_DATA_DIR").default(defaultDataDir());
  intention
    .command("create")
    .description("create an intention: meshproxy intention create -deny web db")
    .argument("<source>")
    .argument("<destination>")
    .option("--allow", "allow the connection (default)", false)
    .option("--deny", "deny the connection", false)
    .option("--replace", "replace an existing intention for the same pair", false)
    .option("--description <text>", "free-form description")
    .addOption(dataDirOption())
    .action((src: string, dst: string, o: { allow: boolean; deny: boolean; replace: boolean; description?: string; dataDir: string }) =>
      setResult(h.intention("create", [src, dst], o)),
    );
  intention
    .command("delete")
    .description("delete the intention for a source and destination")
    .argument("<source>")
    .argument("<destination>")
    .addOption(dataDirOption())
    .action((src: string, dst: string, o: { dataDir: string }) => setResult(h.intention("delete", [src, dst], { ...o, allow: false, deny: false, replace: false })));
  intention
    .command("list")
    .description("list intentions in precedence order")
    .addOption(dataDirOption())
    .action((o: { dataDir: string }) => setResult(h.intention("list", [], { ...o, allow: false, deny: false, replace: false })));
  intention
    .command("check")
    .description("would a connection from source to destination be allowed?")
    .argument("<source>")
    .argument("<destination>")
    .addOption(dataDirOption())
    .action((src: string, dst: string, o: { dataDir: string }) => setResult(h.intention("check", [src, dst], { ...o, allow: false, deny: false, replace: false })));

  const config = program.command("config").description("manage config entries in the dev control plane (like `consul config`)");
  config
    .command("write")
    .description("write a config entry from a JSON file (service-defaults, proxy-defaults, service-router, service-splitter, service-resolver)")
    .argument("<file>", "the entry as Consul's JSON; - reads standard input")
    .addOption(dataDirOption())
    .action((file: string, o: { dataDir: string }) => setResult(h.config("write", { file, dataDir: o.dataDir })));
  config
    .command("read")
    .description("print one config entry")
    .requiredOption("--kind <kind>", "entry kind")
    .requiredOption("--name <name>", "entry name")
    .addOption(dataDirOption())
    .action((o: { kind: string; name: string; dataDir: string }) => setResult(h.config("read", o)));
  config
    .command("list")
    .description("list config entries")
    .option("--kind <kind>", "only this kind")
    .addOption(dataDirOption())
    .action((o: { kind?: string; dataDir: string }) => setResult(h.config("list", o)));
  config
    .command("delete")
    .description("delete a config entry")
    .requiredOption("--kind <kind>", "entry kind")
    .requiredOption("--name <name>", "entry name")
    .addOption(dataDirOption())
    .action((o: { kind: string; name: string; dataDir: string }) => setResult(h.config("delete", o)));

  const ca = program.command("ca").description("the dev control plane's CA roots (like `consul connect ca`)");
  ca
    .command("rotate")
    .description("make a new root CA, cross-signed by the active one; proxies trust both and re-issue their leaf certificates from the new one")
    .addOption(dataDirOption())
    .action((o: { dataDir: string }) => setResult(h.ca("rotate", o)));
  ca
    .command("roots")
    .alias("list")
    .description("list the trusted roots, the active one first")
    .addOption(dataDirOption())
    .action((o: { dataDir: string }) => setResult(h.ca("roots", o)));

  program
    .command("demo")
    .description("start a complete local mesh (two apps, their sidecars, the dev control plane) and send requests across it")
    .option("--data-dir <dir>", "state directory (default: a fresh temporary one)")
    .option("--count <n>", "stop after n requests (default: run until Ctrl-C)", (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new UsageError(`-count "${v}": want a positive whole number`);
      return n;
    })
    .option("--interval <ms>", "milliseconds between requests", (v) => {
      const n = Number(v);
      if (!Number.isFinite(n) || n < 10) throw new UsageError(`-interval "${v}": want milliseconds ≥ 10`);
      return n;
    }, 1000)
    .action((o: { dataDir?: string; count?: number; interval: number }) => setResult(h.demo(o)));

  program
    .command("canary")
    .description("move traffic from one subset to another step by step, watching the new one's error rate and p99 on the callers' sidecars; roll back at once when a step fails")
    .option("--config <file>", "the rollout as JSON ({\"Service\", \"From\", \"To\", \"Steps\", \"Interval\", \"MaxErrorRate\", \"MaxP99\", \"MinRequests\"}); flags win")
    .option("--service <name>", "the service whose traffic is split")
    .option("--from <subset>", "the subset that has the traffic now (service-resolver subset)")
    .option("--to <subset>", "the subset being rolled out")
    .option("--steps <list>", "percent of traffic to -to at each step; the last is 100", CANARY_DEFAULTS.steps)
    .option("--interval <duration>", "how long each step is watched before its verdict (the window)", CANARY_DEFAULTS.interval)
    .option("--max-error-rate <share>", "a step fails when more than this share of the canary's requests fail (0..1)", CANARY_DEFAULTS.maxErrorRate)
    .option("--max-p99 <duration>", "a step fails when the canary's p99 latency is over this", CANARY_DEFAULTS.maxP99)
    .option("--min-requests <n>", "requests a window needs before a verdict", CANARY_DEFAULTS.minRequests)
    .addOption(new Option("--pause [bool]", "pause the rollout recorded in the splitter (the running canary holds its step)").argParser(parseBool("-pause")).preset(true).default(false))
    .addOption(new Option("--resume [bool]", "resume a paused rollout").argParser(parseBool("-resume")).preset(true).default(false))
    .addOption(new Option("--abort [bool]", "abort the rollout: 100% back to -from at once").argParser(parseBool("-abort")).preset(true).default(false))
    .addOption(new Option("--status [bool]", "print the rollout recorded in the splitter").argParser(parseBool("-status")).preset(true).default(false))
    .addOption(new Option("--restart [bool]", "start the rollout again though the splitter records it as rolled back or aborted").argParser(parseBool("-restart")).preset(true).default(false))
    .addOption(new Option("--data-dir <dir>", "dev control plane state directory").env("MESHPROXY_DATA_DIR").default(defaultDataDir()))
    .addOption(new Option("--http-addr <addr>", "Consul agent HTTP address; selects the Consul control plane").env("CONSUL_HTTP_ADDR"))
    .addOption(new Option("--token <token>", "ACL token for the Consul agent").env("CONSUL_HTTP_TOKEN"))
    .addOption(new Option("--token-file <path>", "file holding the ACL token (wins over -token)").env("CONSUL_HTTP_TOKEN_FILE"))
    .addOption(new Option("--datacenter <dc>", "Consul: sent on every API request"))
    .addOption(new Option("--ca-file <path>", "CA bundle for HTTPS to the agent").env("CONSUL_CACERT"))
    .addOption(new Option("--ca-path <dir>", "directory of CA certificates for HTTPS to the agent").env("CONSUL_CAPATH"))
    .addOption(new Option("--client-cert <path>", "client certificate for HTTPS to the agent").env("CONSUL_CLIENT_CERT"))
    .addOption(new Option("--client-key <path>", "client key for HTTPS to the agent").env("CONSUL_CLIENT_KEY"))
    .addOption(new Option("--tls-server-name <name>", "server name to verify the agent's HTTPS certificate against").env("CONSUL_TLS_SERVER_NAME"))
    .addOption(new Option("--log-json [bool]", "log one JSON object per line").argParser(parseBool("-log-json")).preset(true).default(false))
    .action((o: RawCanaryOptions, cmd: Command) => {
      const given = new Set(Object.keys(o).filter((k) => cmd.getOptionValueSource(k) === "cli"));
      setResult(h.canary(toCanaryCommand(o, given)));
    });

  for (const c of [program, intention, ...intention.commands, config, ...config.commands, ca, ...ca.commands, ...program.commands]) c.exitOverride().allowExcessArguments(true);
  // Commander's own "too many arguments. Expected 0 arguments but got 1." names neither the
  // argument nor the mistake (a misspelt command, a second value after a flag): say both.
  program.hook("preAction", (_root, cmd) => {
    const extra = cmd.args.slice(cmd.registeredArguments.length);
    if (extra.length === 0) return;
    const stray = JSON.stringify(extra[0]);
    if (cmd === program) {
      const commands = program.commands.map((c) => c.name()).join(", ");
      throw new UsageError(`unexpected argument ${stray}: the proxy takes only flags (a flag takes one value; repeat it for another, e.g. -upstream db:8181 -upstream api:9191), and the commands are ${commands} (run meshproxy -h)`);
    }
    const path = `${cmd.parent && cmd.parent !== program ? `${cmd.parent.name()} ` : ""}${cmd.name()}`;
    const wants = cmd.registeredArguments.map((a) => `<${a.name()}>`).join(" ");
    throw new UsageError(`${path}: unexpected argument ${stray} (it takes ${wants === "" ? "no arguments, only flags" : wants}; run meshproxy ${path} -h)`);
  });
  return program;
}

/** Runs the CLI; returns the exit code. Usage errors print one line and return 2. */
export async function runCli(argv: readonly string[], h: Handlers, write = (s: string) => void process.stderr.write(s)): Promise<number> {
  let result: Promise<number> = Promise.resolve(0);
  const program = buildProgram(h, (p) => {
    result = p;
  });
  // Commander's error messages are replaced by ours (below); the help it prints for a command
  // group given no command (`meshproxy intention`) goes to stderr, with exit 2.
  const output = { outputError: () => {}, writeErr: write, writeOut: (s: string) => void process.stdout.write(s) };
  for (const c of [program, ...program.commands, ...program.commands.flatMap((c) => c.commands)]) c.configureOutput(output);
  try {
    await program.parseAsync(goStyleArgv(argv), { from: "user" });
    return await result;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === "commander.helpDisplayed" || e.code === "commander.version") return 0;
      // Help asked for (-h) is 0; help shown because no command was given is a usage error.
      if (e.code === "commander.help") return e.exitCode === 0 ? 0 : 2;
      write(`meshproxy: ${commanderMessage(e)}\n`);
      return 2;
    }
    if (e instanceof UsageError) {
      write(`meshproxy: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
}

/** Commander says `--flag`; the user may have typed `-flag`. Say it the Consul way. */
function commanderMessage(e: CommanderError): string {
  const m = e.message.replace(/^error: /, "");
  if (e.code === "commander.unknownOption") {
    const flag = /'(-[^']+)'/.exec(m)?.[1] ?? m;
    return `unknown flag ${flag.replace(/^--/, "-")} (run meshproxy -h for the list)`;
  }
  if (e.code === "commander.invalidArgument" || e.code === "commander.optionMissingArgument") return m.replace(/'--([a-z-]+)/g, "'-$1");
  return m.replace(/'--([a-z-]+)/g, "'-$1");
}
