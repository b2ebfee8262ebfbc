// The Consul control plane: meshproxy as a data plane for a real Consul agent.
//
// Watches (blocking queries, each its own loop): CA roots, this service's leaf, the proxy
// registration (agent mode), intentions matching this service, and per upstream its discovery
// chain and the health of the service it resolves to. The set of watches follows the config:
// when the registration gains an upstream, its watches start; when it loses one, they stop.
// A Snapshot is produced only once every required piece has arrived, so no listener ever
// accepts a connection it cannot serve for lack of a certificate (Consul's built-in proxy
// starts upstream listeners before its leaf arrives).
//
// Authorization fails closed: the intentions answer is read strictly (a missing or malformed
// answer is an error, never "no intentions"), L7 permissions are carried into the Snapshot and
// compiled before it is built, and the default action is the agent's own (default-action.ts);
// until it has been asked, no Snapshot is produced, and if it cannot be learned it is deny.
import { hostname } from "node:os";
import { ControlPlaneError, type Announcement, type ControlPlane, type ControlPlaneHandlers, type ProxyRequest, type UpstreamRequest } from "../controlplane.js";
import { DEFAULTS, type Cluster, type Intention, type Protocol, type Snapshot, type PublicListener, type UpstreamListener } from "../../config/snapshot.js";
import { parseServiceSpiffeId } from "../../identity/spiffe.js";
import { logRejection, type Logger } from "../../telemetry/log.js";
import type { AgentClient } from "./client.js";
import { BlockingQuery, type BlockingOptions } from "./blocking.js";
import {
  MESH_GATEWAY_FILTER,
  parseAgentServices,
  parseGatewayHealth,
  parseHealth,
  parseIntentionMatch,
  parseLeaf,
  parseProxyRegistration,
  parseRoots,
  parseServiceNames,
  rootsVerifyingLeaf,
  type CaRoots,
  type GatewayEndpoint,
  type HealthEndpoint,
  type LeafCert,
  type ProxyRegistration,
  type WireIntention,
  WireError,
} from "./wire.js";
import { ProxyRegistrar } from "./register.js";
import { writeSubsetWeightsToConsul } from "./split-write.js";
import type { SubsetWeight } from "../../config/split-weights.js";
import { DefaultActionError, learnDefaultAction, type LearnedDefault } from "./default-action.js";
import { CompiledL7Intentions, PermissionCompileError } from "../../authz/l7.js";
import { DEFAULT_SCOPE, type LocalScope } from "../../authz/intentions.js";
import { chainFromAgent } from "./chain.js";
import { compileChain, entryIndex, type ChainTarget, type CompiledChain } from "../chain/compile.js";
import { buildUpstream, type ServiceInstance, type UpstreamBuild } from "../chain/upstream.js";
import { FilterError } from "../chain/bexpr.js";
import { compileSnapshot, SnapshotError } from "../../compile/snapshot.js";
import type { TlsMaterial } from "../../tls/contexts.js";
import type { MeshGatewayMode } from "../chain/entries.js";
import { dcParam, gatewayDatacenters, gatewayInstances, targetInstances, withMeshGatewayMode } from "./mesh-gateways.js";

export interface ConsulControlPlaneOptions {
  readonly client: AgentClient;
  readonly logger: Logger;
  /** Flags mode: what the command line asked for. Ignored for listeners in agent mode. */
  readonly request: ProxyRequest;
  /** Agent mode: the registered connect-proxy service to read config from. */
  readonly proxyId?: string;
  /** Agent mode via the app's service id (resolved like Consul's -sidecar-for). */
  readonly sidecarFor?: string;
  /** -register: self-register the proxy (flags mode with a public listener). */
  readonly register?: { readonly idSuffix?: string };
  /**
   * A Connect-native app, not a proxy: announce() registers the service itself with
   * `Connect.Native` (as Consul's native apps do) instead of a connect-proxy.
   */
  readonly native?: boolean;
  /** Blocking `wait` and error backoff; tests shorten them. */
  readonly waitMs?: number;
  readonly backoff?: { readonly baseMs: number; readonly maxMs: number };
  /** How often the agent's default intention action is asked again. Default 60 s. */
  readonly defaultActionRefreshMs?: number;
}

function isProtocol(p: string): p is Protocol {
  return p === "tcp" || p === "http" || p === "http2" || p === "grpc";
}

function asProtocol(p: string): Protocol {
  return isProtocol(p) ? p : "tcp";
}

interface IntentionsState {
  readonly list: readonly WireIntention[];
}

/** Where the default action stands: not asked yet, learned, or unknown (and so deny). */
type DefaultState = { readonly kind: "pending" } | { readonly kind: "learned"; readonly learned: LearnedDefault } | { readonly kind: "unknown" };

