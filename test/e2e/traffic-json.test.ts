// GET /traffic.json and POST /splits/<service> on a real web sidecar calling api's subsets v1 and
// v2 through the dev control plane: the figures against a known number of requests with known
// 5xx, the weight change end to end (entry stored, new Snapshot, traffic moves), its validation,
// and the browser protections it shares with every other state-changing admin endpoint.
import t from "tap";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { request as httpRequest } from "node:http";
import { request } from "undici";
import { hostPort, startSidecar, tempDir } from "../helpers/mesh.js";
import { configDump, metric, splitWeights, until } from "../helpers/l7.js";
import { bucketCeiling, send, trafficMesh, V2_DELAY_MS, type TrafficJson } from "../helpers/traffic-mesh.js";

async function trafficJson(adminAddr: string): Promise<TrafficJson> {
  const res = await request(`http://${adminAddr}/traffic.json`);
  if (res.statusCode !== 200) throw new Error(`GET /traffic.json: ${res.statusCode} ${await res.body.text()}`);
  return (await res.body.json()) as TrafficJson;
}

interface Reply {
  readonly status: number;
  readonly body: string;
}

/** A POST with exactly these headers (node:http lets a test set Host and Origin). */
function post(addr: string, path: string, headers: Record<string, string> = {}, method = "POST"): Promise<Reply> {
  const { host, port } = hostPort(addr);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host, port, method, path, headers, agent: false, timeout: 10_000 }, (res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("timeout", () => req.destroy(new Error(`${method} ${path}: no answer in 10 s`)));
    req.on("error", reject);
    req.end();
  });
}

t.test("the figures of /traffic.json match the traffic sent", { timeout: 90_000 }, async (t) => {
  const { web, url } = await trafficMesh(t);
  const before = await trafficJson(web.adminAddr);
  t.equal(before.service, "web");
  t.equal(before.control_plane, "dev");
  t.equal(before.weights_writable, true, "the dev control plane can write weights");
  t.same(before.services.map((s) => s.name), ["api"], "only the L7 upstream is listed (db is tcp)");
  const api0 = before.services[0]!;
  t.same(api0.clusters.map((c) => [c.subset, c.weight_percent]), [["v1", 50], ["v2", 50]], "both subsets with the splitter's weights");
  t.ok(api0.clusters.every((c) => c.requests_total === 0 && c.error_rate === null && c.p99_ms === null), "no traffic yet: no rates");

  const sent = await send(url, 120);
  const after = await trafficJson(web.adminAddr);
  const api = after.services[0]!;
  for (const subset of ["v1", "v2"]) {
    const c = api.clusters.find((x) => x.subset === subset)!;
    const requests = sent.requests[subset] ?? 0;
    const errors = sent.errors[subset] ?? 0;
    t.equal(c.requests_total, requests, `${subset}: ${requests} requests counted, as sent`);
    t.equal(c.errors_total, errors, `${subset}: ${errors} errors counted, as seen by the client`);
    t.equal(c.window_requests, requests, `${subset}: all of them inside the window`);
    t.equal(c.error_rate, Math.round((errors / requests) * 10_000) / 10_000, `${subset}: error rate ${c.error_rate}`);
    const rps = requests / after.window_seconds;
    t.ok(Math.abs((c.requests_per_second ?? 0) - rps) <= rps * 0.15 + 0.2, `${subset}: ${c.requests_per_second} req/s ≈ ${requests} over ${after.window_seconds} s`);
  }
  t.ok((sent.errors["v2"] ?? 0) > 0 && (sent.errors["v1"] ?? 0) === 0, "the traffic had 5xx on v2 only");
  // v2 answers after 30 ms, so every v2 time is in Envoy's 25–50 ms bucket or above; and no time
  // the sidecar measured is longer than the client's, so p99 is at most the bucket of the client's slowest.
  const v2 = api.clusters.find((x) => x.subset === "v2")!;
  const v2Max = bucketCeiling(sent.maxMs["v2"] ?? 0);
  t.ok(v2.p99_ms !== null && v2.p99_ms >= 25 && v2.p99_ms <= v2Max, `v2 p99 ${v2.p99_ms} ms: v2 waits ${V2_DELAY_MS} ms, the client's slowest was ${sent.maxMs["v2"]?.toFixed(1)} ms (bucket ≤ ${v2Max})`);
  const v1 = api.clusters.find((x) => x.subset === "v1")!;
  const v1Max = bucketCeiling(sent.maxMs["v1"] ?? 0);
  t.ok(v1.p99_ms !== null && v1.p99_ms > 0 && v1.p99_ms <= v1Max, `v1 p99 ${v1.p99_ms} ms: the client's slowest was ${sent.maxMs["v1"]?.toFixed(1)} ms (bucket ≤ ${v1Max})`);
});

