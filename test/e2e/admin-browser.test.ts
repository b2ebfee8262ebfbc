// The admin API and the metrics listener against a web browser on the same host: a page on
// evil.example that rebinds its name to 127.0.0.1, or that POSTs cross-origin, gets nothing;
// curl, Prometheus and probes (no Origin, a loopback or IP Host) keep working. Each refusal is
// shown three ways: the status, the proxy still running, and the counter.
import t from "tap";
import { request } from "node:http";
import { hostPort, startSidecar, tempDir, type Sidecar } from "../helpers/mesh.js";
import { metric, nextLog, runCommand, sample } from "../helpers/peers.js";

interface Reply {
  readonly status: number;
  readonly body: string;
  readonly headers: Record<string, string | string[] | undefined>;
}

/** A request with exactly these headers (node:http lets a test set Host, which fetch does not). */
function send(addr: string, method: string, path: string, headers: Record<string, string>): Promise<Reply> {
  const { host, port } = hostPort(addr);
  return new Promise((resolve, reject) => {
    const req = request({ host, port, method, path, headers, agent: false, timeout: 10_000 }, (res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
    });
    req.on("timeout", () => req.destroy(new Error(`${method} ${path} on ${addr}: no answer in 10 s`)));
    req.on("error", reject);
    req.end();
  });
}

const rejected = async (s: Sidecar, reason: string, listener = "admin") => metric(s.adminAddr, "meshproxy_admin_rejected_total", { listener, reason });