type ChainState = CompiledChain | "unavailable";

export class ConsulControlPlane implements ControlPlane {
  readonly kind = "consul";
  private readonly log: Logger;
  private handlers: ControlPlaneHandlers | null = null;
  private readonly watches = new Map<string, { stop(): Promise<void>; retryNow(): void }>();
  private proxyId: string | null;
  private roots: CaRoots | null = null;
  private leaf: LeafCert | null = null;
  private registration: ProxyRegistration | null = null;
  private intentions: IntentionsState | null = null;
  private defaultAction: DefaultState = { kind: "pending" };
  private learning: Promise<void> | null = null;
  private learnAgain = false;
  private defaultFailing = false;
  private refreshTimer: NodeJS.Timeout | null = null;
  private readonly stopping = new AbortController();
  private readonly health = new Map<string, HealthEndpoint[]>();
  private readonly chains = new Map<string, ChainState>();
  /** Mesh gateway service names per `dc` query value ("" = the agent's datacenter). */
  private readonly gatewayNames = new Map<string, string[]>();
  /** Mesh gateway instances per `<dc>|<name>`. */
  private readonly gateways = new Map<string, GatewayEndpoint[]>();
  private version = 0;
  private lastFingerprint = "";
  private firstDelivered: (() => void) | null = null;
  private fatal: ((e: Error) => void) | null = null;
  private registrar: ProxyRegistrar | null = null;
  /** POST /healthcheck/fail before (or after) -register registered: the registration follows it. */
  private healthCheckFailed = false;
  private stopped = false;
  private readonly warned = new Set<string>();
  /** Upstreams added after start (a Connect-native app's), after the request's own. */
  private readonly added: UpstreamRequest[] = [];
  /** Each upstream's last part that compiled, and the TLS material the checks reuse. */
  private readonly partMemo: PartMemo = { good: new Map(), tls: null };
  /** The reason each refused upstream part was reported with, so it is reported once. */
  private readonly partErrors = new Map<string, string>();

  constructor(private readonly o: ConsulControlPlaneOptions) {
    this.log = o.logger.child("consul");
    this.proxyId = o.proxyId ?? null;
  }

  private get agentMode(): boolean {
    return this.proxyId !== null;
  }

  async start(handlers: ControlPlaneHandlers): Promise<void> {
    this.handlers = handlers;
    if (!this.proxyId && this.o.sidecarFor) this.proxyId = await this.resolveSidecarFor(this.o.sidecarFor);
    this.log.info("watching Consul agent", { agent: this.o.client.address, mode: this.agentMode ? `agent (proxy-id ${this.proxyId})` : "flags" });
    const first = new Promise<void>((resolve, reject) => {
      this.firstDelivered = resolve;
      this.fatal = reject;
    });
    this.reconcile();
    const every = this.o.defaultActionRefreshMs ?? 60_000;
    // Agent config and tokens change without any intention changing: ask again now and then.
    this.refreshTimer = setInterval(() => this.learnDefault(), every);
    this.refreshTimer.unref();
    await first;
  }

  /** This proxy's namespace and partition, from its leaf (the registration's, as the agent issued it). */
  private localScope(): LocalScope {
    const id = this.leaf ? parseServiceSpiffeId(this.leaf.serviceUri) : null;
    return id ? { namespace: id.namespace, partition: id.partition } : DEFAULT_SCOPE;
  }

  /** Asks the agent for its default action; one question at a time, the latest state wins. */
  private learnDefault(): void {
    if (this.stopped) return;
    if (this.learning) {
      this.learnAgain = true;
      return;
    }
    const service = this.serviceName();
    const intentions = this.intentions;
    if (!service || !intentions) return;
    const leafId = this.leaf ? parseServiceSpiffeId(this.leaf.serviceUri) : null;
    const local = this.localScope();
    const ctx = {
      service,
      trustDomain: this.roots?.trustDomain ?? "consul",
      datacenter: leafId?.datacenter ?? DEFAULTS.datacenter,
      namespace: local.namespace,
      partition: local.partition,
      intentions: intentions.list,
    };
    this.learning = learnDefaultAction(this.o.client, ctx, this.stopping.signal)
      .then((learned) => this.onDefault(learned), (e: unknown) => this.onDefault(e instanceof Error ? e : new DefaultActionError(String(e))))
      .finally(() => {
        this.learning = null;
        if (this.learnAgain) {
          this.learnAgain = false;
          this.learnDefault();
        }
      })
      // onDefault builds a Snapshot; nothing awaits this chain, and a rejection left unhandled ends the process.
      .catch(logRejection(this.log, "applying the agent's default intention action"));
  }

