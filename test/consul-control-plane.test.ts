// The Consul control plane against the agent test double, over real HTTP: every watch (roots,
// leaf, proxy registration by hash, -sidecar-for, health per upstream, discovery chain,
// intentions and the agent's default action), the blocking-query edge cases (index reset, the
// zero-index bug), faults (403, 500, garbage, stalls) with the last Snapshot kept, the
// first-Snapshot gate, and -register. Short waits and backoffs keep each case to seconds.
import t from "tap";
import { ConsulAgentDouble, type ConsulAgentDoubleOptions, type JsonObject, type RecordedRequest } from "./helpers/consul-agent.js";
import { AgentClient } from "../src/controlplane/consul/client.js";
import { ConsulControlPlane, type ConsulControlPlaneOptions } from "../src/controlplane/consul/consul.js";
import { ProxyRegistrar } from "../src/controlplane/consul/register.js";
import { ControlPlaneError, type ProxyRequest } from "../src/controlplane/controlplane.js";
import { serviceSni, serviceSpiffeId } from "../src/identity/spiffe.js";
import { silentLogger } from "../src/telemetry/log.js";
import type { Snapshot } from "../src/config/snapshot.js";
import type { Teardown } from "./helpers/mesh.js";
import { until } from "./helpers/l7.js";
import { ignoreRejection } from "./helpers/ignore.js";
import { CompiledIntentions, scopeOf } from "../src/authz/intentions.js";

const WAIT_MS = 2000;
const BACKOFF = { baseMs: 50, maxMs: 500 };

async function double(t: Teardown, opts: ConsulAgentDoubleOptions = {}): Promise<ConsulAgentDouble> {
  const d = await ConsulAgentDouble.start(opts);
  t.teardown(() => d.stop());
  return d;
}

/** Items that arrive over time, and waiting for one that matches. */
class Stream<T> {
  readonly items: T[] = [];
  private readonly waiters = new Set<{ pred: (x: T) => boolean; resolve: (x: T) => void }>();

  push(x: T): void {
    this.items.push(x);
    for (const w of [...this.waiters]) {
      if (!w.pred(x)) continue;
      this.waiters.delete(w);
      w.resolve(x);
    }
  }

  get length(): number {
    return this.items.length;
  }

  get last(): T | undefined {
    return this.items.at(-1);
  }