t.test("POST /splits/api changes the weights through the dev control plane, and traffic moves", { timeout: 90_000 }, async (t) => {
  const { dir, web, url } = await trafficMesh(t);
  const port = hostPort(web.adminAddr).port;
  const sameOrigin = { origin: `http://127.0.0.1:${port}`, "sec-fetch-site": "same-origin", host: `127.0.0.1:${port}` };

  const ok = await post(web.adminAddr, "/splits/api?weights=v1:0,v2:100", sameOrigin);
  t.equal(ok.status, 202, `a same-origin POST is accepted: ${ok.body.trim()}`);
  t.match(JSON.parse(ok.body), { result: "stored", weights: { v1: 0, v2: 100 } });
  const stored = JSON.parse(await readFile(join(dir, "config", "service-splitter", "api.json"), "utf8")) as unknown;
  t.same(stored, {
    Kind: "service-splitter",
    Name: "api",
    Splits: [
      { Weight: 0, ServiceSubset: "v1" },
      { ResponseHeaders: { Set: { "x-canary": "yes" } }, Weight: 100, ServiceSubset: "v2" },
    ],
  }, "stored as meshproxy config write would, v2's response headers carried over");
  await until(async () => (splitWeights(await configDump(web.adminAddr), "api")["v2"] ?? 0) === 10_000, 10_000, "the new split to apply");
  const page = await trafficJson(web.adminAddr);
  t.same(page.services[0]!.clusters.map((c) => [c.subset, c.weight_percent]), [["v1", 0], ["v2", 100]], "traffic.json shows the new weights");
  const sent = await send(url, 30);
  t.equal(sent.requests["v2"], 30, "all traffic now goes to v2");
  t.equal(await metric(web.adminAddr, "meshproxy_admin_split_changes_total", { result: "stored" }), 1, "counted as stored");

  // curl-style: no Origin, no Sec-Fetch-Site.
  const curl = await post(web.adminAddr, "/splits/api?weights=v1:75.5,v2:24.5");
  t.equal(curl.status, 202, "a POST without browser headers works too");
  await until(async () => (splitWeights(await configDump(web.adminAddr), "api")["v1"] ?? 0) === 7550, 10_000, "75.5/24.5 to apply");
});

t.test("POST /splits: the admin API's browser protections, then validation with a reason for each refusal", { timeout: 90_000 }, async (t) => {
  const { web } = await trafficMesh(t);
  const port = hostPort(web.adminAddr).port;
  const path = "/splits/api?weights=v1:0,v2:100";
  const refused: Array<[string, Record<string, string>, number, string]> = [
    ["cross-site Origin", { origin: "http://evil.example" }, 403, "origin"],
    ["Origin null", { origin: "null" }, 403, "origin"],
    ["Sec-Fetch-Site cross-site", { "sec-fetch-site": "cross-site", origin: `http://127.0.0.1:${port}` }, 403, "sec_fetch_site"],
    ["rebinding Host", { host: `evil.example:${port}` }, 421, "host"],
    ["form body", { "content-type": "application/x-www-form-urlencoded" }, 415, "content_type"],
    ["text/plain body", { "content-type": "text/plain;charset=UTF-8", origin: `http://127.0.0.1:${port}` }, 415, "content_type"],
  ];
  for (const [what, headers, status, reason] of refused) {
    const before = await metric(web.adminAddr, "meshproxy_admin_rejected_total", { listener: "admin", reason });
    const r = await post(web.adminAddr, path, headers);
    t.equal(r.status, status, `${what} → ${status}`);
    t.equal(await metric(web.adminAddr, "meshproxy_admin_rejected_total", { listener: "admin", reason }), before + 1, `counted as ${reason}`);
  }
  t.equal((await post(web.adminAddr, path, {}, "GET")).status, 405, "GET → 405: changes are POST only");
  t.equal((await post(web.adminAddr, path, {}, "OPTIONS")).status, 405, "a preflight gets 405");
  const ui = await request(`http://${web.adminAddr}/ui`);
  await ui.body.text();
  t.match(String(ui.headers["content-security-policy"]), /default-src 'none'; script-src 'self'/, "the page has a strict CSP");
  t.match(String(ui.headers["content-security-policy"]), /frame-ancestors 'none'/, "and cannot be framed (clickjacking its control)");
  t.equal(ui.headers["x-frame-options"], "DENY");
  t.equal(ui.headers["access-control-allow-origin"], undefined, "no CORS");
  t.equal(splitWeights(await configDump(web.adminAddr), "api")["v2"], 5000, "no refused request changed the split");
  t.equal(await metric(web.adminAddr, "meshproxy_admin_split_changes_total", { result: "stored" }), 0, "none reached the control plane");

  const cases: Array<[string, number, RegExp]> = [
    ["/splits/api?weights=v1:50,v2:40", 400, /sum to 90, not 100/],
    ["/splits/api?weights=v1:50,v3:50", 400, /subset "v3" is not defined by service-resolver "api" \(it defines v1, v2\)/],
    ["/splits/api?weights=v1:50,v1:50", 400, /given twice/],
    ["/splits/api?weights=v1:50.001,v2:49.999", 400, /at most two decimals/],
    ["/splits/api?weights=v1:-5,v2:105", 400, /not a percent/],
    ["/splits/api", 400, /no weights given/],
    ["/splits/db?weights=v1:100", 404, /"db" is not a service this sidecar routes \(its protocol is tcp/],
    ["/splits/nope?weights=v1:100", 404, /not an upstream of this sidecar/],
    ["/splits/..%2F..%2Fintentions?weights=v1:100", 400, /is not a service name/],
  ];
  for (const [target, status, message] of cases) {
    const r = await post(web.adminAddr, target);
    t.equal(r.status, status, `${target} → ${status}`);
    const said = (JSON.parse(r.body) as { message: string }).message;
    t.match(said, message, `and says why: ${said}`);
  }
  t.equal(splitWeights(await configDump(web.adminAddr), "api")["v1"], 5000, "nothing changed");
  t.equal(await metric(web.adminAddr, "meshproxy_admin_split_changes_total", { result: "invalid" }), 7, "refusals counted by result");
  t.equal(await metric(web.adminAddr, "meshproxy_admin_split_changes_total", { result: "not_found" }), 2);
});

t.test("a sidecar with no L7 upstream shows an empty state that says why", { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  const doc = await trafficJson(web.adminAddr);
  t.same(doc.services, []);
  t.match(doc.empty_reason, /no upstream of this sidecar is routed at L7: db \(tcp\); only upstreams whose protocol is http, http2 or grpc/);
  const bare = await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", "127.0.0.1:1"]);
  t.match((await trafficJson(bare.adminAddr)).empty_reason, /this sidecar has no upstreams/);
});