  private onDefault(r: LearnedDefault | Error): void {
    if (this.stopped) return;
    if (r instanceof Error) {
      // Once per failure episode: a down agent must not flood the log every refresh.
      if (!this.defaultFailing) {
        this.defaultFailing = true;
        const keeps = this.defaultAction.kind === "learned" ? `keeping the last learned default (${this.defaultAction.learned.action})` : "denying callers no intention matches";
        this.handlers?.error(new ControlPlaneError("default-action", `${r.message}; ${keeps}`));
      }
      if (this.defaultAction.kind === "pending") this.defaultAction = { kind: "unknown" };
    } else {
      this.defaultFailing = false;
      const prev = this.defaultAction;
      if (prev.kind !== "learned" || prev.learned.action !== r.action) {
        this.log.info("default intention action learned from the agent", { action: r.action, from: r.from });
      }
      this.defaultAction = { kind: "learned", learned: r };
    }
    this.reconcile();
  }

  /** As Consul's CLI does: exactly one connect-proxy whose DestinationServiceID is the app's id. */
  private async resolveSidecarFor(appId: string): Promise<string> {
    let regs: ProxyRegistration[];
    try {
      const res = await this.o.client.call("GET", "/v1/agent/services");
      regs = parseAgentServices(res.body);
    } catch (e) {
      throw new ControlPlaneError("sidecar-for", `cannot list agent services: ${(e as Error).message}`, true);
    }
    const matches = regs.filter((r) => r.destinationServiceId.toLowerCase() === appId.toLowerCase());
    if (matches.length === 0) throw new ControlPlaneError("sidecar-for", `no sidecar proxy registered for service id "${appId}"`, true);
    if (matches.length > 1) {
      throw new ControlPlaneError("sidecar-for", `${matches.length} sidecar proxies registered for "${appId}" (${matches.map((m) => m.id).join(", ")}); choose one with -proxy-id`, true);
    }
    return matches[0]!.id;
  }

  /** The service this proxy represents: from the registration in agent mode, else -service. */
  private serviceName(): string | null {
    if (this.agentMode) return this.registration ? this.registration.destinationServiceName || null : null;
    return this.o.request.service;
  }

  private upstreamRequests(): UpstreamRequest[] {
    if (!this.agentMode) return [...this.o.request.upstreams, ...this.added];
    if (!this.registration) return [];
    const local = this.localScope();
    const out: UpstreamRequest[] = [];
    const regs = this.registration.upstreams;
    for (const u of regs) {
      const skip = (why: string) => this.warnOnce(`upstream ${u.destinationName}: ${why}`);
      // The same service in two datacenters is two listeners: named as -upstream writes the
      // other datacenter's (db.service.dc2), or the Snapshot would name two upstreams "db".
      const shared = u.datacenter !== "" && regs.some((o) => o !== u && o.destinationName === u.destinationName);
      if (u.destinationType !== "service") skip(`destination type "${u.destinationType}" is not supported yet; skipped`);
      // Chains and instances are read in the proxy's own namespace and partition: an upstream
      // naming another would silently reach the same-named service here instead.
      else if (!inScope(u.destinationNamespace, local.namespace) || !inScope(u.destinationPartition, local.partition)) {
        skip(`namespace "${u.destinationNamespace || local.namespace}", partition "${u.destinationPartition || local.partition}" is not this proxy's own (namespace "${local.namespace}", partition "${local.partition}"), and meshproxy reads services in its own only; skipped`);
      }
      else if (u.localBindSocketPath) skip("unix socket upstream listeners are not supported; skipped");
      else if (u.localBindPort < 1) skip("no LocalBindPort; skipped");
      else {
        out.push({
          name: u.destinationName,
          bind: { host: u.localBindAddress, port: u.localBindPort },
          ...(u.datacenter ? { datacenter: u.datacenter } : {}),
          ...(shared ? { listenerName: `${u.destinationName}.service.${u.datacenter}` } : {}),
          ...(u.destinationNamespace ? { namespace: u.destinationNamespace } : {}),
          ...(u.destinationPartition ? { partition: u.destinationPartition } : {}),
          ...(u.connectTimeoutMs ? { connectTimeoutMs: u.connectTimeoutMs } : {}),
          ...(u.settings ? { settings: u.settings } : {}),
          ...(u.meshGatewayMode ? { meshGatewayMode: u.meshGatewayMode } : {}),
        });
      }
    }
    return out;
  }

  private warnOnce(msg: string): void {
    if (this.warned.has(msg)) return;
    this.warned.add(msg);
    this.log.warn(msg);
  }

  /**
   * The upstream's chain as the agent compiled it, or, before one arrives or from an agent
   * without discovery chains, the default chain (one target: the service itself).
   */
  private chainOf(u: UpstreamRequest, datacenter: string): CompiledChain {
    const c = this.chains.get(chainKey(u));
    if (c && c !== "unavailable") return c;
    // In the proxy's own namespace and partition: upstreams naming another are skipped (upstreamRequests).
    const local = this.localScope();
    return compileChain(entryIndex([]), u.name, { namespace: local.namespace, partition: local.partition, datacenter: u.datacenter ?? datacenter });
  }