t.test("admin API: browser-reachable requests are refused, curl-style ones work", { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const web = await startSidecar(t, dir, ["-service", "web", "-metrics-addr", "127.0.0.1:0"]);
  const metricsAddr = String((await web.waitForLog((l) => l["@message"] === "metrics listening"))["address"]);
  const port = hostPort(web.adminAddr).port;
  const own = `127.0.0.1:${port}`;
  const stillRunning = async (what: string) => {
    t.equal((await send(web.adminAddr, "GET", "/ready", { host: own })).status, 200, `${what}: the proxy is still ready`);
    t.equal(web.child.exitCode, null, `${what}: the process is still running`);
  };
  t.equal(await rejected(web, "host"), 0, "the refusal counter exists and starts at 0");

  await t.test("DNS rebinding: Host evil.example is refused on reads and on /drain", async (t) => {
    const logged = nextLog(web, (l) => l["@message"] === "admin request refused as coming from a web page");
    const dump = await send(web.adminAddr, "GET", "/config_dump", { host: `evil.example:${port}` });
    t.equal(dump.status, 421, "GET /config_dump with Host evil.example → 421 Misdirected Request");
    t.match(dump.body, /Host "evil\.example:\d+" is not an address of this listener.*DNS-rebinding/, `the body says why: ${dump.body.trim()}`);
    t.notMatch(dump.body, /"identity"|trustDomain|BEGIN CERTIFICATE/, "and contains no part of the config");
    t.equal(dump.headers["connection"], "close", "the connection is closed after the refusal");
    const line = await logged;
    t.equal(line["reason"], "host", "the refusal is logged with its reason");
    t.equal(line["host"], `evil.example:${port}`, "and the Host that was refused");

    const drain = await send(web.adminAddr, "POST", "/drain", { host: `evil.example:${port}` });
    t.equal(drain.status, 421, "POST /drain with Host evil.example → 421");
    for (const host of ["EVIL.example", "127.0.0.1.evil.example", "localhost.evil.example", `evil.example`, "attacker.localhost.example:80"]) {
      t.equal((await send(web.adminAddr, "GET", "/certs", { host })).status, 421, `Host "${host}" → 421`);
    }
    t.equal(await rejected(web, "host"), 7, 'meshproxy_admin_rejected_total{listener="admin",reason="host"} counts all 7');
    await stillRunning("after the rebinding attempts");
    t.equal(web.logs.filter((l) => l["@message"] === "admin request refused as coming from a web page").length, 1, "7 refusals in a burst make 1 log line, not 7");
  });

  await t.test("cross-origin POSTs are refused: Origin, Sec-Fetch-Site, simple content types", async (t) => {
    const cases: Array<{ name: string; headers: Record<string, string>; status: number; reason: string }> = [
      { name: "Origin http://evil.example", headers: { origin: "http://evil.example" }, status: 403, reason: "origin" },
      { name: "Origin of another local port", headers: { origin: "http://127.0.0.1:8080" }, status: 403, reason: "origin" },
      { name: "Origin null (sandboxed frame, file: page)", headers: { origin: "null" }, status: 403, reason: "origin" },
      { name: "Sec-Fetch-Site cross-site", headers: { "sec-fetch-site": "cross-site" }, status: 403, reason: "sec_fetch_site" },
      { name: "Sec-Fetch-Site same-site", headers: { "sec-fetch-site": "same-site" }, status: 403, reason: "sec_fetch_site" },
      { name: "Content-Type text/plain", headers: { "content-type": "text/plain" }, status: 415, reason: "content_type" },
      { name: "Content-Type form-urlencoded", headers: { "content-type": "application/x-www-form-urlencoded" }, status: 415, reason: "content_type" },
      { name: "Content-Type multipart with a boundary", headers: { "content-type": "Multipart/Form-Data; boundary=x" }, status: 415, reason: "content_type" },
      { name: "Content-Type text/plain with a charset", headers: { "content-type": "text/plain;charset=UTF-8" }, status: 415, reason: "content_type" },
    ];
    for (const path of ["/drain", "/logging?level=trace"]) {
      for (const c of cases) {
        const before = (await rejected(web, c.reason)) ?? 0;
        const r = await send(web.adminAddr, "POST", path, { host: own, ...c.headers });
        t.equal(r.status, c.status, `POST ${path} with ${c.name} → ${c.status}: ${r.body.trim()}`);
        t.equal(await rejected(web, c.reason), before + 1, `counted as reason ${c.reason}`);
      }
    }
    await stillRunning("after the cross-origin POSTs");
    t.equal((await send(web.adminAddr, "POST", "/logging", { host: own })).body, "level: info\n", "the log level was never changed to trace");
  });

  await t.test("what curl, the admin's own origin, Prometheus and probes send still works", async (t) => {
    t.equal((await send(web.adminAddr, "POST", "/logging?level=info", { host: own })).status, 200, "POST with Host 127.0.0.1:PORT and no Origin → 200");
    t.equal((await send(web.adminAddr, "POST", "/logging?level=info", { host: `localhost:${port}` })).status, 200, "Host localhost:PORT → 200");
    t.equal((await send(web.adminAddr, "POST", "/logging?level=info", { host: `LocalHost:${port}`, origin: `http://localhost:${port}`, "sec-fetch-site": "same-origin" })).status, 200, "the admin's own origin, same-origin → 200");
    t.equal((await send(web.adminAddr, "POST", "/logging?level=info", { host: "localhost:8001" })).status, 200, "another port (kubectl port-forward) → 200");
    t.equal((await send(web.adminAddr, "GET", "/ready", { host: `10.1.2.3:${port}` })).status, 200, "an IP-literal Host (a kubelet probe) → 200");
    t.equal((await send(web.adminAddr, "GET", "/ready", { host: `[::1]:${port}` })).status, 200, "an IPv6 literal Host → 200");
    t.equal((await send(web.adminAddr, "GET", "/clusters", { host: own, origin: "http://evil.example", "sec-fetch-site": "cross-site" })).status, 200, "a cross-origin read is answered (the browser keeps it from the page: no CORS headers)");
    const prom = await send(web.adminAddr, "GET", "/stats/prometheus", { host: own, accept: "text/plain;version=0.0.4" });
    t.equal(prom.status, 200, "GET /stats/prometheus → 200");
    t.ok(sample(prom.body, "envoy_server_live") !== null, "and it is the exposition");
    t.equal(prom.headers["access-control-allow-origin"], undefined, "no CORS header is ever sent");
    const pre = await send(web.adminAddr, "OPTIONS", "/drain", { host: own, origin: "http://evil.example", "access-control-request-method": "POST" });
    t.equal(pre.status, 405, "a CORS preflight is refused, so a page cannot send a non-simple POST either");
  });

  await t.test("the metrics listener on loopback: Prometheus is served, a rebinding page is not", async (t) => {
    const mport = hostPort(metricsAddr).port;
    const scrape = await send(metricsAddr, "GET", "/metrics", { host: `127.0.0.1:${mport}`, "user-agent": "Prometheus/2.53.0" });
    t.equal(scrape.status, 200, "a scrape by address → 200");
    t.ok(sample(scrape.body, "envoy_server_live") !== null, "with the proxy's metrics");
    t.equal((await send(metricsAddr, "GET", "/stats/prometheus", { host: `localhost:${mport}` })).status, 200, "Host localhost → 200");
    const evil = await send(metricsAddr, "GET", "/metrics", { host: `evil.example:${mport}` });
    t.equal(evil.status, 421, "Host evil.example → 421");
    t.notMatch(evil.body, /envoy_/, "and no metrics in the body");
    t.equal(await rejected(web, "host", "metrics"), 1, 'counted as meshproxy_admin_rejected_total{listener="metrics",reason="host"}');
    t.equal((await send(metricsAddr, "POST", "/metrics", { host: `127.0.0.1:${mport}` })).status, 405, "it stays read-only: POST → 405");
  });

  await t.test("curl -X POST /drain still drains", async (t) => {
    const r = await runCommand(t, "curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", `http://localhost:${port}/drain`]);
    t.equal(r.stdout, "202", "curl -X POST localhost:PORT/drain → 202");
    t.equal(await web.exited, 0, "and the proxy drains and exits 0");
  });
});

