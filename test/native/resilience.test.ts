// A native client's requests go through the sidecar's router (outbound/http-router.ts forward):
// a route's retry policy, its timeout, header mutations and prefix rewrite, and the cluster's
// request breaker apply to `fetch` with the Service's dispatcher as they do to an app behind a
// sidecar.
import t from "tap";
import { fetch, request } from "undici";
import { tempDir } from "../helpers/mesh.js";
import { configWrite } from "../helpers/l7.js";
import { sample } from "../helpers/peers.js";
import { fetchUntil, serve, service } from "../helpers/native.js";

t.test("routes' retries, timeouts, header mutations, rewrites and the request breaker apply to native clients", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  await configWrite(t, dir, { Kind: "service-defaults", Name: "web", Protocol: "http", UpstreamConfig: { Overrides: [{ Name: "api", Limits: { MaxConcurrentRequests: 2 } }] } });
  await configWrite(t, dir, {
    Kind: "service-router",
    Name: "api",
    Routes: [
      { Match: { HTTP: { PathPrefix: "/flaky" } }, Destination: { NumRetries: 2, RetryOn: ["5xx"] } },
      { Match: { HTTP: { PathPrefix: "/slow" } }, Destination: { RequestTimeout: "300ms" } },
      { Match: { HTTP: { PathPrefix: "/old/" } }, Destination: { PrefixRewrite: "/new/", RequestHeaders: { Set: { "x-route": "old" } }, ResponseHeaders: { Add: { "x-served-by": "api" } } } },
    ],
  });
  const api = await service(t, { name: "api", dataDir: dir });
  const web = await service(t, { name: "web", dataDir: dir });
  let flaky = 0;
  const served = await serve(t, api, (req, res) => {
    const url = req.url ?? "";
    if (url.startsWith("/flaky")) {
      flaky++;
      res.writeHead(flaky <= 2 ? 503 : 200);
      return res.end(`attempt ${flaky}`);
    }
    if (url.startsWith("/slow") || url.startsWith("/hold")) {
      const timer = setTimeout(() => res.end("late"), url.startsWith("/slow") ? 3_000 : 400);
      res.on("close", () => clearTimeout(timer));
      return;
    }
    res.end(`${url} x-route=${String(req.headers["x-route"])}`);
  });
  await fetchUntil(web, "https://api.service.consul/ready");

  // undici's request() (classic handler callbacks) as well as fetch: head, body and end arrive.
  const viaRequest = await request("https://api.service.consul/plain", { dispatcher: web.dispatcher() });
  t.equal(`${viaRequest.statusCode} ${await viaRequest.body.text()}`, "200 /plain x-route=undefined", "undici.request() gets the whole answer");

  const retried = await fetch("https://api.service.consul/flaky", { dispatcher: web.dispatcher() });
  t.equal(retried.status, 200, "NumRetries 2 on 5xx: two 503s are retried, the third attempt's 200 comes back");
  t.equal(await retried.text(), "attempt 3", "the app was called three times");
  const text = await web.metrics.registry.metrics();
  t.ok((sample(text, "envoy_cluster_upstream_rq_retry", {}) ?? 0) >= 2, "envoy_cluster_upstream_rq_retry counted the retries on web's Service");

  const t0 = performance.now();
  const slow = await fetch("https://api.service.consul/slow", { dispatcher: web.dispatcher() });
  const ms = performance.now() - t0;
  t.equal(slow.status, 504, "RequestTimeout 300ms with an app taking 3 s: 504");
  t.equal(slow.headers.get("x-meshproxy-response-flags"), "UT", "flag UT");
  t.ok(ms < 2_000, `given up near the route's timeout (${Math.round(ms)} ms)`);

  const moved = await fetch("https://api.service.consul/old/thing", { dispatcher: web.dispatcher() });
  t.equal(await moved.text(), "/new/thing x-route=old", "the route's prefix rewrite and request header mutation reach the app");
  t.equal(moved.headers.get("x-served-by"), "api", "the route's response header mutation reaches the client");

  const before = served.seen.length;
  const burst = await Promise.all(Array.from({ length: 5 }, () => fetch("https://api.service.consul/hold", { dispatcher: web.dispatcher() })));
  const statuses = burst.map((r) => r.status).sort();
  t.same(statuses, [200, 200, 503, 503, 503], "MaxConcurrentRequests 2 with 5 concurrent requests: 2 are served, 3 refused");
  t.ok(burst.filter((r) => r.status === 503).every((r) => r.headers.get("x-meshproxy-response-flags") === "UO"), "each refusal has flag UO");
  t.equal(served.seen.length - before, 2, "the refused requests never reached the app");
  await Promise.all(burst.map((r) => r.text()));
  const after = await fetch("https://api.service.consul/hold", { dispatcher: web.dispatcher() });
  t.equal(after.status, 200, "the breaker's slots are given back");
});