  /** This proxy's datacenter, once its leaf says; null before. */
  private localDatacenter(): string | null {
    const id = this.leaf ? parseServiceSpiffeId(this.leaf.serviceUri) : null;
    return id ? id.datacenter : null;
  }

  /** The mode the proxy imposes on an upstream's chain: the upstream's own, else the proxy instance's. */
  private meshGatewayOverride(u: UpstreamRequest): MeshGatewayMode | undefined {
    return u.meshGatewayMode ?? (this.agentMode ? this.registration?.meshGatewayMode : this.o.request.meshGatewayMode);
  }

  /** The chain as this proxy uses it: targets placed in a datacenter, the proxy's mode override applied. */
  private effectiveChain(u: UpstreamRequest, local: string): CompiledChain {
    return withMeshGatewayMode(withDatacenter(this.chainOf(u, local), u.datacenter ?? local), this.meshGatewayOverride(u));
  }

  /**
   * Every (service, dc) the upstream's chain can send traffic to (subsets share their service):
   * a target in another datacenter is read there, not in the upstream's.
   */
  private instancesWanted(u: UpstreamRequest): Array<{ service: string; dc: string }> {
    const local = this.localDatacenter();
    const fallback = u.datacenter ?? "";
    if (local === null) return targetInstances(this.chainOf(u, ""), "", fallback).map((x) => ({ ...x, dc: x.dc === "" || x.dc === u.datacenter ? fallback : x.dc }));
    return targetInstances(this.effectiveChain(u, local), local, fallback);
  }

  /** The `dc` values whose mesh gateways the upstream needs (none before the leaf says where we are). */
  private gatewaysWanted(u: UpstreamRequest): string[] {
    const local = this.localDatacenter();
    return local === null ? [] : gatewayDatacenters(this.effectiveChain(u, local), local);
  }

  private watch<T>(key: string, opts: Omit<BlockingOptions<T>, "client" | "onError" | "waitMs" | "backoff" | "onValue">, onValue: (v: T) => void): void {
    if (this.watches.has(key)) return;
    const q = new BlockingQuery<T>({
      ...opts,
      client: this.o.client,
      ...(this.o.waitMs ? { waitMs: this.o.waitMs } : {}),
      ...(this.o.backoff ? { backoff: this.o.backoff } : {}),
      onValue: (v) => {
        if (this.stopped) return;
        onValue(v);
        this.reconcile();
      },
      onSlow: (afterMs) => {
        if (this.stopped) return;
        this.log.warn("no answer from the Consul agent yet; still waiting (is -http-addr the agent's HTTP API?)", { agent: this.o.client.address, path: opts.path, waited_ms: afterMs });
      },
      onError: (e) => {
        if (this.stopped) return;
        this.handlers?.error(new ControlPlaneError(key.split(":")[0]!, e.message));
        // An older agent without discovery chains must not hold the first Snapshot back.
        if (key.startsWith("chain:") && !this.chains.has(key.slice(6))) {
          this.chains.set(key.slice(6), "unavailable");
          this.reconcile();
        }
      },
    });
    this.watches.set(key, q);
    q.start();
  }

  /** False (and reported, as a roots error) when `roots` cannot verify `leaf`. */
  private rootsVerify(roots: CaRoots, leaf: LeafCert): boolean {
    try {
      rootsVerifyingLeaf(roots, leaf);
      return true;
    } catch (e) {
      this.handlers?.error(new ControlPlaneError("roots", (e as Error).message));
      return false;
    }
  }

  /** Stops the watch `key` so the next reconcile starts it afresh (no index, nothing seen). */
  private restartWatch(key: string): void {
    const w = this.watches.get(key);
    if (!w) return;
    this.watches.delete(key);
    w.stop().catch(logRejection(this.log, `stopping the watch ${key}`, "debug"));
  }