t.test("POST /quitquitquit (Envoy's name, used by Job sidecar-stoppers) drains and exits; GET is refused", { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const web = await startSidecar(t, dir, ["-service", "web"]);
  const own = `127.0.0.1:${hostPort(web.adminAddr).port}`;
  const get = await send(web.adminAddr, "GET", "/quitquitquit", { host: own });
  t.equal(get.status, 405, "GET /quitquitquit → 405, as every mutation");
  t.equal(web.child.exitCode, null, "and the proxy keeps running");
  const r = await runCommand(t, "curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", `http://${own}/quitquitquit`]);
  t.equal(r.stdout, "202", "curl -X POST /quitquitquit → 202");
  t.equal(await web.exited, 0, "and the proxy drains and exits 0");
});

// The endpoints added for Envoy's names mutate like /drain: a page must not be able to take the
// proxy out of its load balancer (/healthcheck/fail) or stop it (/quitquitquit) from a browser.
t.test("a web page cannot fail the health check or quit the proxy: cross-site, form and rebinding POSTs are refused", { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const web = await startSidecar(t, dir, ["-service", "web"]);
  const port = hostPort(web.adminAddr).port;
  const own = `127.0.0.1:${port}`;
  const page: ReadonlyArray<[string, Record<string, string>, number]> = [
    ["Sec-Fetch-Site cross-site", { host: own, "sec-fetch-site": "cross-site" }, 403],
    ["a foreign Origin", { host: own, origin: "http://evil.example" }, 403],
    ["Origin null", { host: own, origin: "null" }, 403],
    ["a text/plain body (no preflight)", { host: own, "content-type": "text/plain" }, 415],
    ["a form body", { host: own, "content-type": "application/x-www-form-urlencoded" }, 415],
    ["a rebound Host", { host: `evil.example:${port}` }, 421],
  ];
  for (const path of ["/healthcheck/fail", "/quitquitquit"]) {
    for (const [what, headers, status] of page) {
      t.equal((await send(web.adminAddr, "POST", path, headers)).status, status, `POST ${path} with ${what} → ${status}`);
    }
  }
  const ready = await send(web.adminAddr, "GET", "/ready", { host: own });
  t.same([ready.status, ready.body], [200, "LIVE\n"], "the proxy is still ready: no refused request failed its health check");
  t.equal(web.child.exitCode, null, "and still running");
});
