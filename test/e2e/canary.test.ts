// The progressive-delivery story: 100 rps from a client through web's sidecar to api v1/v2 while
// the split moves 0 → 5 → 50 → 75 → 0 % to v2; then v2 fails and is ejected while retries and
// failover keep the client's error rate at zero; then v2 recovers and gets traffic again.
import t from "tap";
import { startSidecar, tempDir, type Teardown } from "../helpers/mesh.js";
import { configDump, configWrite, httpApp, load, metric, splitWeights, until, type LoadResult } from "../helpers/l7.js";

async function mesh(t: Teardown, extra: { passiveHealthCheck?: boolean } = {}) {
  const dir = await tempDir(t);
  const v1 = await httpApp(t, "v1");
  const v2 = await httpApp(t, "v2");
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  await configWrite(t, dir, {
    Kind: "service-resolver",
    Name: "api",
    DefaultSubset: "v1",
    Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2" } },
    Failover: { v2: { ServiceSubset: "v1" } },
  });
  await configWrite(t, dir, { Kind: "service-splitter", Name: "api", Splits: [{ Weight: 100, ServiceSubset: "v1" }, { Weight: 0, ServiceSubset: "v2" }] });
  if (extra.passiveHealthCheck) {
    await configWrite(t, dir, {
      Kind: "service-defaults",
      Name: "web",
      Protocol: "http",
      UpstreamConfig: { Overrides: [{ Name: "api", PassiveHealthCheck: { Interval: "500ms", MaxFailures: 3, MaxEjectionPercent: 100, BaseEjectionTime: "5s" } }] },
    });
    await configWrite(t, dir, {
      Kind: "service-router",
      Name: "api",
      Routes: [{ Match: { HTTP: { PathPrefix: "/" } }, Destination: { NumRetries: 2, RetryOn: ["5xx"] } }],
    });
  }
  await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${v1.port}`, "-meta", "version=v1"]);
  await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${v2.port}`, "-meta", "version=v2"]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0", "-log-level", process.env["CANARY_DEBUG"] ? "debug" : "info"]);
  const url = `http://${web.upstreams["api"]}/`;
  // Both api instances are in web's view before traffic starts.
  await until(async () => {
    const d = (await configDump(web.adminAddr)) as { clusters?: Record<string, { endpoints: unknown[] }> };
    return Object.values(d.clusters ?? {}).filter((c) => c.endpoints.length > 0).length >= 2;
  }, 10_000, "both api subsets to have endpoints");
  return { dir, v1, v2, web, url };
}

t.test("weights move 0 → 5 → 50 → 75 → 0 % under 100 rps with no failed request", async (t) => {
  const { dir, web, url } = await mesh(t);
  const gen = load(url, 100);
  const steps = [0, 5, 50, 75, 0];
  const observed: Array<{ weight: number; n: number; share: number; tolerance: number }> = [];
  // Each step's tally holds only the requests sent once web had the step's split: reset() starts a
  // new tally, and a request keeps the tally it was sent in (one routed by the previous split and
  // answered later, as under load, is not counted against this one). Tallies stay for the errors.
  const tallies: LoadResult[] = [];
  const answered = (r: LoadResult) => (r.byBody["v1"] ?? 0) + (r.byBody["v2"] ?? 0);
  for (const w of steps) {
    await configWrite(t, dir, { Kind: "service-splitter", Name: "api", Splits: [{ Weight: 100 - w, ServiceSubset: "v1" }, { Weight: w, ServiceSubset: "v2" }] });
    await until(async () => (splitWeights(await configDump(web.adminAddr), "api")["v2"] ?? 0) === w * 100, 10_000, `the ${w}% split to apply`);
    tallies.push(gen.snapshot());
    gen.reset();
    // 300 answers per step (~3 s at 100 rps), however long a loaded machine takes to give them.
    await until(() => answered(gen.snapshot()) >= 300, 30_000, `300 answers at the ${w}% split`);
    const v1 = gen.snapshot().byBody["v1"] ?? 0;
    const v2 = gen.snapshot().byBody["v2"] ?? 0;
    const n = v1 + v2;
    const p = w / 100;
    const share = n > 0 ? v2 / n : 0;
    // Four binomial standard deviations, at least one request's worth.
    const tolerance = Math.max(4 * Math.sqrt((p * (1 - p)) / Math.max(n, 1)), 1 / Math.max(n, 1));
    observed.push({ weight: w, n, share, tolerance });
    t.ok(n >= 300, `step ${w}%: ${n} requests measured`);
    t.ok(Math.abs(share - p) <= tolerance, `step ${w}%: v2 share ${(share * 100).toFixed(1)}% within ±${(tolerance * 100).toFixed(1)}% of ${w}%`);
  }
  tallies.push(await gen.stop());
  const errors = tallies.flatMap((r) => r.errors);
  t.same(errors, [], `not one of ${tallies.reduce((a, r) => a + r.sent, 0)} requests failed during the shifts`);
  t.comment(`observed: ${JSON.stringify(observed.map((o) => ({ weight: o.weight, requests: o.n, v2_share: +(o.share * 100).toFixed(2), tolerance: +(o.tolerance * 100).toFixed(2) })))}`);
});