  /** Starts the watches the current config needs, stops the rest, and emits if complete. */
  private reconcile(): void {
    if (this.stopped) return;
    const wanted = new Set<string>(["roots"]);
    this.watch<CaRoots>("roots", { path: "/v1/agent/connect/ca/roots", mode: "index", parse: (b) => rootsVerifyingLeaf(parseRoots(b), this.leaf) }, (v) => (this.roots = v));
    if (this.agentMode) {
      const id = this.proxyId!;
      wanted.add(`service:${id}`);
      this.watch<ProxyRegistration>(`service:${id}`, { path: `/v1/agent/service/${encodeURIComponent(id)}`, mode: "hash", parse: (b) => parseProxyRegistration(b) }, (v) => {
        if (v.kind !== "connect-proxy") {
          this.handlers?.error(new ControlPlaneError("service", `service "${id}" is of kind "${v.kind || "typical"}", not connect-proxy`));
          return;
        }
        this.registration = v;
      });
    }
    const service = this.serviceName();
    if (service) {
      wanted.add(`leaf:${service}`);
      wanted.add(`intentions:${service}`);
      this.watch<LeafCert>(`leaf:${service}`, { path: `/v1/agent/connect/ca/leaf/${encodeURIComponent(service)}`, mode: "index", parse: (b) => parseLeaf(b, service) }, (v) => {
        const first = this.leaf === null;
        this.leaf = v;
        // Roots that came before the first leaf were taken unchecked: they are checked now, and
        // roots that do not verify the leaf are dropped and asked for afresh (the first Snapshot
        // waits for a set that does). Only the first leaf: later, roots that lag a renewed leaf
        // must not hold back other changes, and the roots watch checks every answer against it.
        if (first && this.roots && !this.rootsVerify(this.roots, v)) {
          this.roots = null;
          this.restartWatch("roots");
          return;
        }
        // Roots refused for not verifying the old leaf (an inactive root pruned before the leaf
        // moved) are asked for again now, not after a backoff of up to a minute.
        this.watches.get("roots")?.retryNow();
      });
      this.watch<IntentionsState>(
        `intentions:${service}`,
        {
          path: "/v1/connect/intentions/match",
          query: { by: "destination", name: service },
          mode: "index",
          parse: (b) => ({ list: checkedIntentions(parseIntentionMatch(b, service), service) }),
        },
        (v) => {
          this.intentions = v;
          for (const it of v.list) {
            if (it.jwtPermissionsDenied > 0) this.warnOnce(`intention ${it.source} => ${it.destination}: ${it.jwtPermissionsDenied} permission(s) require a JWT, which meshproxy does not verify; they deny`);
          }
          this.learnDefault();
        },
      );
    }
    for (const u of this.upstreamRequests()) {
      const ck = chainKey(u);
      wanted.add(`chain:${ck}`);
      this.watch<CompiledChain>(
        `chain:${ck}`,
        { path: `/v1/discovery-chain/${encodeURIComponent(u.name)}`, query: u.datacenter ? { "compile-dc": u.datacenter } : {}, mode: "index", parse: (b) => chainFromAgent(b, u.name) },
        (v) => this.chains.set(ck, v),
      );
      for (const { service: svc, dc } of this.instancesWanted(u)) {
        const hk = healthKey(svc, dc);
        wanted.add(`health:${hk}`);
        this.watch<HealthEndpoint[]>(
          `health:${hk}`,
          { path: `/v1/health/connect/${encodeURIComponent(svc)}`, query: dc ? { dc } : {}, mode: "index", parse: (b) => parseHealth(b, svc) },
          (v) => this.health.set(hk, v),
        );
      }
      for (const dc of this.gatewaysWanted(u)) {
        wanted.add(`gateways:${dc}`);
        this.watch<string[]>(
          `gateways:${dc}`,
          { path: "/v1/catalog/services", query: { filter: MESH_GATEWAY_FILTER, ...(dc ? { dc } : {}) }, mode: "index", parse: parseServiceNames },
          (v) => this.gatewayNames.set(dc, v),
        );
        for (const name of this.gatewayNames.get(dc) ?? []) {
          const gk = healthKey(name, dc);
          wanted.add(`gateway:${gk}`);
          this.watch<GatewayEndpoint[]>(
            `gateway:${gk}`,
            { path: `/v1/health/service/${encodeURIComponent(name)}`, query: dc ? { dc } : {}, mode: "index", parse: (b) => parseGatewayHealth(b, name) },
            (v) => this.gateways.set(gk, v),
          );
        }
      }
    }
    for (const [key, q] of this.watches) {
      if (wanted.has(key)) continue;
      q.stop().catch(logRejection(this.log, `stopping the watch ${key}`, "debug"));
      this.watches.delete(key);
      if (key.startsWith("health:")) this.health.delete(key.slice(7));
      if (key.startsWith("gateways:")) this.gatewayNames.delete(key.slice(9));
      if (key.startsWith("gateway:")) this.gateways.delete(key.slice(8));
      if (key.startsWith("chain:")) this.chains.delete(key.slice(6));
      // The registration now names another service: its leaf and intentions must not stand in
      // for the new one's (a Snapshot would pair the old identity with the new listener).
      if (key.startsWith("leaf:")) this.leaf = null;
      if (key.startsWith("intentions:")) {
        this.intentions = null;
        this.defaultAction = { kind: "pending" };
      }
    }
    this.emitIfComplete();
  }