  /** The first item from position `from` on (past or future) that matches. */
  next(pred: (x: T) => boolean, what: string, from = this.items.length, timeoutMs = 8000): Promise<T> {
    const hit = this.items.slice(from).find(pred);
    if (hit !== undefined) return Promise.resolve(hit);
    return new Promise<T>((resolve, reject) => {
      const w = {
        pred,
        resolve: (x: T) => {
          clearTimeout(timer);
          resolve(x);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.delete(w);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      this.waiters.add(w);
    });
  }
}

interface Harness {
  readonly cp: ConsulControlPlane;
  readonly snapshots: Stream<Snapshot>;
  readonly errors: Stream<ControlPlaneError>;
  /** cp.start(); the promise is also kept so teardown never leaves it unhandled. */
  start(): Promise<void>;
  /** The latest Snapshot; fails the caller if there is none. */
  latest(): Snapshot;
}

type HarnessOptions = Partial<Omit<ConsulControlPlaneOptions, "client" | "logger">> & { readonly token?: string };

function harness(t: Teardown, d: ConsulAgentDouble, o: HarnessOptions = {}): Harness {
  const { token, ...rest } = o;
  const client = new AgentClient({ httpAddr: d.url, ...(token !== undefined ? { token } : {}) });
  const cp = new ConsulControlPlane({
    client,
    logger: silentLogger,
    request: { service: "web", upstreams: [] },
    waitMs: WAIT_MS,
    backoff: BACKOFF,
    ...rest,
  });
  const snapshots = new Stream<Snapshot>();
  const errors = new Stream<ControlPlaneError>();
  let started: Promise<void> | null = null;
  t.teardown(async () => {
    await cp.stop();
    await started?.catch(ignoreRejection("stop() rejects a start() that never saw a first Snapshot; the test has checked what it needed"));
  });
  return {
    cp,
    snapshots,
    errors,
    start() {
      if (!started) {
        started = cp.start({ snapshot: (s) => snapshots.push(s), error: (e) => errors.push(e) });
        // Tests that never see a first Snapshot stop the control plane, which rejects start().
        started.catch(ignoreRejection("a test that never sees a first Snapshot stops the control plane, rejecting start()"));
      }
      return started;
    },
    latest() {
      const s = snapshots.last;
      if (!s) throw new Error("no Snapshot yet");
      return s;
    },
  };
}

const WEB_WITH_DB: ProxyRequest = {
  service: "web",
  publicListener: { bind: { host: "127.0.0.1", port: 21000 }, localApp: { host: "127.0.0.1", port: 8080 } },
  upstreams: [{ name: "db", bind: { host: "127.0.0.1", port: 9191 } }],
};

/** The cluster an upstream listener sends to (clusters are named as Consul names them: the target's SNI). */
function clusterFor(s: Snapshot, upstream: string): Snapshot["clusters"][string] | undefined {
  const u = s.upstreams.find((x) => x.name === upstream);
  return u ? s.clusters[u.cluster] : undefined;
}

function endpointsOf(s: Snapshot, upstream: string): Array<{ id: string; host: string; port: number; healthy: boolean }> {
  return (clusterFor(s, upstream)?.endpoints ?? []).map((e) => ({ id: e.id, host: e.host, port: e.port, healthy: e.healthy }));
}

const isGet = (prefix: string) => (r: RecordedRequest) => r.method === "GET" && r.path.startsWith(prefix);

t.test("flags mode (-service): the first Snapshot holds the leaf, roots, intentions, and each upstream's chain and health", async (t) => {
  const d = await double(t);
  d.setInstances("db", [{ id: "db-1-sidecar-proxy", address: "10.0.0.5", port: 21000, meta: { version: "v1" } }]);
  d.setIntentions("web", [{ source: "api", action: "deny" }]);
  const h = harness(t, d, { request: WEB_WITH_DB });
  await h.start();
  t.equal(h.snapshots.length, 1, "start resolves once the first Snapshot is delivered");
  const s = h.latest();
  const leaf = await d.leaf("web");
  t.equal(s.source, "consul");
  t.equal(s.identity.service, "web");
  t.equal(s.identity.spiffeId, serviceSpiffeId({ trustDomain: d.trustDomain, namespace: "default", datacenter: "dc1", service: "web" }), "identity from the leaf's ServiceURI");
  t.equal(s.identity.serial, leaf.serial, "the leaf the agent serves for -service");
  t.equal(s.identity.certChainPem, leaf.certPem);
  t.match(s.identity.privateKeyPem, /BEGIN EC PRIVATE KEY/, "the agent's SEC1 key, as served");
  t.equal(s.identity.datacenter, "dc1");
  t.equal(s.trust.trustDomain, d.trustDomain);
  t.same(s.trust.rootsPem, [d.activeRoot.certPem], "every listed root is trusted");
  t.same(s.publicListener?.bind, { host: "127.0.0.1", port: 21000 });
  t.same(s.publicListener?.localApp, { host: "127.0.0.1", port: 8080 });
  t.same(
    s.upstreams.map((u) => ({ name: u.name, bind: u.bind, cluster: u.cluster })),
    [{ name: "db", bind: { host: "127.0.0.1", port: 9191 }, cluster: serviceSni("db", "default", "dc1", d.trustDomain) }],
    "the upstream's cluster is named as Consul names it: the target's SNI",
  );
  const db = clusterFor(s, "db");
  t.equal(db?.service, "db");
  t.equal(db?.sni, serviceSni("db", "default", "dc1", d.trustDomain), "SNI from the default chain's target");
  t.equal(db?.expectedSpiffeId, serviceSpiffeId({ trustDomain: d.trustDomain, namespace: "default", datacenter: "dc1", service: "db" }));
  t.same(endpointsOf(s, "db"), [{ id: "db-1-sidecar-proxy", host: "10.0.0.5", port: 21000, healthy: true }]);
  t.same(db?.endpoints[0]?.meta, { version: "v1" }, "instance meta is kept for subsets");
  t.same(s.intentions, { defaultAction: "allow", intentions: [{ source: "api", destination: "web", action: "deny" }] });

  t.ok(d.requests.some((r) => isGet("/v1/agent/connect/ca/roots")(r)), "watched /v1/agent/connect/ca/roots");
  t.ok(d.requests.some((r) => r.method === "GET" && r.path === "/v1/agent/connect/ca/leaf/web"), "watched the leaf for the -service name");
  t.ok(d.requests.some((r) => r.path === "/v1/connect/intentions/match" && r.query["by"] === "destination" && r.query["name"] === "web"), "watched intentions/match by destination");
  t.ok(d.requests.some((r) => r.path === "/v1/discovery-chain/db"), "watched the upstream's discovery chain");
  t.ok(d.requests.some((r) => r.path === "/v1/health/connect/db"), "watched the upstream's mesh health");
  await d.waitForHeld("/v1/health/connect/db");
  const blocking = d.requestsTo("/v1/health/connect/db").find((r) => r.query["index"] !== undefined);
  t.ok(blocking, "the second health call blocks on ?index=");
  t.equal(blocking?.query["wait"], `${WAIT_MS}ms`, "with the configured wait, Go-style");
});

t.test("health/connect: instances appearing, turning critical and leaving each give a new Snapshot", async (t) => {
  const d = await double(t);
  d.setInstances("db", [{ id: "db-1", address: "10.0.0.5", port: 21000 }]);
  const h = harness(t, d, { request: WEB_WITH_DB });
  await h.start();

  let mark = h.snapshots.length;
  d.setInstances("db", [
    { id: "db-1", address: "10.0.0.5", port: 21000 },
    { id: "db-2", address: "", nodeAddress: "10.0.0.6", port: 21001 },
  ]);
  let s = await h.snapshots.next((x) => endpointsOf(x, "db").length === 2, "a Snapshot with two db endpoints", mark);
  t.same(endpointsOf(s, "db"), [
    { id: "db-1", host: "10.0.0.5", port: 21000, healthy: true },
    { id: "db-2", host: "10.0.0.6", port: 21001, healthy: true },
  ], "a new instance appears; an empty Service.Address falls back to the node address");
  t.ok(s.version > h.snapshots.items[0]!.version, "versions increase");

  mark = h.snapshots.length;
  d.setInstances("db", [
    { id: "db-1", address: "10.0.0.5", port: 21000 },
    { id: "db-2", address: "", nodeAddress: "10.0.0.6", port: 21001, status: "critical" },
  ]);
  s = await h.snapshots.next((x) => endpointsOf(x, "db").some((e) => !e.healthy), "a Snapshot with an unhealthy endpoint", mark);
  t.same(endpointsOf(s, "db").map((e) => [e.id, e.healthy]), [["db-1", true], ["db-2", false]], "a critical check makes the endpoint unhealthy");

  mark = h.snapshots.length;
  d.setInstances("db", [{ id: "db-2", address: "", nodeAddress: "10.0.0.6", port: 21001, status: "warning" }]);
  s = await h.snapshots.next((x) => endpointsOf(x, "db").length === 1, "a Snapshot with one db endpoint", mark);
  t.same(endpointsOf(s, "db"), [{ id: "db-2", host: "10.0.0.6", port: 21001, healthy: true }], "db-1 left; a warning instance still gets traffic (as Envoy)");

  mark = h.snapshots.length;
  d.setInstances("db", []);
  s = await h.snapshots.next((x) => endpointsOf(x, "db").length === 0, "a Snapshot with no db endpoints", mark);
  t.same(s.upstreams.map((u) => u.name), ["db"], "the upstream listener stays with no instances");
});

t.test("roots and leaf: a rotation reaches the Snapshot; intentions follow the match endpoint and the agent's default action", async (t) => {
  const d = await double(t);
  const h = harness(t, d, { request: WEB_WITH_DB, defaultActionRefreshMs: 200 });
  await h.start();
  const before = h.latest();

  let mark = h.snapshots.length;
  const serial = await d.rotateLeaf("web");
  let s = await h.snapshots.next((x) => x.identity.serial === serial, "a Snapshot with the rotated leaf", mark);
  t.not(serial, before.identity.serial, "a new serial");
  t.equal(s.identity.certChainPem, (await d.leaf("web")).certPem);

  mark = h.snapshots.length;
  await d.rotateRoots();
  const reissued = (await d.leaf("web")).certPem;
  s = await h.snapshots.next((x) => x.trust.rootsPem.length === 2 && x.identity.certChainPem === reissued, "a Snapshot with both roots and the re-issued leaf", mark);
  t.same(s.trust.rootsPem, d.roots().map((r) => r.ca.certPem), "old and new root are both trusted during the overlap");
  t.match(s.identity.certChainPem, /(-----BEGIN CERTIFICATE-----[\s\S]+?){2}/, "the re-issued leaf carries the cross-signed root");

  mark = h.snapshots.length;
  d.setIntentions("web", [
    { source: "api", action: "allow" },
    { source: "admin", permissions: [{ Action: "allow", HTTP: { PathPrefix: "/admin" } }] },
  ]);
  s = await h.snapshots.next((x) => x.intentions.intentions.length === 2, "a Snapshot with two intentions", mark);
  t.same(
    s.intentions.intentions,
    [
      { source: "api", destination: "web", action: "allow" },
      { source: "admin", destination: "web", action: "deny", permissions: [{ action: "allow", path: { kind: "prefix", value: "/admin" }, headers: [], methods: [] }] },
    ],
    "an L7 intention keeps its permissions (enforced per request on http; its action, deny, is what a tcp service does)",
  );
  t.equal(s.intentions.defaultAction, "allow", "ACLs off, no default_intention_policy: allow, as the agent's authorize");

  mark = h.snapshots.length;
  d.setDefaultIntentionPolicy("deny");
  s = await h.snapshots.next((x) => x.intentions.defaultAction === "deny", "a Snapshot with default deny", mark);
  t.equal(s.intentions.intentions.length, 2, "the intentions are unchanged");

  mark = h.snapshots.length;
  d.setIntentions("*", [{ source: "*", action: "deny" }]);
  s = await h.snapshots.next((x) => x.intentions.intentions.some((i) => i.destination === "*"), "a Snapshot with the wildcard intention", mark);
  t.same(s.intentions.intentions.at(-1), { source: "*", destination: "*", action: "deny" }, "wildcard-destination intentions match too, least specific last");
});

t.test("discovery chain: the target's SNI is used, and a redirect moves the health watch to the new service", async (t) => {
  const d = await double(t);
  d.setInstances("db", [{ id: "db-1", address: "10.0.0.5", port: 21000 }]);
  d.setInstances("postgres", [{ id: "postgres-1", address: "10.0.0.9", port: 21002 }]);
  const h = harness(t, d, { request: WEB_WITH_DB });
  await h.start();
  t.equal(h.latest().upstreams[0]?.connectTimeoutMs, 5000, "the default chain's ConnectTimeout (5s)");

  let mark = h.snapshots.length;
  d.setChain("db", chainTo(d, "db", "db", { sni: "db.custom-sni.example", connectTimeout: "2s" }));
  let s = await h.snapshots.next((x) => clusterFor(x, "db")?.sni === "db.custom-sni.example", "a Snapshot with the chain's SNI", mark);
  t.pass("the SNI comes from Chain.Targets[<start resolver's target>].SNI, not a computed name");
  t.equal(s.upstreams[0]?.connectTimeoutMs, 2000, "the target's ConnectTimeout applies when the upstream sets none");
  t.same(endpointsOf(s, "db").map((e) => e.id), ["db-1"], "same instances");

  mark = h.snapshots.length;
  d.setChain("db", chainTo(d, "db", "postgres", {}));
  s = await h.snapshots.next((x) => clusterFor(x, "db")?.service === "postgres", "a Snapshot for the redirected service", mark);
  t.same(endpointsOf(s, "db"), [{ id: "postgres-1", host: "10.0.0.9", port: 21002, healthy: true }], "endpoints come from /v1/health/connect/postgres");
  t.equal(clusterFor(s, "db")?.expectedSpiffeId, serviceSpiffeId({ trustDomain: d.trustDomain, namespace: "default", datacenter: "dc1", service: "postgres" }), "the expected identity is the target service's");
  t.equal(clusterFor(s, "db")?.sni, serviceSni("postgres", "default", "dc1", d.trustDomain));
  t.same(s.upstreams.map((u) => u.name), ["db"], "the listener keeps the upstream's name");
  t.ok(await waitUntil(() => d.heldCount("/v1/health/connect/db") === 0, 5000), "the health watch on db was stopped (its blocking query cancelled)");
  t.ok(d.requestsTo("/v1/health/connect/postgres").length >= 1, "and one on postgres started");

  mark = h.snapshots.length;
  d.setInstances("postgres", []);
  await h.snapshots.next((x) => endpointsOf(x, "db").length === 0, "a Snapshot following postgres's health", mark);
});

/** A one-resolver chain for `service` whose target is `target` (a redirect when they differ). */
function chainTo(d: ConsulAgentDouble, service: string, target: string, o: { sni?: string; connectTimeout?: string }): JsonObject {
  const id = `${target}.default.default.${d.datacenter}`;
  const sni = serviceSni(target, "default", d.datacenter, d.trustDomain);
  const timeout = o.connectTimeout ?? "5s";
  return {
    ServiceName: service,
    Namespace: "default",
    Partition: "default",
    Datacenter: d.datacenter,
    Protocol: "tcp",
    StartNode: `resolver:${id}`,
    Nodes: { [`resolver:${id}`]: { Type: "resolver", Name: id, Resolver: { Default: false, ConnectTimeout: timeout, Target: id } } },
    Targets: {
      [id]: { ID: id, Service: target, Namespace: "default", Partition: "default", Datacenter: d.datacenter, MeshGateway: {}, Subset: {}, TransparentProxy: {}, ConnectTimeout: timeout, SNI: o.sni ?? sni, Name: sni },
    },
  };
}

/** Polls a condition the double has no event for; true if it held in time. */
async function waitUntil(probe: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (probe()) return true;
    await new Promise((r) => setTimeout(r, 25));
  }
  return probe();
}

/** Position of a recorded request, to look only at requests after a point. */
function after(d: ConsulAgentDouble, mark: number, pred: (r: RecordedRequest) => boolean): (r: RecordedRequest) => boolean {
  return (r) => d.requests.indexOf(r) >= mark && pred(r);
}

const WEB_PROXY = {
  Kind: "connect-proxy",
  ID: "web-sidecar-proxy",
  Name: "web-sidecar-proxy",
  Port: 21000,
  Address: "10.20.0.15",
  Proxy: {
    DestinationServiceName: "web",
    DestinationServiceID: "web-1",
    LocalServiceAddress: "127.0.0.1",
    LocalServicePort: 8080,
    Config: { protocol: "tcp", local_connect_timeout_ms: 2500, handshake_timeout_ms: 3000 },
    Upstreams: [{ DestinationType: "service", DestinationName: "db", LocalBindAddress: "127.0.0.1", LocalBindPort: 9191, Config: { connect_timeout_ms: 3000 } }],
  },
} as const;

t.test("agent mode (-proxy-id): the registration, watched by hash, says what the proxy is; changes to it change the Snapshot", async (t) => {
  const d = await double(t);
  d.setInstances("db", [{ id: "db-1", address: "10.0.0.5", port: 21000 }]);
  d.setInstances("cache", [{ id: "cache-1", address: "10.0.0.7", port: 21003 }]);
  d.registerProxy(WEB_PROXY);
  const h = harness(t, d, { request: { service: "", upstreams: [] }, proxyId: "web-sidecar-proxy" });
  await h.start();
  let s = h.latest();
  t.equal(s.identity.service, "web", "the identity is Proxy.DestinationServiceName's");
  t.ok(d.requests.some((r) => r.path === "/v1/agent/connect/ca/leaf/web"), "the leaf is fetched for the destination service name");
  t.ok(d.requests.some((r) => r.path === "/v1/connect/intentions/match" && r.query["name"] === "web"), "intentions for the destination service");
  t.same(s.publicListener && { bind: s.publicListener.bind, localApp: s.publicListener.localApp, protocol: s.publicListener.protocol }, {
    bind: { host: "10.20.0.15", port: 21000 },
    localApp: { host: "127.0.0.1", port: 8080 },
    protocol: "tcp",
  }, "public listener: the proxy service's Address/Port → Proxy.LocalServiceAddress/Port");
  t.equal(s.publicListener?.localConnectTimeoutMs, 2500, "Proxy.Config.local_connect_timeout_ms");
  t.equal(s.publicListener?.handshakeTimeoutMs, 3000, "Proxy.Config.handshake_timeout_ms");
  t.same(s.upstreams.map((u) => ({ name: u.name, bind: u.bind, connectTimeoutMs: u.connectTimeoutMs })), [
    { name: "db", bind: { host: "127.0.0.1", port: 9191 }, connectTimeoutMs: 3000 },
  ], "upstream listeners from Proxy.Upstreams (Config.connect_timeout_ms wins over the chain's)");
  t.same(endpointsOf(s, "db").map((e) => e.id), ["db-1"]);

  await d.waitForHeld("/v1/agent/service/web-sidecar-proxy");
  const svcCalls = d.requestsTo("/v1/agent/service/web-sidecar-proxy");
  t.equal(svcCalls[0]?.query["hash"], undefined, "the first registration read does not block");
  t.ok(svcCalls.slice(1).every((r) => r.query["hash"] === d.service("web-sidecar-proxy")?.ContentHash && r.query["index"] === undefined), "later reads block on ?hash=<ContentHash>, never ?index=");

  let mark = h.snapshots.length;
  d.registerProxy({ ...WEB_PROXY, Proxy: { ...WEB_PROXY.Proxy, Upstreams: [...WEB_PROXY.Proxy.Upstreams, { DestinationName: "cache", LocalBindPort: 9292 }] } });
  s = await h.snapshots.next((x) => x.upstreams.length === 2, "a Snapshot with the added upstream", mark);
  t.same(s.upstreams.map((u) => [u.name, u.bind.port]), [["db", 9191], ["cache", 9292]], "an upstream added to the registration appears");
  t.same(endpointsOf(s, "cache").map((e) => e.id), ["cache-1"], "with its own health watch");
  t.equal(s.upstreams[1]?.bind.host, "127.0.0.1", "LocalBindAddress defaults to 127.0.0.1");

  mark = h.snapshots.length;
  d.registerProxy({ ...WEB_PROXY, Port: 21500, Proxy: { ...WEB_PROXY.Proxy, LocalServicePort: 8081, Config: { protocol: "tcp" }, Upstreams: [{ DestinationName: "cache", LocalBindPort: 9292 }] } });
  s = await h.snapshots.next((x) => x.upstreams.length === 1, "a Snapshot without db", mark);
  t.same(s.upstreams.map((u) => u.name), ["cache"], "a removed upstream goes away");
  t.same(Object.values(s.clusters).map((c) => c.service), ["cache"], "and so does its cluster");
  t.same(s.publicListener?.bind, { host: "10.20.0.15", port: 21500 }, "the public listener follows a new Port");
  t.equal(s.publicListener?.localApp.port, 8081, "and a new LocalServicePort");
  t.equal(s.publicListener?.handshakeTimeoutMs, 10_000, "a setting dropped from Proxy.Config falls back to its default");
  t.ok(await waitUntil(() => d.heldCount("/v1/health/connect/db") === 0 && d.heldCount("/v1/discovery-chain/db") === 0, 5000), "db's watches were stopped");

  mark = h.snapshots.length;
  d.setProxyDefaults({ handshake_timeout_ms: 1500 });
  await h.snapshots.next((x) => x.publicListener?.handshakeTimeoutMs === 1500, "a Snapshot with proxy-defaults merged in", mark);
  t.pass("proxy-defaults Config merged by the agent changes the hash and reaches the Snapshot");
});

t.test("agent mode: a registration moved to another destination service never mixes the old identity with the new service", async (t) => {
  const d = await double(t);
  d.setIntentions("web", [{ source: "api", action: "deny" }]);
  d.setIntentions("billing", [{ source: "web", action: "allow" }]);
  d.registerProxy(WEB_PROXY);
  const h = harness(t, d, { request: { service: "", upstreams: [] }, proxyId: "web-sidecar-proxy" });
  await h.start();
  t.equal(h.latest().identity.service, "web");
  const mark = h.snapshots.length;
  d.fault("/v1/agent/connect/ca/leaf/billing", "stall");
  d.registerProxy({ ...WEB_PROXY, Proxy: { ...WEB_PROXY.Proxy, DestinationServiceName: "billing", LocalServicePort: 9090 } });
  await d.waitForHeld("/v1/agent/connect/ca/leaf/billing");
  await d.waitForHeld("/v1/agent/service/web-sidecar-proxy");
  t.same(h.snapshots.items.slice(mark).map((s) => [s.identity.service, s.publicListener?.localApp.port]), [], "no Snapshot while billing's leaf has not arrived (web's leaf and intentions do not stand in)");
  t.equal(h.latest().identity.service, "web", "the last good Snapshot stays");
  d.clearFaults();
  const s = await h.snapshots.next((x) => x.identity.service === "billing", "a Snapshot as billing", mark);
  t.equal(s.publicListener?.localApp.port, 9090);
  t.same(s.intentions.intentions, [{ source: "web", destination: "billing", action: "allow" }], "with billing's intentions");
  t.ok(h.snapshots.items.slice(mark).every((x) => x.identity.service === "billing" || x.publicListener?.localApp.port === 8080), "never web's identity with billing's listener");
});

t.test("agent mode: a -proxy-id that is not a connect-proxy is reported, and no Snapshot is made", async (t) => {
  const d = await double(t);
  d.registerService({ ID: "web-1", Name: "web", Port: 8080 });
  const h = harness(t, d, { request: { service: "", upstreams: [] }, proxyId: "web-1" });
  h.start().catch(ignoreRejection("no Snapshot is ever made: teardown's stop() rejects start()"));
  const e = await h.errors.next((x) => x.resource === "service", "an error about the service");
  t.match(e.message, /service "web-1" is of kind "typical", not connect-proxy/);
  t.equal(h.snapshots.length, 0);
  const unknown = harness(t, d, { request: { service: "", upstreams: [] }, proxyId: "nope" });
  unknown.start().catch(ignoreRejection("no Snapshot is ever made: teardown's stop() rejects start()"));
  const e404 = await unknown.errors.next((x) => x.resource === "service", "an error about an unknown id");
  t.match(e404.message, /HTTP 404: unknown service ID: nope/, "an unknown id is the agent's 404, reported");
});

t.test("-sidecar-for: no match is fatal, two matches ask for -proxy-id, one match is agent mode", async (t) => {
  const d = await double(t);
  const none = harness(t, d, { request: { service: "", upstreams: [] }, sidecarFor: "web-1" });
  const err0 = await none.start().then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(err0 instanceof ControlPlaneError && err0.fatal, "zero matches: a fatal ControlPlaneError");
  t.match(err0 instanceof Error ? err0.message : "", /^sidecar-for: no sidecar proxy registered for service id "web-1"$/);
  t.equal(none.snapshots.length, 0);

  d.registerService({ ID: "web-1", Name: "web", Port: 8080, Address: "127.0.0.1", Connect: { SidecarService: { Port: 21000, Proxy: { Upstreams: [{ DestinationName: "db", LocalBindPort: 9191 }] } } } });
  d.registerProxy({ ID: "web-1-second-proxy", Name: "web-second-proxy", Port: 21001, Proxy: { DestinationServiceName: "web", DestinationServiceID: "web-1" } });
  d.registerService({ ID: "api-1", Name: "api", Port: 9000, Connect: { SidecarService: {} } });
  const two = harness(t, d, { request: { service: "", upstreams: [] }, sidecarFor: "web-1" });
  const err2 = await two.start().then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(err2 instanceof ControlPlaneError && err2.fatal, "two matches: fatal too");
  t.match(err2 instanceof Error ? err2.message : "", /2 sidecar proxies registered for "web-1" \(web-1-sidecar-proxy, web-1-second-proxy\); choose one with -proxy-id/);
  t.ok(d.requests.some((r) => r.method === "GET" && r.path === "/v1/agent/services"), "resolved through GET /v1/agent/services");

  d.deregister("web-1-second-proxy");
  d.setInstances("db", [{ id: "db-1", address: "10.0.0.5", port: 21000 }]);
  const one = harness(t, d, { request: { service: "", upstreams: [] }, sidecarFor: "WEB-1" });
  await one.start();
  const s = one.latest();
  t.pass("exactly one match (compared case-insensitively) starts agent mode");
  t.ok(d.requests.some((r) => r.path === "/v1/agent/service/web-1-sidecar-proxy"), "watching the sidecar's registration");
  t.equal(s.identity.service, "web");
  t.same(s.publicListener?.bind, { host: "127.0.0.1", port: 21000 }, "the expanded sidecar's Port, on the app's Address");
  t.same(s.publicListener?.localApp, { host: "127.0.0.1", port: 8080 }, "forwarding to the app's port");
  t.same(s.upstreams.map((u) => [u.name, u.bind.port]), [["db", 9191]]);
});

t.test("index reset (snapshot restore): the watches start over without an index and still see later changes", async (t) => {
  const d = await double(t);
  d.setInstances("db", [{ id: "db-1", address: "10.0.0.5", port: 21000 }]);
  const h = harness(t, d, { request: WEB_WITH_DB });
  await h.start();
  await d.waitForHeld("/v1/health/connect/db");
  await d.waitForHeld("/v1/agent/connect/ca/leaf/web");
  const before = Number(d.requestsTo("/v1/health/connect/db").at(-1)?.query["index"]);
  const mark = d.requests.length;
  const to = d.resetIndex(10);
  t.ok(before > to, `the blocked health query had index ${before} > ${to}`);
  const fresh = await d.waitForRequest(after(d, mark, (r) => r.path === "/v1/health/connect/db" && r.query["index"] === undefined));
  t.ok(fresh, "the health watch re-fetched without an index");
  const rearmed = await d.waitForRequest(after(d, mark, (r) => r.path === "/v1/health/connect/db" && r.query["index"] === String(to)));
  t.ok(rearmed, `then blocked again on the new, lower index ${to}`);
  await d.waitForRequest(after(d, mark, (r) => r.path === "/v1/agent/connect/ca/leaf/web" && r.query["index"] === String(to)));
  t.equal(h.snapshots.length, 1, "an unchanged body after the reset is not a new Snapshot");

  let smark = h.snapshots.length;
  d.setInstances("db", [{ id: "db-2", address: "10.0.0.6", port: 21000 }]);
  await h.snapshots.next((x) => endpointsOf(x, "db")[0]?.id === "db-2", "a Snapshot after the reset", smark);
  t.pass("a change after the reset is seen");
  smark = h.snapshots.length;
  const serial = await d.rotateLeaf("web");
  const s = await h.snapshots.next((x) => x.identity.serial === serial, "the rotated leaf after the reset", smark);
  t.equal(s.identity.serial, serial, "the leaf watch recovered too");
});

t.test("the zero-index bug (X-Consul-Index: 0) does not become a busy loop; the next call uses index 1", async (t) => {
  const d = await double(t);
  d.setInstances("db", [{ id: "db-1", address: "10.0.0.5", port: 21000 }]);
  const h = harness(t, d, { request: WEB_WITH_DB });
  await h.start();
  await d.waitForHeld("/v1/health/connect/db");
  d.zeroIndexBug(true);
  const mark = d.requests.length;
  let smark = h.snapshots.length;
  d.setInstances("db", [{ id: "db-2", address: "10.0.0.6", port: 21000 }]);
  await h.snapshots.next((x) => endpointsOf(x, "db")[0]?.id === "db-2", "the change answered with index 0", smark);
  const next = await d.waitForRequest(after(d, mark, (r) => r.path === "/v1/health/connect/db"));
  t.equal(next.query["index"], "1", "the call after an index-0 answer blocks on index 1 (§2.0), not 0");

  // A busy loop would be held back only by the token bucket (5 + 1/s per watch); a correct
  // client sends about one call per watch per wait (2 s) here.
  const windowMs = 4000;
  const start = d.requests.length;
  await new Promise((r) => setTimeout(r, windowMs));
  const inWindow = d.requests.slice(start);
  const perPath = new Map<string, number>();
  for (const r of inWindow) perPath.set(r.path, (perPath.get(r.path) ?? 0) + 1);
  t.ok(inWindow.length <= 15, `${inWindow.length} calls in ${windowMs} ms across 5 watches`);
  for (const [path, n] of perPath) t.ok(n <= 3, `${path}: ${n} calls in ${windowMs} ms`);
  t.ok(inWindow.every((r) => r.query["index"] === "1"), "every call in the window blocks on index 1");

  smark = h.snapshots.length;
  d.setInstances("db", [{ id: "db-3", address: "10.0.0.7", port: 21000 }]);
  await h.snapshots.next((x) => endpointsOf(x, "db")[0]?.id === "db-3", "a change while the bug is on", smark);
  t.pass("changes still arrive while the agent answers index 0");
  d.zeroIndexBug(false);
  smark = h.snapshots.length;
  d.setInstances("db", [{ id: "db-4", address: "10.0.0.8", port: 21000 }]);
  await h.snapshots.next((x) => endpointsOf(x, "db")[0]?.id === "db-4", "a change after the bug is gone", smark);
  const real = await d.waitForRequest(after(d, d.requests.length, (r) => r.path === "/v1/health/connect/db"));
  t.ok(Number(real.query["index"]) > 1, `and the real index is used again (${real.query["index"]})`);
});

t.test("a wrong ACL token: 403s are reported with a hint about the token, and no Snapshot is made", async (t) => {
  const d = await double(t, { token: "s3cret" });
  const h = harness(t, d, { request: WEB_WITH_DB, token: "wrong" });
  const started = h.start();
  for (const resource of ["roots", "leaf", "intentions", "health"]) {
    const e = await h.errors.next((x) => x.resource === resource, `a ${resource} error`, 0);
    t.match(e.message, /HTTP 403: ACL not found \(the agent does not know the ACL token from -token: deleted, expired or another cluster's; check that source\)$/, `${resource}: 403 with the token hint`);
    t.notOk(e.fatal, "retried, not fatal");
  }
  t.equal(h.snapshots.length, 0, "no Snapshot from a control plane that cannot read");
  t.ok(d.requests.every((r) => r.token === "wrong"), "the token is sent as X-Consul-Token on every call");
  d.setToken("wrong");
  await started;
  t.equal(h.snapshots.length, 1, "once the agent accepts the token, the first Snapshot comes");
});

t.test("500s, garbage and reset connections: errors are reported, the last Snapshot stays, changes flow once the fault clears", async (t) => {
  const d = await double(t);
  d.setInstances("db", [{ id: "db-1", address: "10.0.0.5", port: 21000 }]);
  const h = harness(t, d, { request: WEB_WITH_DB });
  await h.start();

  /** Sets a fault and makes a change that the failing watch cannot deliver until it clears. */
  const outage = async (prefix: string, kind: "500" | "garbage" | "reset", resource: string, change: () => Promise<void> | void, delivered: (s: Snapshot) => boolean) => {
    d.fault(prefix, kind);
    const first = await h.errors.next((e) => e.resource === resource, `a ${resource} error (${kind})`);
    const smark = h.snapshots.length;
    await change();
    const emark = h.errors.length;
    await h.errors.next((e) => e.resource === resource, "a retry failing after the change", emark);
    await h.errors.next((e) => e.resource === resource, "another failing retry", emark + 1);
    // Other watches may still deliver (the agent re-issues a leaf lazily after a root change).
    t.notOk(h.snapshots.items.slice(smark).some(delivered), `${kind} on ${prefix}: no Snapshot carries the change while it fails`);
    t.notOk(delivered(h.latest()), "the last Snapshot keeps the old value");
    d.fault(prefix, "none");
    await h.snapshots.next(delivered, `the change after ${kind} clears`, smark);
    t.pass(`${kind}: the change arrives once the fault clears`);
    return first;
  };

  const e500 = await outage("/v1/health/connect/", "500", "health", () => d.setInstances("db", [{ id: "db-2", address: "10.0.0.6", port: 21000 }]), (s) => endpointsOf(s, "db")[0]?.id === "db-2");
  t.match(e500.message, /^health: GET \/v1\/health\/connect\/db: HTTP 500: rpc error making call: No cluster leader$/, "the 500 names the endpoint and the agent's text");

  const reset = await outage("/v1/connect/intentions/match", "reset", "intentions", () => d.setIntentions("web", [{ source: "api", action: "deny" }]), (s) => s.intentions.intentions.length === 1);
  t.match(reset.message, /^intentions: /, "a cut connection is reported");
  const garbage = await outage("/v1/agent/connect/ca/roots", "garbage", "roots", async () => void (await d.rotateRoots({ reissueLeafs: false })), (s) => s.trust.rootsPem.length === 2);
  t.match(garbage.message, /^roots: GET \/v1\/agent\/connect\/ca\/roots: malformed JSON from the agent/, "garbage JSON is an error naming the endpoint");

  t.ok(h.errors.items.every((e) => !e.fatal), "none of it is fatal");
});

t.test("a stalled agent: the client's deadline fires, the error is reported, other watches go on, and the stalled one recovers", async (t) => {
  const d = await double(t);
  d.setInstances("db", [{ id: "db-1", address: "10.0.0.5", port: 21000 }]);
  const h = harness(t, d, { request: WEB_WITH_DB, waitMs: 200 });
  await h.start();
  d.fault("/v1/connect/intentions/match", "stall");
  const started = Date.now();
  const e = await h.errors.next((x) => x.resource === "intentions", "the deadline error", 0, 15_000);
  t.match(e.message, /^intentions: GET \/v1\/connect\/intentions\/match: no answer within 5 s \(agent stalled\?\)$/, "the deadline turns a stall into an error");
  t.ok(Date.now() - started < 8000, `reported ${Date.now() - started} ms after the stall began (wait 200 ms + jitter + 5 s margin)`);
  d.setIntentions("web", [{ source: "api", action: "deny" }]);

  const smark = h.snapshots.length;
  d.setInstances("db", [{ id: "db-2", address: "10.0.0.6", port: 21000 }]);
  const s = await h.snapshots.next((x) => endpointsOf(x, "db")[0]?.id === "db-2", "a health change during the stall", smark);
  t.same(s.intentions.intentions, [], "other watches still deliver; the stalled one's last value stays");

  d.fault("/v1/connect/intentions/match", "none");
  await h.snapshots.next((x) => x.intentions.intentions.length === 1, "the intention after the stall clears", smark);
  t.pass("the stalled watch delivers once the agent answers again");
});

t.test("the first Snapshot waits for roots, leaf, intentions and every upstream's health", async (t) => {
  const pieces = [
    ["/v1/agent/connect/ca/roots", "roots"],
    ["/v1/agent/connect/ca/leaf/web", "the leaf"],
    ["/v1/connect/intentions/match", "intentions"],
    ["/v1/health/connect/db", "db's health"],
    ["/v1/health/connect/cache", "cache's health"],
  ] as const;
  for (const [prefix, what] of pieces) {
    await t.test(`while ${what} is stalled`, async (t) => {
      const d = await double(t);
      d.setInstances("db", [{ id: "db-1", address: "10.0.0.5", port: 21000 }]);
      d.setInstances("cache", [{ id: "cache-1", address: "10.0.0.7", port: 21003 }]);
      d.fault(prefix, "stall");
      const h = harness(t, d, {
        request: { service: "web", upstreams: [{ name: "db", bind: { host: "127.0.0.1", port: 9191 } }, { name: "cache", bind: { host: "127.0.0.1", port: 9292 } }] },
      });
      let resolved = false;
      const started = h.start().then(() => void (resolved = true));
      await d.waitForHeld(prefix);
      // Every other piece has answered once: its blocking follow-up is held.
      for (const [other] of pieces) if (other !== prefix) await d.waitForHeld(other);
      await d.waitForHeld("/v1/discovery-chain/", 2);
      t.equal(h.snapshots.length, 0, "no Snapshot without it");
      t.notOk(resolved, "start() has not resolved");
      d.clearFaults();
      await started;
      t.equal(h.snapshots.length, 1, "it arrives: one complete Snapshot");
      const s = h.latest();
      t.same(Object.values(s.clusters).map((c) => c.service).sort(), ["cache", "db"]);
      t.equal(s.version, 1);
    });
  }
});

t.test("-register: announce registers a connect-proxy with a TTL check; withdraw deregisters", async (t) => {
  const d = await double(t);
  const h = harness(t, d, { request: WEB_WITH_DB, register: { idSuffix: "a" } });
  await h.start();
  await h.cp.announce({ address: "127.0.0.1", port: 21000, protocol: "tcp" });
  const put = d.requests.find((r) => r.method === "PUT" && r.path === "/v1/agent/service/register");
  t.ok(put, "PUT /v1/agent/service/register");
  const body: unknown = JSON.parse(put?.body ?? "null");
  t.match(body, {
    Kind: "connect-proxy",
    ID: "web-proxy-a",
    Name: "web-proxy",
    Address: "127.0.0.1",
    Port: 21000,
    Proxy: {
      DestinationServiceName: "web",
      LocalServiceAddress: "127.0.0.1",
      LocalServicePort: 8080,
      Upstreams: [{ DestinationType: "service", DestinationName: "db", LocalBindAddress: "127.0.0.1", LocalBindPort: 9191 }],
    },
    Check: { CheckID: "web-proxy-a-ttl", Name: "proxy heartbeat", TTL: "30s", Status: "passing" },
  }, "the body Consul's -register sends (ID <service>-proxy-<register-id>)");
  t.equal(d.service("web-proxy-a")?.Kind, "connect-proxy", "the agent has it");
  t.equal(d.checkStatus("web-proxy-a-ttl"), "passing", "its TTL check starts passing");
  const watcher = harness(t, d, { request: { service: "api", upstreams: [{ name: "web", bind: { host: "127.0.0.1", port: 9393 } }] } });
  await watcher.start();
  t.same(endpointsOf(watcher.latest(), "web"), [{ id: "web-proxy-a", host: "127.0.0.1", port: 21000, healthy: true }], "and another proxy discovers it through /v1/health/connect/web");

  const wmark = watcher.snapshots.length;
  await h.cp.withdraw();
  t.ok(d.requests.some((r) => r.method === "PUT" && r.path === "/v1/agent/service/deregister/web-proxy-a"), "PUT /v1/agent/service/deregister/<id>");
  t.equal(d.service("web-proxy-a"), undefined, "withdraw() removed it");
  await watcher.snapshots.next((x) => endpointsOf(x, "web").length === 0, "the instance leaving", wmark);
  t.pass("and the other proxy sees it leave");

  const plain = harness(t, d, { request: WEB_WITH_DB });
  await plain.start();
  const n = d.requestsTo("/v1/agent/service/register").length;
  await plain.cp.announce({ address: "127.0.0.1", port: 21000, protocol: "tcp" });
  t.equal(d.requestsTo("/v1/agent/service/register").length, n, "without -register, announce registers nothing");
});

t.test("-register with -listen :port (every interface): no Address, so the agent fills in the node's, as Consul's built-in proxy", async (t) => {
  const d = await double(t);
  const h = harness(t, d, { request: WEB_WITH_DB, register: {} });
  await h.start();
  await h.cp.announce({ address: "127.0.0.1", port: 21000, protocol: "tcp", wildcard: true });
  const put = d.requests.find((r) => r.method === "PUT" && r.path === "/v1/agent/service/register");
  const body = JSON.parse(put?.body ?? "null") as { Address?: unknown; Port?: unknown };
  t.equal(body.Address, "", "Address empty, not 127.0.0.1 (which would send other hosts' sidecars to their own loopback)");
  t.equal(body.Port, 21000);
  const watcher = harness(t, d, { request: { service: "api", upstreams: [{ name: "web", bind: { host: "127.0.0.1", port: 9393 } }] } });
  await watcher.start();
  t.same(endpointsOf(watcher.latest(), "web").map((e) => e.port), [21000], "other proxies find it at the node's address");

  const d2 = await double(t);
  const pinned = harness(t, d2, { request: WEB_WITH_DB, register: {} });
  await pinned.start();
  await pinned.cp.announce({ address: "10.0.0.5", port: 21000, protocol: "tcp" });
  const put2 = d2.requests.find((r) => r.method === "PUT" && r.path === "/v1/agent/service/register");
  t.equal((JSON.parse(put2?.body ?? "null") as { Address?: unknown }).Address, "10.0.0.5", "an address given in -listen is registered as it is");
});

t.test("-register heartbeat: the TTL check is passed every TTL/3, and a lost registration is put back", async (t) => {
  const d = await double(t);
  const client = new AgentClient({ httpAddr: d.url });
  t.teardown(() => client.close());
  const reg = new ProxyRegistrar({
    client,
    logger: silentLogger,
    service: "db",
    idSuffix: undefined,
    address: "127.0.0.1",
    port: 21001,
    localApp: { host: "127.0.0.1", port: 5432 },
    upstreams: [],
    node: "test",
    ttlMs: 3000,
  });
  let deregistered = false;
  t.teardown(async () => {
    if (!deregistered) await reg.deregister();
  });
  // Taken before register(): its interval timer starts inside the call, so the k-th heartbeat
  // cannot be sent before k × TTL/3 after this (a timer never fires early; a busy machine only
  // makes it late). The upper bound is the TTL itself: a later beat would let the check lapse.
  const registering = Date.now();
  await reg.register();
  t.equal(reg.id, "db-proxy", "ID <service>-proxy without -register-id");
  t.equal(d.checkStatus("db-proxy-ttl"), "passing");
  const isPass = (r: RecordedRequest) => r.method === "PUT" && r.path === "/v1/agent/check/pass/db-proxy-ttl";
  const first = await d.waitForRequest(isPass, 10_000);
  const second = await d.waitForRequest(after(d, d.requests.indexOf(first) + 1, isPass), 10_000);
  const third = await d.waitForRequest(after(d, d.requests.indexOf(second) + 1, isPass), 10_000);
  const gaps = [first.at - registering, second.at - first.at, third.at - second.at];
  t.ok(first.at - registering >= 950, `no heartbeat before TTL/3 (the first came ${first.at - registering} ms after register() began)`);
  t.ok(third.at - registering >= 2950, `not more often than every TTL/3 (the third came ${third.at - registering} ms after register() began)`);
  t.ok(gaps.every((g) => g < 3000), `each heartbeat within the 3 s TTL of the last (${gaps.join(", ")} ms), so the check never lapses`);
  t.match(d.heartbeats.slice(0, 3), [{ checkId: "db-proxy-ttl", status: "passing" }, { checkId: "db-proxy-ttl", status: "passing" }, { checkId: "db-proxy-ttl", status: "passing" }], "recorded as passing heartbeats");

  d.deregister("db-proxy");
  const mark = d.requests.length;
  const failed = await d.waitForRequest(after(d, mark, isPass), 10_000);
  const again = await d.waitForRequest(after(d, d.requests.indexOf(failed), (r) => r.method === "PUT" && r.path === "/v1/agent/service/register"), 10_000);
  t.ok(again, "a heartbeat the agent rejects (404) re-registers the proxy");
  t.ok(await waitUntil(() => d.service("db-proxy") !== undefined, 2000), "and the agent has it again");

  await reg.deregister();
  deregistered = true;
  t.equal(d.service("db-proxy"), undefined, "deregistered");
  const end = d.requests.length;
  await new Promise((r) => setTimeout(r, 1500));
  t.notOk(d.requests.slice(end).some(isPass), "no heartbeats after deregistration");
});

t.test("an HTTP chain from the agent (the reference's splitter to two subsets) becomes routes, splits and subset clusters", async (t) => {
  const d = await double(t);
  d.setInstances("db", [
    { id: "db-blue", address: "10.0.0.5", port: 21000, meta: { version: "blue" } },
    { id: "db-green", address: "10.0.0.6", port: 21000, meta: { version: "green" } },
  ]);
  const td = d.trustDomain;
  const dc = d.datacenter;
  const target = (subset: string): JsonObject => ({
    ID: `${subset}.db.default.default.${dc}`,
    Service: "db",
    ServiceSubset: subset,
    Namespace: "default",
    Partition: "default",
    Datacenter: dc,
    MeshGateway: {},
    Subset: { Filter: `Service.Meta.version == ${subset}`, ...(subset === "green" ? { OnlyPassing: true } : {}) },
    ConnectTimeout: "5s",
    SNI: `${subset}.db.default.${dc}.internal.${td}`,
    Name: `${subset}.db.default.${dc}.internal.${td}`,
  });
  d.setChain("db", {
    ServiceName: "db",
    Namespace: "default",
    Partition: "default",
    Datacenter: dc,
    Protocol: "http",
    StartNode: "splitter:db.default.default",
    Nodes: {
      "splitter:db.default.default": {
        Type: "splitter",
        Name: "db.default.default",
        Splits: [
          { Definition: { Weight: 80, ServiceSubset: "blue" }, Weight: 80, NextNode: `resolver:blue.db.default.default.${dc}` },
          { Definition: { Weight: 20, ServiceSubset: "green" }, Weight: 20, NextNode: `resolver:green.db.default.default.${dc}` },
        ],
      },
      [`resolver:blue.db.default.default.${dc}`]: { Type: "resolver", Name: `blue.db.default.default.${dc}`, Resolver: { ConnectTimeout: "5s", Target: `blue.db.default.default.${dc}`, Failover: { Targets: [`green.db.default.default.${dc}`] } } },
      [`resolver:green.db.default.default.${dc}`]: { Type: "resolver", Name: `green.db.default.default.${dc}`, Resolver: { ConnectTimeout: "5s", Target: `green.db.default.default.${dc}` } },
    },
    Targets: { [`blue.db.default.default.${dc}`]: target("blue"), [`green.db.default.default.${dc}`]: target("green") },
  });
  const h = harness(t, d, { request: WEB_WITH_DB });
  await h.start();
  const s = await h.snapshots.next((x) => x.upstreams[0]?.protocol === "http", "a Snapshot with the HTTP chain", 0);
  const u = s.upstreams[0]!;
  const splits = u.routes?.routes.at(-1)?.action.splits.map((x) => [x.cluster, x.weight]);
  t.same(splits, [[`blue.db.default.${dc}.internal.${td}`, 8000], [`green.db.default.${dc}.internal.${td}`, 2000]], "the splitter's 80/20 in 1/10000ths, to the subset clusters named by their SNI");
  const blue = s.clusters[`blue.db.default.${dc}.internal.${td}`];
  const green = s.clusters[`green.db.default.${dc}.internal.${td}`];
  t.same(blue?.endpoints.map((e) => e.id), ["db-blue"], "the blue subset's filter selects the blue instance");
  t.same(green?.endpoints.map((e) => e.id), ["db-green"], "and green's the green one");
  t.same(blue?.failover, [`green.db.default.${dc}.internal.${td}`], "the resolver's failover targets");
  t.equal(blue?.expectedSpiffeId, serviceSpiffeId({ trustDomain: td, namespace: "default", datacenter: dc, service: "db" }), "a subset presents its service's identity");
});

// ---- Authorization: the agent's default action, strict intentions answers, scope, L7 ----

/** The agent's authorize endpoint decides the default; these are its answers (AgentConnectAuthorize). */
const DEFAULT_CASES: ReadonlyArray<{ readonly what: string; readonly opts: ConsulAgentDoubleOptions; readonly want: "allow" | "deny" }> = [
  { what: "ACLs off, nothing set", opts: {}, want: "allow" },
  { what: "ACLs off, default_intention_policy deny", opts: { defaultIntentionPolicy: "deny" }, want: "deny" },
  { what: "ACLs off, acl.default_policy deny (the header says deny; the agent allows)", opts: { aclDefaultPolicy: "deny" }, want: "allow" },
  { what: "ACLs on, acl.default_policy deny", opts: { token: "t0k", aclDefaultPolicy: "deny" }, want: "deny" },
  { what: "ACLs on and deny, default_intention_policy allow (it wins)", opts: { token: "t0k", aclDefaultPolicy: "deny", defaultIntentionPolicy: "allow" }, want: "allow" },
  { what: "ACLs on and allow, default_intention_policy deny (it wins)", opts: { token: "t0k", defaultIntentionPolicy: "deny" }, want: "deny" },
];

t.test("default action: exactly what the agent's authorize answers for a caller no intention matches", async (t) => {
  for (const c of DEFAULT_CASES) {
    await t.test(c.what, async (t) => {
      const d = await double(t, c.opts);
      d.setIntentions("web", [{ source: "api", action: "deny" }]);
      const h = harness(t, d, { request: WEB_WITH_DB, ...(c.opts.token ? { token: c.opts.token } : {}) });
      await h.start();
      t.equal(h.latest().intentions.defaultAction, c.want, `default ${c.want}`);
      const probe = d.requestsTo("/v1/agent/connect/authorize")[0];
      t.ok(probe, "asked the agent's authorize endpoint");
      t.match(probe?.body, /"Target":"web"/, "for this service");
      t.match(probe?.body, /\/ns\/default\/dc\/dc1\/svc\/meshproxy-default-action-probe"/, "as a local caller no intention names");
      t.equal(d.authorize("meshproxy-default-action-probe", "default", "web").Authorized, c.want === "allow", "which is the double's own answer");
    });
  }
});

t.test("default action: authorize refused → /v1/agent/self; neither → deny, reported once; learned again when the agent answers", async (t) => {
  const d = await double(t, { defaultIntentionPolicy: "deny" });
  d.fault("/v1/agent/connect/authorize", "403");
  const h = harness(t, d, { request: WEB_WITH_DB, defaultActionRefreshMs: 100 });
  await h.start();
  t.equal(h.latest().intentions.defaultAction, "deny", "default_intention_policy read from DebugConfig");
  t.ok(d.requestsTo("/v1/agent/self").length > 0, "from /v1/agent/self");
  t.equal(h.errors.items.filter((e) => e.resource === "default-action").length, 0, "one way answering is enough: no error");

  const d2 = await double(t, { defaultIntentionPolicy: "allow" });
  d2.fault("/v1/agent/connect/authorize", "500");
  d2.fault("/v1/agent/self", "403");
  const h2 = harness(t, d2, { request: WEB_WITH_DB, defaultActionRefreshMs: 100 });
  await h2.start();
  t.equal(h2.latest().intentions.defaultAction, "deny", "cannot be learned: deny (fail closed), and still a Snapshot");
  const e = await h2.errors.next((x) => x.resource === "default-action", "a default-action error", 0);
  t.match(e.message, /cannot learn the agent's default intention action \(POST \/v1\/agent\/connect\/authorize: .*HTTP 500.*; GET \/v1\/agent\/self: .*HTTP 403.*\); denying callers no intention matches$/, "naming both ways and what it does instead");
  await until(() => d2.requestsTo("/v1/agent/connect/authorize").length >= 4, 5000, "a few more attempts");
  t.equal(h2.errors.items.filter((x) => x.resource === "default-action").length, 1, "reported once, not per attempt");
  const mark = h2.snapshots.length;
  d2.clearFaults();
  const s = await h2.snapshots.next((x) => x.intentions.defaultAction === "allow", "a Snapshot with the learned default", mark);
  t.equal(s.intentions.defaultAction, "allow", "learned once the agent answers");
});

t.test("default action: wildcard intentions move the probe to another namespace, or to /v1/agent/self", async (t) => {
  const d = await double(t, { defaultIntentionPolicy: "deny" });
  d.setIntentions("web", [{ source: "*", action: "allow" }]);
  const h = harness(t, d, { request: WEB_WITH_DB });
  await h.start();
  t.equal(h.latest().intentions.defaultAction, "deny");
  t.match(d.requestsTo("/v1/agent/connect/authorize")[0]?.body, /\/ns\/meshproxy-default-action-probe\//, "`*` covers every local caller: the probe comes from a namespace no intention names");

  const d2 = await double(t, { defaultIntentionPolicy: "deny" });
  d2.setIntentions("web", [{ source: "*", sourceNamespace: "*", action: "allow" }]);
  const h2 = harness(t, d2, { request: WEB_WITH_DB });
  await h2.start();
  t.equal(d2.requestsTo("/v1/agent/connect/authorize").length, 0, "*/* covers every caller in the partition: no probe is asked");
  t.ok(d2.requestsTo("/v1/agent/self").length > 0, "the config is read instead");
  t.equal(h2.latest().intentions.defaultAction, "deny");
});

t.test("scope: intentions keep their source peer, partition and namespace; callers are matched on their whole identity", async (t) => {
  const d = await double(t, { defaultIntentionPolicy: "deny" });
  d.setIntentions("web", [
    { source: "api", sourcePeer: "other", action: "allow" },
    { source: "api", sourceNamespace: "ns2", action: "allow" },
    { source: "ops", sourcePartition: "part2", action: "allow" },
    { source: "db", action: "allow" },
    { source: "*", sourceNamespace: "*", action: "deny" },
    { source: "mallory", destinationNamespace: "ns3", action: "allow" },
  ]);
  const h = harness(t, d, { request: WEB_WITH_DB });
  await h.start();
  const s = h.latest();
  t.same(
    s.intentions.intentions,
    [
      { source: "api", destination: "web", action: "allow", sourcePeer: "other" },
      { source: "api", destination: "web", action: "allow", sourceNamespace: "ns2" },
      { source: "ops", destination: "web", action: "allow", sourcePartition: "part2" },
      { source: "db", destination: "web", action: "allow" },
      { source: "*", destination: "web", action: "deny", sourceNamespace: "*" },
    ],
    "the scope is kept; an intention for web in another namespace (ns3) does not govern this web",
  );
  const authz = new CompiledIntentions(s.intentions, "web", scopeOf(s.identity));
  const caller = (service: string, namespace = "default", partition = "default") => authz.authorize({ service, namespace, partition }).allowed;
  t.notOk(caller("api"), "a SourcePeer intention never matches a local caller");
  t.ok(caller("api", "ns2"), "ns2/api is allowed by its namespace-scoped intention");
  t.notOk(caller("ops"), "a SourcePartition intention does not match default/ops");
  t.ok(caller("ops", "default", "part2"), "it matches part2/default/ops");
  t.ok(caller("db"), "an unscoped intention matches the local namespace");
  t.notOk(caller("db", "ns2"), "but not ns2/db");
  t.notOk(caller("mallory"), "the ns3 intention does not let mallory in");
  t.equal(authz.authorize({ service: "db", namespace: "ns2", partition: "default" }).reason, "Matched L4 intention: * => web (deny)", "*/* applies to every namespace");
});

/** Answers the agent should never give, each a 200. */
const MALFORMED_MATCH: ReadonlyArray<{ readonly what: string; readonly body: string; readonly error: RegExp }> = [
  { what: "an empty body", body: "", error: /\$: want a JSON object/ },
  { what: "null", body: "null", error: /\$: want a JSON object/ },
  { what: "no entry for the service", body: "{}", error: /\$\.web: missing/ },
  { what: "the entry not a list", body: '{"web":{}}', error: /\$\.web: want an array/ },
  { what: "SourceName a number", body: '{"web":[{"SourceName":5,"DestinationName":"web","Action":"allow"}]}', error: /\$\.web\[0\]\.SourceName: want a string, got 5/ },
  { what: "SourceName missing", body: '{"web":[{"DestinationName":"web","Action":"allow"}]}', error: /\$\.web\[0\]\.SourceName: want a string/ },
  { what: "an unknown Action", body: '{"web":[{"SourceName":"api","DestinationName":"web","Action":"maybe"}]}', error: /\$\.web\[0\]\.Action: "maybe" is not allow or deny/ },
  { what: "a permission without HTTP", body: '{"web":[{"SourceName":"api","DestinationName":"web","Permissions":[{"Action":"allow"}]}]}', error: /Permissions\[0\]\.HTTP: is required/ },
  { what: "a permission with an unknown Action", body: '{"web":[{"SourceName":"api","DestinationName":"web","Permissions":[{"Action":"yes","HTTP":{}}]}]}', error: /Permissions\[0\]\.Action: want "allow" or "deny"/ },
  { what: "Permissions not a list", body: '{"web":[{"SourceName":"api","DestinationName":"web","Permissions":{"Action":"allow"}}]}', error: /Permissions: want an array/ },
  { what: "a permission regex that does not compile", body: '{"web":[{"SourceName":"api","DestinationName":"web","Permissions":[{"Action":"allow","HTTP":{"PathRegex":"("}}]}]}', error: /\$\.web\[0\]\.permissions\[0\]\.path\.regex/ },
];

t.test("intentions answers are read strictly: a malformed first one makes no Snapshot; a later one keeps the last good", async (t) => {
  for (const m of MALFORMED_MATCH) {
    await t.test(m.what, async (t) => {
      const d = await double(t, { defaultIntentionPolicy: "deny" });
      d.setIntentions("web", [{ source: "api", action: "allow" }]);
      d.fault("/v1/connect/intentions/match", `body:${m.body}`);
      const h = harness(t, d, { request: WEB_WITH_DB });
      h.start().catch(ignoreRejection("the first Snapshot is awaited below: a start() that fails shows as its timeout"));
      const e = await h.errors.next((x) => x.resource === "intentions", "an intentions error", 0);
      t.match(e.message, m.error, `reported: ${e.message}`);
      await until(() => d.requestsTo("/v1/connect/intentions/match").length >= 3, 5000, "the answer to be asked for again");
      t.equal(h.snapshots.length, 0, "no Snapshot: nothing is served, nothing allowed");
      d.fault("/v1/connect/intentions/match", "none");
      await h.snapshots.next(() => true, "the first Snapshot once the answer is good");
      t.same(h.latest().intentions, { defaultAction: "deny", intentions: [{ source: "api", destination: "web", action: "allow" }] });
      const mark = h.snapshots.length;
      const emark = h.errors.length;
      // The held query is answered by its wait running out (unchanged); the next one gets the fault.
      d.fault("/v1/connect/intentions/match", `body:${m.body}`);
      await h.errors.next((x) => x.resource === "intentions", "an intentions error for the later answer", emark);
      const asked = d.requestsTo("/v1/connect/intentions/match").length;
      await until(() => d.requestsTo("/v1/connect/intentions/match").length >= asked + 2, 5000, "the answer to be asked for again");
      t.equal(h.snapshots.length, mark, "no new Snapshot: the last good intentions stay in force");
      t.same(h.latest().intentions.intentions, [{ source: "api", destination: "web", action: "allow" }]);
    });
  }
});

t.test("L7: permissions reach the Snapshot; one requiring a JWT (not verified here) is made deny", async (t) => {
  const d = await double(t);
  d.setIntentions("web", [
    {
      source: "api",
      permissions: [
        { Action: "allow", HTTP: { PathPrefix: "/admin" }, JWT: { Providers: [{ Name: "okta" }] } },
        { Action: "allow", HTTP: { PathPrefix: "/", Methods: ["GET"], Header: [{ Name: "X-Team", Exact: "a" }] } },
      ],
    },
  ]);
  const h = harness(t, d, { request: WEB_WITH_DB });
  await h.start();
  t.same(h.latest().intentions.intentions[0]?.permissions, [
    { action: "deny", path: { kind: "prefix", value: "/admin" }, headers: [], methods: [] },
    { action: "allow", path: { kind: "prefix", value: "/" }, headers: [{ name: "x-team", exact: "a" }], methods: ["GET"] },
  ]);
});
