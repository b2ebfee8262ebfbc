// The concrete stage's passthrough pipe: plain TCP through the same selection, retry, breaker and
// accounting as the sidecar's mTLS streams, with no TLS of its own.
import t from "tap";
import { once } from "node:events";
import { createServer, type AddressInfo, type Socket } from "node:net";
import { ClusterRuntime } from "../../src/cluster/runtime.js";
import { PoolSet } from "../../src/cluster/pools.js";
import { compileCluster } from "../../src/compile/cluster.js";
import { SessionCache } from "../../src/tls/origin.js";
import { createSecureContext } from "node:tls";
import { DEFAULT_LIMITS, DEFAULT_OUTLIER_DETECTION } from "../../src/config/http.js";
import type { Cluster, Endpoint } from "../../src/config/snapshot.js";
import { openPipe, type OpenPipe, type StreamFailure } from "../../src/outbound/concrete.js";
import type { Teardown } from "../helpers/mesh.js";

const NO_TLS = { key: "none", identityKey: "none", options: {}, clientContext: createSecureContext() };

/** A plain TCP server that echoes and counts what it accepted. */
async function echo(t: Teardown): Promise<{ port: number; accepted: () => number }> {
  let n = 0;
  const open = new Set<Socket>();
  const server = createServer((s) => {
    n++;
    open.add(s);
    s.on("error", () => s.destroy());
    s.once("close", () => open.delete(s));
    s.pipe(s);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => {
    for (const s of open) s.destroy();
    server.close();
  });
  return { port: (server.address() as AddressInfo).port, accepted: () => n };
}

async function refusingPort(): Promise<number> {
  const probe = createServer();
  probe.listen(0, "127.0.0.1");
  await once(probe, "listening");
  const port = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  return port;
}

const endpoint = (port: number): Endpoint => ({ host: "127.0.0.1", port, healthy: true, id: `web-${port}`, meta: {} });

function runtime(t: Teardown, endpoints: Endpoint[], over: Partial<Cluster> = {}): ReadonlyMap<string, ClusterRuntime> {
  const c: Cluster = { name: "web", service: "web", namespace: "default", datacenter: "dc1", sni: "web.default.dc1.internal.td", expectedSpiffeId: "", endpoints, limits: DEFAULT_LIMITS, outlierDetection: { ...DEFAULT_OUTLIER_DETECTION, maxEjectionPercent: 100 }, ...over };
  const rt = new ClusterRuntime(compileCluster(c, false), NO_TLS, new PoolSet(new SessionCache()));
  t.teardown(() => rt.close());
  return new Map([["web", rt]]);
}

function open(runtimes: ReadonlyMap<string, ClusterRuntime>, failed: string[] = []): Promise<OpenPipe | StreamFailure> {
  return new Promise((resolve) => openPipe({ primary: runtimes.get("web")!, clusters: runtimes, connectTimeoutMs: 2000, wanted: () => true, attemptFailed: (_c, _h, e) => failed.push(e.kind) }, resolve));
}

function pipe(t: Teardown, r: OpenPipe | StreamFailure): OpenPipe {
  if ("flag" in r) throw new Error(`expected a pipe, got ${r.flag}: ${r.detail}`);
  t.teardown(() => r.socket.destroy());
  return r;
}

t.test("a refused host is tried again on another; the pipe carries plain bytes", async (t) => {
  const good = await echo(t);
  const dead = await refusingPort();
  const rts = runtime(t, [endpoint(dead), endpoint(good.port)]);
  const failed: string[] = [];
  // Round robin from a random start: within a few pipes one starts at the refusing host.
  const pipes: OpenPipe[] = [];
  while (failed.length === 0 && pipes.length < 4) pipes.push(pipe(t, await open(rts, failed)));
  t.same(failed, ["connect"], "a refused attempt is reported as a connect failure");
  t.same(pipes.map((x) => x.attempts).filter((n) => n > 1), [2], "and that pipe went on to another host");
  t.ok(pipes.every((x) => x.host.endpoint.port === good.port), "every pipe reached the live host");
  await Promise.all(pipes.map((x) => (x.socket.destroy(), once(x.socket, "close"))));
  const p = pipe(t, await open(rts, failed));
  p.socket.write("plain bytes");
  const [data] = (await once(p.socket, "data")) as [Buffer];
  t.equal(data.toString(), "plain bytes", "no TLS in between");
  t.equal(rts.get("web")!.hostsSnapshot().hosts.find((h) => h.port === good.port)!.activeRequests, 1, "the host's count is held while the pipe is open");
  p.socket.destroy();
  await once(p.socket, "close");
  t.equal(rts.get("web")!.hostsSnapshot().hosts.find((h) => h.port === good.port)!.activeRequests, 0, "and released when it closes");
});

t.test("every host refuses: UF after the sidecar's limit of attempts; none at all: UH", async (t) => {
  const ports = await Promise.all([refusingPort(), refusingPort(), refusingPort(), refusingPort()]);
  const failed: string[] = [];
  const r = await open(runtime(t, ports.map(endpoint)), failed);
  t.match(r, { flag: "UF" });
  t.equal(failed.length, 3, "three distinct hosts tried, as a sidecar's TCP connection");
  t.match(await open(runtime(t, [])), { flag: "UH" });
});

t.test("MaxConnections: the breaker refuses with UO while pipes are open, and frees on close", async (t) => {
  const good = await echo(t);
  const rts = runtime(t, [endpoint(good.port)], { limits: { ...DEFAULT_LIMITS, maxConnections: 1 } });
  const first = pipe(t, await open(rts));
  const second = await open(rts);
  t.match(second, { flag: "UO" }, "the second concurrent pipe is refused");
  t.equal(good.accepted(), 1, "without dialling");
  first.socket.destroy();
  await once(first.socket, "close");
  pipe(t, await open(rts));
  t.equal(good.accepted(), 2, "a slot is free again once the first pipe closed");
});