  private emitIfComplete(): void {
    const snap = this.build();
    if (!snap || !this.handlers) return;
    const fingerprint = JSON.stringify({ ...snap, version: 0 });
    if (fingerprint === this.lastFingerprint) return;
    this.lastFingerprint = fingerprint;
    this.version = snap.version;
    this.handlers.snapshot(snap);
    if (this.firstDelivered) {
      this.firstDelivered();
      this.firstDelivered = null;
      this.fatal = null;
    }
  }

  /** Null until every piece the config needs has arrived at least once. */
  private build(): Snapshot | null {
    const { roots, leaf, intentions } = this;
    const service = this.serviceName();
    if (!roots || !leaf || !intentions || !service) return null;
    if (this.defaultAction.kind === "pending") return null;
    if (this.agentMode && !this.registration) return null;
    const upstreams = this.upstreamRequests();
    for (const u of upstreams) {
      if (!this.chains.has(chainKey(u))) return null;
      for (const { service: svc, dc } of this.instancesWanted(u)) if (!this.health.has(healthKey(svc, dc))) return null;
      for (const dc of this.gatewaysWanted(u)) {
        const names = this.gatewayNames.get(dc);
        if (!names || names.some((n) => !this.gateways.has(healthKey(n, dc)))) return null;
      }
    }
    const leafId = parseServiceSpiffeId(leaf.serviceUri);
    const trustDomain = roots.trustDomain;
    const datacenter = leafId?.datacenter ?? DEFAULTS.datacenter;
    const namespace = leafId?.namespace ?? DEFAULTS.namespace;
    const clusters: Record<string, Cluster> = {};
    const listeners: UpstreamListener[] = [];
    const local = this.localScope();
    const identity = {
      service: leaf.service,
      namespace,
      datacenter,
      trustDomain,
      spiffeId: leaf.serviceUri,
      certChainPem: leaf.certPem,
      privateKeyPem: leaf.keyPem,
      serial: leaf.serial,
      notBefore: leaf.validAfter,
      notAfter: leaf.validBefore,
    };
    const trust = { trustDomain, rootsPem: roots.roots.map((r) => r.certPem) };
    const parts = new UpstreamParts(this.partMemo, { version: 0, source: this.kind, identity, trust, publicListener: null, upstreams: [], clusters: {}, intentions: { defaultAction: "deny", intentions: [] } });
    for (const u of upstreams) {
      const chain = this.effectiveChain(u, datacenter);
      for (const t of Object.values(chain.targets)) {
        if (t.partition !== local.partition) {
          this.warnOnce(`upstream ${u.name}: target ${t.id} is in partition "${t.partition}", not this proxy's ("${local.partition}"); meshproxy reads instances in its own partition only and does not route between partitions through mesh gateways, so connections to that target are refused (its instances must present ${t.partition}'s identity)`);
        }
      }
      const built = parts.checked(chainKey(u), () => buildUpstream({
        // Consul's upstream stat prefix names the chain's namespace and partition: the upstream's, else the proxy's.
        upstream: { ...u, namespace: u.namespace ?? local.namespace, partition: u.partition ?? local.partition },
        chain,
        instances: (svc, d) => (this.health.get(healthKey(svc, dcParam(d, datacenter))) ?? []).map((h) => instanceOf(h, svc, d, datacenter)),
        gateways: (d) => {
          const dc = dcParam(d, datacenter);
          return (this.gatewayNames.get(dc) ?? []).flatMap((name) => gatewayInstances(this.gateways.get(healthKey(name, dc)) ?? [], name, d, dc !== ""));
        },
        localDatacenter: datacenter,
        settings: u.settings,
        trustDomain,
      }));
      if (!built) continue;
      listeners.push(built.listener);
      Object.assign(clusters, built.clusters);
      for (const p of built.problems) this.warnOnce(p);
    }
    this.reportParts(parts.refused, new Set(upstreams.map(chainKey)));
    const intentionList = snapshotIntentions(intentions.list, local);
    const defaultAction = this.defaultAction.kind === "learned" ? this.defaultAction.learned.action : "deny";
    return {
      version: this.version + 1,
      source: this.kind,
      identity,
      trust,
      publicListener: this.publicListener(),
      upstreams: listeners,
      clusters,
      intentions: { defaultAction, intentions: intentionList },
    };
  }

  /** Reports each refused upstream part once per reason; forgets upstreams no longer wanted. */
  private reportParts(refused: ReadonlyMap<string, string>, wanted: ReadonlySet<string>): void {
    for (const key of this.partMemo.good.keys()) if (!wanted.has(key)) this.partMemo.good.delete(key);
    for (const [key, why] of refused) {
      if (this.partErrors.get(key) === why) continue;
      this.partErrors.set(key, why);
      const keeps = this.partMemo.good.has(key) ? "keeping its last good configuration" : "its listener is left out until it is fixed";
      this.handlers?.error(new ControlPlaneError("upstream", `upstream ${JSON.stringify(key.split("|")[0])}: ${why}; ${keeps}`));
    }
    for (const key of [...this.partErrors.keys()]) if (!refused.has(key)) this.partErrors.delete(key);
  }

