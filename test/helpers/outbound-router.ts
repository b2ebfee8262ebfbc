// The outbound router's parts, in-process, for tests that drive it against real mTLS peers: web's
// cluster for api, api's route table with one catch-all route to it, and an upstream listener on
// the HTTP/1 core serving that table. Each returns its own close, so a test tears down in the
// order it needs (listener, then cluster and pools, then its peers).
import { once } from "node:events";
import { createServer as createNetServer, type AddressInfo } from "node:net";
import { HttpRouter, type OutboundHttpState } from "../../src/outbound/http-router.js";
import { OutboundHttp1 } from "../../src/outbound/http1-outbound.js";
import { ClusterRuntime } from "../../src/cluster/runtime.js";
import { compileCluster } from "../../src/compile/cluster.js";
import { compileRouteTable, type CompiledRouteTable } from "../../src/compile/routes.js";
import { PoolSet } from "../../src/cluster/pools.js";
import { SessionCache } from "../../src/tls/origin.js";
import type { TlsMaterial } from "../../src/tls/contexts.js";
import { Metrics } from "../../src/telemetry/metrics.js";
import { AccessLog } from "../../src/telemetry/access-log.js";
import { silentLogger } from "../../src/telemetry/log.js";
import { DEFAULT_LIMITS, DEFAULT_OUTLIER_DETECTION, NO_HEADER_MUTATION, NO_RETRIES, type RouteAction } from "../../src/config/http.js";
import { sni, spiffe } from "./mesh-tls.js";

export interface ApiCluster {
  /** The clusters by name, as a route table and OutboundHttpState take them: api alone. */
  readonly clusters: ReadonlyMap<string, ClusterRuntime>;
  /** Closes the cluster and its connection pools. */
  close(): Promise<void>;
}

/** web's cluster for api: one endpoint at 127.0.0.1:`port`, expecting api's identity. */
export function apiCluster(tls: TlsMaterial, port: number, opts: { readonly http2?: boolean; readonly maxConnections?: number } = {}): ApiCluster {
  const pools = new PoolSet(new SessionCache());
  const runtime = new ClusterRuntime(
    compileCluster(
      {
        name: "api",
        service: "api",
        namespace: "default",
        datacenter: "dc1",
        sni: sni("api"),
        expectedSpiffeId: spiffe("api"),
        endpoints: [{ host: "127.0.0.1", port, healthy: true, id: "api-1", meta: {} }],
        limits: { ...DEFAULT_LIMITS, ...(opts.maxConnections ? { maxConnections: opts.maxConnections } : {}) },
        outlierDetection: DEFAULT_OUTLIER_DETECTION,
      },
      opts.http2 ?? false,
    ),
    tls,
    pools,
  );
  return {
    clusters: new Map([["api", runtime]]),
    close: async () => {
      runtime.close();
      await pools.closeAll();
    },
  };
}

/** api's route table: one catch-all route to cluster api (5 s timeout, no retries, no header mutation unless `action` says otherwise). */
export function apiRoutes(clusters: ReadonlyMap<string, ClusterRuntime>, action: Partial<RouteAction> = {}): CompiledRouteTable {
  return compileRouteTable(
    "upstreams[api].routes",
    {
      routes: [
        {
          match: { path: { kind: "prefix", value: "/" }, headers: [], queryParams: [], methods: [] },
          action: {
            splits: [{ cluster: "api", weight: 10_000, requestHeaders: NO_HEADER_MUTATION, responseHeaders: NO_HEADER_MUTATION }],
            timeoutMs: 5_000,
            idleTimeoutMs: 10_000,
            retry: NO_RETRIES,
            requestHeaders: NO_HEADER_MUTATION,
            responseHeaders: NO_HEADER_MUTATION,
            ...action,
          },
        },
      ],
    },
    (name) => clusters.has(name),
  );
}

export interface OutboundHttp1Listener {
  readonly port: number;
  /** The sidecar's metrics the router counts in. */
  readonly metrics: Metrics;
  /** Destroys the listener's connections and stops it accepting. */
  close(): void;
}

/** web's upstream listener for api on the HTTP/1 core: the router over `state`, on 127.0.0.1, a port of its own. */
export async function listenOutboundHttp1(state: OutboundHttpState): Promise<OutboundHttp1Listener> {
  const metrics = new Metrics({ processMetrics: false });
  const obs = { tracing: null, accessLog: new AccessLog("off") };
  const router = new HttpRouter(silentLogger, metrics.http, obs, metrics.outboundRejected);
  const core = new OutboundHttp1({ state: () => state, hcm: () => metrics.filters.httpConnManager(null, "127.0.0.1_0"), upgrade: (_req, socket) => socket.destroy() }, router, obs, silentLogger, metrics.configErrors);
  // As the upstream listener does: a client's reset is the end of its connection, not a crash.
  const server = createNetServer({ allowHalfOpen: true }, (s) => {
    s.on("error", () => s.destroy());
    core.accept(s);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    port: (server.address() as AddressInfo).port,
    metrics,
    close: () => {
      core.destroyAll();
      server.close();
    },
  };
}