t.test("a failing v2 is ejected, retries and failover keep errors at zero, and it comes back", async (t) => {
  const { dir, v2, web, url } = await mesh(t, { passiveHealthCheck: true });
  await configWrite(t, dir, { Kind: "service-splitter", Name: "api", Splits: [{ Weight: 50, ServiceSubset: "v1" }, { Weight: 50, ServiceSubset: "v2" }] });
  await until(async () => (splitWeights(await configDump(web.adminAddr), "api")["v2"] ?? 0) === 5000, 10_000, "the 50% split");
  const gen = load(url, 100);
  await until(() => v2.served > 20, 10_000, "v2 to serve traffic");

  v2.status = 500;
  const v2Cluster = { envoy_cluster_name: "" };
  await until(async () => (await metric(web.adminAddr, "envoy_cluster_outlier_detection_ejections_active")) >= 1, 10_000, "v2 to be ejected");
  const dump = (await configDump(web.adminAddr)) as { clusters: Record<string, unknown> };
  v2Cluster.envoy_cluster_name = Object.keys(dump.clusters).find((k) => k.startsWith("v2.")) ?? "";
  t.equal(await metric(web.adminAddr, "envoy_cluster_outlier_detection_ejections_active", v2Cluster), 1, "the v2 cluster has its host ejected");
  // While ejected, v2 gets nothing (unejection is checked on the sweep, every 500 ms, after 5 s).
  // Counted over the next 100 requests the client sends, not a second of the clock, and only
  // while v2 is still ejected: each count is read before a check that v2 still is.
  const servedAtEjection = v2.served;
  const sentAtEjection = gen.snapshot().sent;
  const whileEjected = { served: 0, sent: 0 };
  await until(async () => {
    const now = { served: v2.served - servedAtEjection, sent: gen.snapshot().sent - sentAtEjection };
    if ((await metric(web.adminAddr, "envoy_cluster_outlier_detection_ejections_active", v2Cluster)) !== 1) return true;
    Object.assign(whileEjected, now);
    return now.sent >= 100;
  }, 30_000, "100 requests sent while v2 is ejected");
  t.ok(whileEjected.sent >= 20, `the client sent ${whileEjected.sent} requests while v2 was ejected (v2 would get half)`);
  t.ok(whileEjected.served <= 2, `ejected v2 served ${whileEjected.served} of them`);

  v2.status = 200;
  const back = v2.served;
  await until(() => v2.served > back + 20, 30_000, "v2 to get traffic again after the ejection time");
  const final = await gen.stop();
  t.same(final.errors, [], `no client-visible failure in ${final.sent} requests`);
  if (final.errors.length) t.comment(JSON.stringify(final.errors.slice(0, 5)), JSON.stringify(web.logs.filter((l) => l["@level"] === "warn" || (l["@message"] === "attempt" && l["outcome"] === "response" && l["more"] === false && l["cluster"]?.toString().startsWith("v2"))).slice(0, 8)));
  t.ok(await metric(web.adminAddr, "envoy_cluster_upstream_rq_retry") > 0, "retries were used");
});