  private publicListener(): PublicListener | null {
    const base = { handshakeTimeoutMs: DEFAULTS.handshakeTimeoutMs, localConnectTimeoutMs: DEFAULTS.localConnectTimeoutMs, idleTimeoutMs: DEFAULTS.idleTimeoutMs };
    const reg = this.registration;
    if (this.agentMode && reg) {
      if (reg.port < 1 || reg.localServicePort < 1) return null;
      return {
        ...base,
        bind: { host: reg.address || "0.0.0.0", port: reg.port },
        localApp: { host: reg.localServiceAddress, port: reg.localServicePort },
        protocol: asProtocol(reg.protocol),
        ...(reg.handshakeTimeoutMs ? { handshakeTimeoutMs: reg.handshakeTimeoutMs } : {}),
        ...(reg.localConnectTimeoutMs ? { localConnectTimeoutMs: reg.localConnectTimeoutMs } : {}),
      };
    }
    const pl = this.o.request.publicListener;
    return pl ? { ...base, bind: pl.bind, localApp: pl.localApp, protocol: pl.protocol ?? "tcp" } : null;
  }

  addUpstream(u: UpstreamRequest): void {
    // The same service in another datacenter is another upstream (another chain).
    const key = chainKey(u);
    if (this.o.request.upstreams.some((x) => chainKey(x) === key) || this.added.some((x) => chainKey(x) === key)) return;
    this.added.push(u);
    this.reconcile();
  }

  /** Writes the splitter to Consul with check-and-set; the discovery-chain watch brings it back. */
  async setSubsetWeights(service: string, weights: readonly SubsetWeight[]): Promise<void> {
    await writeSubsetWeightsToConsul(this.o.client, service, weights);
    this.log.info("service-splitter weights changed through the admin API", { service, weights: weights.map((w) => `${w.subset}:${w.weight / 100}`).join(",") });
  }

  async announce(a: Announcement): Promise<void> {
    if (!this.o.register || this.agentMode) return;
    const pl = this.o.request.publicListener;
    if (!pl) return;
    this.registrar = new ProxyRegistrar({
      client: this.o.client,
      logger: this.log,
      service: this.o.request.service,
      idSuffix: this.o.register.idSuffix,
      // Bound to every interface: no Address, so the agent registers its node's (Consul's
      // built-in proxy with -listen :port does the same); loopback would send every other host's
      // sidecars to their own 127.0.0.1.
      address: a.wildcard ? "" : a.address,
      port: a.port,
      localApp: pl.localApp,
      upstreams: this.o.request.upstreams,
      node: hostname(),
      ...(this.o.request.meta ? { meta: this.o.request.meta } : {}),
      ...(this.o.native ? { native: true } : {}),
    });
    await this.registrar.setHealthCheckFailed(this.healthCheckFailed);
    await this.registrar.register();
  }

  /** -register: fails or passes the proxy's TTL check. Without it the registration's checks are someone else's. */
  async setHealthCheckFailed(failed: boolean): Promise<void> {
    this.healthCheckFailed = failed;
    await this.registrar?.setHealthCheckFailed(failed);
  }

  async withdraw(): Promise<void> {
    await this.registrar?.deregister();
    this.registrar = null;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.refreshTimer) clearInterval(this.refreshTimer);
    this.stopping.abort();
    await this.learning;
    this.fatal?.(new ControlPlaneError("consul", "stopped before the first snapshot", true));
    await Promise.all([...this.watches.values()].map((q) => q.stop()));
    this.watches.clear();
    await this.o.client.close();
  }
}

/**
 * Compiles the permissions of every intention for the service, so a bad regex is an error of
 * the intentions answer (last good kept, or no first Snapshot) and not a Snapshot the proxy
 * would refuse.
 */
function checkedIntentions(list: WireIntention[], service: string): WireIntention[] {
  const policy = { defaultAction: "deny" as const, intentions: list.map((i) => ({ source: i.source, destination: i.destination, action: i.action, permissions: i.permissions })) };
  try {
    new CompiledL7Intentions(policy, service);
  } catch (e) {
    if (e instanceof PermissionCompileError) throw new WireError("/v1/connect/intentions/match", e.field.replace(/^intentions\[(\d+)\]/, `$.${service}[$1]`), e.reason);
    throw e;
  }
  return list;
}

