// A request the proxy itself answers 503 UF (every connect to the cluster failed) is an error of
// that cluster on the traffic page, though no upstream response series counts it: an in-process
// proxy routes to a port nothing listens on, and /traffic.json is read from a real admin server.
import t from "tap";
import { createServer } from "node:net";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { request } from "undici";
import type { Snapshot } from "../../src/config/snapshot.js";
import { NO_HEADER_MUTATION, NO_RETRIES, type Route } from "../../src/config/http.js";
import { AdminServer } from "../../src/admin/server.js";
import { cluster, startInProcess, tcpUpstream, webIdentity } from "../helpers/in-process.js";
import type { TrafficJson } from "../helpers/traffic-mesh.js";

/** A loopback port that was just free: connects to it are refused. */
async function closedPort(): Promise<number> {
  const s = createServer().listen(0, "127.0.0.1");
  await once(s, "listening");
  const { port } = s.address() as AddressInfo;
  s.close();
  await once(s, "close");
  return port;
}

const route: Route = {
  match: { headers: [], queryParams: [], methods: [] },
  action: {
    splits: [{ cluster: "api", weight: 10_000, requestHeaders: NO_HEADER_MUTATION, responseHeaders: NO_HEADER_MUTATION }],
    timeoutMs: 15_000,
    idleTimeoutMs: 300_000,
    retry: NO_RETRIES,
    requestHeaders: NO_HEADER_MUTATION,
    responseHeaders: NO_HEADER_MUTATION,
  },
};

t.test("connection failures answered 503 UF count as requests and errors of the cluster", async (t) => {
  const { identity, trust } = await webIdentity();
  const snapshot: Snapshot = {
    version: 1,
    source: "test",
    identity,
    trust,
    publicListener: null,
    upstreams: [tcpUpstream("api", { protocol: "http", routes: { routes: [route] } })],
    clusters: { api: cluster("api", [await closedPort()]) },
    intentions: { defaultAction: "deny", intentions: [] },
  };
  const p = await startInProcess(t, snapshot);
  const admin = new AdminServer(p.proxy);
  t.teardown(() => admin.close());
  const a = await admin.listen("127.0.0.1", 0);
  const upstream = p.proxy.addresses.upstreams["api"]!;
  for (let i = 0; i < 3; i++) {
    const res = await request(`http://${upstream}/`);
    await res.body.text();
    t.equal(res.headers["x-meshproxy-response-flags"], "UF", `request ${i + 1}: 503 UF`);
  }
  const doc = (await (await request(`http://127.0.0.1:${a.port}/traffic.json`)).body.json()) as TrafficJson;
  const api = doc.services[0]?.clusters[0];
  t.match(api, { name: "api", requests_total: 3, errors_total: 3, window_requests: 3, error_rate: 1, p99_ms: null }, "3 requests, 3 errors, no response time");
  t.same(doc.weights_writable, false, "a control plane without a writer");
  t.match(doc.weights_read_only_reason, /the "test" control plane cannot write config entries/);
});