/**
 * The intentions that govern this proxy's service, in the Snapshot's terms. Those for another
 * destination namespace or partition do not govern it (Consul's destination-side match); the
 * source scope is kept whole (and left out where it is the local one).
 */
function snapshotIntentions(list: readonly WireIntention[], local: LocalScope): Intention[] {
  return list
    .filter((i) => i.destinationPartition === local.partition && (i.destinationNamespace === "*" || i.destinationNamespace === local.namespace))
    .map((i) => ({
      source: i.source,
      destination: i.destination,
      action: i.action,
      ...(i.sourceNamespace !== local.namespace ? { sourceNamespace: i.sourceNamespace } : {}),
      ...(i.sourcePartition !== local.partition ? { sourcePartition: i.sourcePartition } : {}),
      ...(i.sourcePeer !== "" ? { sourcePeer: i.sourcePeer } : {}),
      ...(i.permissions.length > 0 ? { permissions: i.permissions } : {}),
    }));
}

interface PartMemo {
  /** Each upstream's last part that compiled, with its JSON: an unchanged part is not compiled again. */
  readonly good: Map<string, { readonly built: UpstreamBuild; readonly json: string }>;
  tls: TlsMaterial | null;
}

/**
 * Each upstream's listener and clusters, built and compiled alone as the proxy compiles a
 * Snapshot. The proxy refuses a Snapshot whole, so one upstream's bad piece (an instance port, a
 * resolver timeout no timer can hold, a subset filter meshproxy cannot evaluate) would ride in every later Snapshot and have each refused with it,
 * a new deny intention or a renewed leaf included. A part that does not compile is replaced by
 * its last good one, or left out (no listener: its callers are refused) when there is none.
 */
class UpstreamParts {
  readonly refused = new Map<string, string>();
  private readonly baseOk: boolean;

  constructor(
    private readonly memo: PartMemo,
    private readonly base: Snapshot,
  ) {
    this.baseOk = this.problem(base) === null;
  }

  private problem(s: Snapshot): string | null {
    try {
      this.memo.tls = compileSnapshot(s, this.memo.tls).tls;
      return null;
    } catch (e) {
      if (e instanceof SnapshotError) return e.message;
      throw e;
    }
  }

  checked(key: string, build: () => UpstreamBuild): UpstreamBuild | null {
    let built: UpstreamBuild;
    try {
      built = build();
    } catch (e) {
      // A subset Filter Consul accepts and meshproxy cannot evaluate: thrown out of every build,
      // it would stop all Snapshots (and crash the default-action refresh that builds one).
      if (!(e instanceof FilterError)) throw e;
      this.refused.set(key, e.message);
      return this.memo.good.get(key)?.built ?? null;
    }
    // A bad leaf or roots is no upstream's fault: the whole Snapshot is refused for it.
    if (!this.baseOk) return built;
    const json = JSON.stringify(built);
    if (this.memo.good.get(key)?.json === json) return built;
    const why = this.problem({ ...this.base, upstreams: [built.listener], clusters: built.clusters });
    if (why === null) {
      this.memo.good.set(key, { built, json });
      return built;
    }
    this.refused.set(key, why);
    return this.memo.good.get(key)?.built ?? null;
  }
}

/** An upstream's Destination{Namespace,Partition}: empty means the proxy's own. */
function inScope(named: string, own: string): boolean {
  return named === "" || named === own;
}

function chainKey(u: UpstreamRequest): string {
  return `${u.name}|${u.datacenter ?? ""}`;
}

/** Targets compiled without a datacenter (the default chain before the leaf says where we are) get ours. */
function withDatacenter(chain: CompiledChain, datacenter: string): CompiledChain {
  if (Object.values(chain.targets).every((t) => t.datacenter)) return chain;
  const targets: Record<string, ChainTarget> = {};
  for (const [id, t] of Object.entries(chain.targets)) targets[id] = t.datacenter ? t : { ...t, datacenter };
  return { ...chain, targets };
}

/**
 * An instance in another datacenter than the proxy's, dialled directly (mesh gateway mode none),
 * is dialled at its WAN address, as Consul's Envoy does (agent/xds/endpoints.go:
 * `ep.BestAddress(<the node is in another datacenter>)`); its LAN address is only reachable there.
 */
function instanceOf(h: HealthEndpoint, service: string, datacenter: string, local: string): ServiceInstance {
  const at = (h.datacenter || datacenter) === local ? { address: h.address, port: h.port } : h.wan;
  return {
    id: h.id,
    service: h.identityService || service,
    address: at.address,
    port: at.port,
    status: h.status,
    meta: h.meta,
    tags: h.tags,
    node: { name: h.node, datacenter: h.datacenter || datacenter, meta: h.nodeMeta },
  };
}

function healthKey(service: string, dc: string): string {
  return `${service}|${dc}`;
}
