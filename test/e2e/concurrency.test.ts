// -concurrency 2 end to end: real meshproxy processes, each a primary and two node:cluster
// workers. L4 and L7 cross a pair of such sidecars with connections spread over both workers and
// one scrape counting them all; a Snapshot change (an intention flip, a leaf rotation) reaches
// every worker; a killed worker is restarted without touching the other's connections; SIGTERM
// drains every worker.
import t from "tap";
import { get } from "node:http";
import { connect, type Socket } from "node:net";
import { echoServer, hostPort, runMeshproxy, startSidecar, tempDir, type LogLine, type Sidecar, type Teardown } from "../helpers/mesh.js";
import { echoes, nextLog, pollUntil, sample, scrape } from "../helpers/peers.js";
import { configWrite, httpApp, until } from "../helpers/l7.js";
import { mtls, startDouble } from "../helpers/consul-mesh.js";

interface Concurrent extends Sidecar {
  /** Worker index → pid, as the primary logged their starts (restarts included). */
  workerPids(): Map<number, number>;
}

/** A sidecar at -concurrency 2, once the primary says every worker serves. */
async function concurrent(t: Teardown, args: string[], dataDir?: string): Promise<Concurrent> {
  const p = await startSidecar(t, dataDir ?? (await tempDir(t)), args, {}, { concurrency: 2 });
  return Object.assign(p, {
    workerPids: () => {
      const pids = new Map<number, number>();
      for (const l of p.logs) if (l["@message"] === "worker started") pids.set(Number(l["worker"]), Number(l["pid"]));
      return pids;
    },
  });
}

/** Per-worker accepted connections on the listener at `addr` (Envoy's per-worker listener stat). */
function perWorker(text: string, addr: string): [number, number] {
  const a = addr.replace(/:(\d+)$/, "_$1");
  const n = (w: string) => sample(text, "envoy_listener_worker_downstream_cx_total", { envoy_listener_address: a, envoy_worker_id: w }) ?? 0;
  return [n("0"), n("1")];
}

/** GET on a new connection each time (no keep-alive), so requests spread over the workers. */
function getOnce(addr: string, path = "/"): Promise<{ status: number; body: string }> {
  const { host, port } = hostPort(addr);
  return new Promise((resolve, reject) => {
    const req = get({ host, port, path, agent: false, timeout: 5000 }, (res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (d: string) => (body += d));
      res.once("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.once("timeout", () => req.destroy(new Error(`GET http://${addr}${path} timed out`)));
    req.once("error", reject);
  });
}

t.test("L4 through a pair at -concurrency 2: connections land on both workers, one scrape counts them all", { timeout: 90_000 }, async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  const db = await concurrent(t, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`], dir);
  const web = await concurrent(t, ["-service", "web", "-upstream", "db:0", "-metrics-addr", "127.0.0.1:0"], dir);
  const metricsAddr = String((await web.waitForLog((l) => l["@message"] === "metrics listening"))["address"]);
  const addr = web.upstreams["db"]!;
  const N = 20;
  for (let i = 0; i < N; i++) t.ok(await echoes(addr, `ping ${i}\n`, 5000), `connection ${i} echoes through both sidecars`);

  const text = await scrape(web.adminAddr);
  const [w0, w1] = perWorker(text, addr);
  t.ok(w0 > 0 && w1 > 0, `web's upstream connections landed on both workers (${w0} and ${w1})`);
  t.equal(w0 + w1, N, "the per-worker counts add up to the connections made");
  t.equal(sample(text, "envoy_listener_downstream_cx_total", { envoy_listener_address: addr.replace(/:(\d+)$/, "_$1") }), N, "one scrape sums the listener's counter over the workers");
  t.equal(sample(text, "envoy_server_concurrency"), 2, "envoy_server_concurrency is 2");
  t.equal(sample(text, "envoy_server_live"), 1, "live");
  t.equal(sample(text, "meshproxy_snapshots_applied_total", { control_plane: "dev" }), 1, "a Snapshot applied by every worker counts once (max over workers), not once per worker");
  t.match(text, /# TYPE envoy_listener_downstream_cx_total counter\n/, "each family appears once in the aggregated exposition");
  t.equal(text.match(/^# TYPE process_resident_memory_bytes /gm)?.length, 1, "and so do the process families (summed: the primary's and the workers' memory)");
  const listener = await (await fetch(`http://${metricsAddr}/metrics`)).text();
  t.equal(sample(listener, "envoy_listener_downstream_cx_total", { envoy_listener_address: addr.replace(/:(\d+)$/, "_$1") }), N, "the -metrics-addr listener serves the same aggregate");

  const dbText = await scrape(db.adminAddr);
  const [d0, d1] = perWorker(dbText, db.publicAddr!);
  t.ok(d0 > 0 && d1 > 0, `db's public listener took connections on both workers too (${d0} and ${d1})`);
  t.equal(d0 + d1, N, "every connection web originated reached db once");

  const clusters = await fetch(`http://${web.adminAddr}/clusters?format=json`);
  t.equal(clusters.status, 200, "/clusters answers from the workers");
  t.match(await clusters.text(), /"name": "db\.default\.dc1\.internal\./, "with the db cluster, once");
});

t.test("L7 through a pair at -concurrency 2: every request answered, requests counted once in one scrape", { timeout: 90_000 }, async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  const app = await httpApp(t, "api");
  await concurrent(t, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`], dir);
  const web = await concurrent(t, ["-service", "web", "-upstream", "api:0"], dir);
  const addr = web.upstreams["api"]!;
  const N = 30;
  for (let i = 0; i < N; i++) {
    const r = await getOnce(addr, `/r${i}`);
    t.equal(r.status, 200, `request ${i} answered`);
    if (r.status !== 200) break;
  }
  t.equal(app.served, N, "the app served every request once");
  const text = await scrape(web.adminAddr);
  const rq = [...text.matchAll(/^envoy_cluster_upstream_rq_total\{[^}]*consul_destination_service="api"[^}]*\} (\S+)$/gm)].reduce((n, m) => n + Number(m[1]), 0);
  t.equal(rq, N, "envoy_cluster_upstream_rq_total summed over the workers equals the requests sent");
  const [w0, w1] = perWorker(text, addr);
  t.ok(w0 > 0 && w1 > 0, `the requests' connections landed on both workers (${w0} and ${w1})`);

  // The traffic page's figures are every worker's requests, not the primary's (which serves none).
  let total: unknown = null;
  await until(async () => {
    const doc: unknown = await (await fetch(`http://${web.adminAddr}/traffic.json`)).json();
    const services = typeof doc === "object" && doc !== null && "services" in doc && Array.isArray(doc.services) ? doc.services : [];
    const api: unknown = services.find((s: unknown) => typeof s === "object" && s !== null && "name" in s && s.name === "api");
    const clusters = typeof api === "object" && api !== null && "clusters" in api && Array.isArray(api.clusters) ? api.clusters : [];
    const first: unknown = clusters[0];
    total = typeof first === "object" && first !== null && "requests_total" in first ? first.requests_total : null;
    return total === N;
  }, 5000, `traffic.json to count ${N} requests`).catch(() => undefined);
  t.equal(total, N, "/traffic.json counts every worker's requests");
});

t.test("an intention flip to deny reaches every worker: every new connection is refused", { timeout: 90_000 }, async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  const db = await concurrent(t, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`], dir);
  const web = await concurrent(t, ["-service", "web", "-upstream", "db:0"], dir);
  const addr = web.upstreams["db"]!;
  t.ok(await echoes(addr), "allowed before the intention");
  const create = runMeshproxy(t, ["intention", "create", "-deny", "web", "db", "-data-dir", dir]);
  t.equal(await create.exited, 0, `intention create -deny exits 0 ${create.stderrText()}`);
  t.not(await pollUntil(async () => !(await echoes(addr, "ping\n", 1000)), 5000), null, "a new connection is refused after the deny");
  // Both of db's workers must have the deny: wait until each has refused one, then every one refuses.
  await until(async () => {
    const text = await scrape(db.adminAddr);
    await echoes(addr, "ping\n", 1000);
    return (sample(text, "meshproxy_inbound_rejected_total", { reason: "denied_by_intention" }) ?? 0) >= 2;
  }, 10_000, "db's workers to refuse");
  let allowed = 0;
  for (let i = 0; i < 10; i++) if (await echoes(addr, "ping\n", 1000)) allowed++;
  t.equal(allowed, 0, "none of 10 new connections (spread over both workers of each sidecar) gets through");
  const text = await scrape(db.adminAddr);
  const [d0, d1] = perWorker(text, db.publicAddr!);
  t.ok(d0 > 0 && d1 > 0, `and db's two workers both took (and refused) connections (${d0} and ${d1})`);
});

t.test("a leaf rotation reaches every worker: every new handshake presents the new leaf", { timeout: 90_000 }, async (t) => {
  const d = await startDouble(t);
  const echo = await echoServer(t);
  const db = await concurrent(t, ["-http-addr", d.url, "-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`, "-register"]);
  const web = await d.leaf("web");
  const roots = [d.activeRoot.certPem];
  const before = (await mtls(db.publicAddr!, web.certPem, web.keyPem, roots)).serial;
  const serial = await d.rotateLeaf("db");
  t.not(serial, before, "the agent issued db a new leaf");
  await until(async () => (await mtls(db.publicAddr!, web.certPem, web.keyPem, roots)).serial === serial, 10_000, "a handshake with the new leaf");
  // Both workers reported the new leaf applied once each logs its listener's rotation.
  await until(() => db.logs.filter((l) => l["@message"] === "public listener certificates rotated" && l["serial"] === serial).length >= 2, 10_000, "both workers to rotate");
  const seen = new Set<string>();
  for (let i = 0; i < 10; i++) {
    const r = await mtls(db.publicAddr!, web.certPem, web.keyPem, roots);
    seen.add(r.serial);
    t.equal(r.received, "ping\n", `handshake ${i} is served`);
  }
  t.same([...seen], [serial], "10 new handshakes, spread over both workers, all present the new leaf");
  const [d0, d1] = perWorker(await scrape(db.adminAddr), db.publicAddr!);
  t.ok(d0 > 0 && d1 > 0, `the handshakes landed on both workers (${d0} and ${d1})`);
});

/** An open connection through `addr` that echoes each line; `alive()` asks it once more. */
async function openEcho(addr: string): Promise<{ alive(): Promise<boolean>; close(): void }> {
  const { host, port } = hostPort(addr);
  const s: Socket = connect({ host, port });
  await new Promise<void>((resolve, reject) => {
    s.once("connect", resolve);
    s.once("error", reject);
  });
  s.on("error", () => s.destroy());
  let buf = "";
  s.setEncoding("utf8").on("data", (d: string) => (buf += d));
  let n = 0;
  const alive = async (): Promise<boolean> => {
    const line = `line ${n++}\n`;
    if (s.destroyed || !s.writable) return false;
    s.write(line);
    const deadline = Date.now() + 3000;
    while (Date.now() < deadline && !s.destroyed) {
      if (buf.includes(line)) return true;
      await new Promise((r) => setTimeout(r, 20));
    }
    return buf.includes(line);
  };
  if (!(await alive())) throw new Error(`a new connection through ${addr} does not echo`);
  return { alive, close: () => s.destroy() };
}

t.test("SIGKILL of one worker: it is restarted and counted; the other worker's connections are untouched", { timeout: 90_000 }, async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  await concurrent(t, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`], dir);
  const web = await concurrent(t, ["-service", "web", "-upstream", "db:0"], dir);
  const addr = web.upstreams["db"]!;
  const conns: Array<Awaited<ReturnType<typeof openEcho>>> = [];
  for (let i = 0; i < 4; i++) conns.push(await openEcho(addr));
  t.teardown(() => conns.forEach((c) => c.close()));
  const victim = web.workerPids().get(0)!;
  t.ok(victim > 0, "worker 0's pid is in the log");
  const restarted = nextLog(web, (l) => l["@message"] === "worker ready" && l["worker"] === 0, 30_000);
  process.kill(victim, "SIGKILL");
  const exitLine = await web.waitForLog((l) => l["@message"] === "worker exited; starting a new one (its open connections are lost, other workers' are not)");
  t.equal(exitLine["signal"], "SIGKILL", "the primary logs the worker's death with the signal");
  await restarted;
  const after = await Promise.all(conns.map((c) => c.alive()));
  const survived = after.filter(Boolean).length;
  t.equal(survived, 2, `the two connections on the other worker still echo (round-robin gave each worker two; ${survived} survived)`);
  t.equal(await scrape(web.adminAddr).then((s) => sample(s, "meshproxy_worker_restarts_total", { envoy_worker_id: "0" })), 1, "meshproxy_worker_restarts_total{envoy_worker_id=\"0\"} is 1");
  t.not(web.workerPids().get(0), victim, "worker 0 runs in a new process");
  let ok = 0;
  for (let i = 0; i < 6; i++) if (await echoes(addr, "ping\n", 5000)) ok++;
  t.equal(ok, 6, "new connections all work after the restart");
  t.equal(web.child.exitCode, null, "the primary kept running");
});

t.test("a worker restarted while the latest Snapshot is one every worker rejected serves the last good one", { timeout: 90_000 }, async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  await concurrent(t, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`], dir);
  const web = await concurrent(t, ["-service", "web", "-upstream", "db:0"], dir);
  const addr = web.upstreams["db"]!;
  const rejectedBy = (worker: string) => (l: LogLine) => l["@message"] === "snapshot rejected; keeping the last good one" && l["@module"] === `meshproxy.worker_${worker}`;
  const bothRejected = Promise.all([nextLog(web, rejectedBy("0")), nextLog(web, rejectedBy("1"))]);
  // A load balancer the config entry accepts but a cluster cannot be built with: every worker refuses the Snapshot.
  await configWrite(t, dir, { Kind: "service-resolver", Name: "db", LoadBalancer: { Policy: "least_request", LeastRequestConfig: { ChoiceCount: 0 } } });
  await bothRejected;
  t.pass("both workers rejected the Snapshot and kept the last good one");
  const victim = web.workerPids().get(0)!;
  const restarted = nextLog(web, (l) => l["@message"] === "worker ready" && l["worker"] === 0, 20_000);
  const rejectedAgain = nextLog(web, rejectedBy("0"), 20_000);
  process.kill(victim, "SIGKILL");
  await restarted;
  t.pass("the new worker 0 is ready: it was given the last good Snapshot first");
  await rejectedAgain;
  t.pass("and then refused the bad one, as the others did");
  let ok = 0;
  for (let i = 0; i < 6; i++) if (await echoes(addr, "ping\n", 5000)) ok++;
  t.equal(ok, 6, "6 new connections over both workers all get through");
});

t.test("SIGTERM drains every worker: open connections finish, new ones are refused, exit 0", { timeout: 90_000 }, async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  await concurrent(t, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`], dir);
  const web = await concurrent(t, ["-service", "web", "-upstream", "db:0", "-drain-timeout", "20s"], dir);
  const addr = web.upstreams["db"]!;
  const conns = [await openEcho(addr), await openEcho(addr)];
  const pids = [...web.workerPids().values()];
  const draining = nextLog(web, (l) => l["@message"] === "draining open connections");
  web.child.kill("SIGTERM");
  await draining;
  t.same(await Promise.all(conns.map((c) => c.alive())), [true, true], "both open connections (one per worker) still echo while draining");
  t.notOk(await echoes(addr, "ping\n", 1000), "a new connection is refused while draining");
  for (const c of conns) c.close();
  t.equal(await web.exited, 0, "the primary exits 0 once the workers drained");
  t.ok(web.logs.some((l) => l["@message"] === "stopped"), "and logs stopped");
  for (const pid of pids) {
    let gone = false;
    try {
      process.kill(pid, 0);
    } catch {
      gone = true;
    }
    t.ok(gone, `worker ${pid} has exited`);
  }
});

t.test("a port in use fails the start like one process does: exit 1, the flag named", { timeout: 60_000 }, async (t) => {
  const echo = await echoServer(t);
  const p = runMeshproxy(t, ["-data-dir", await tempDir(t), "-log-json", "-admin-addr", "127.0.0.1:0", "-concurrency", "2", "-service", "db", "-listen", `127.0.0.1:${echo.port}`, "-service-addr", `127.0.0.1:${echo.port}`]);
  t.equal(await p.exited, 1, "exits 1");
  t.match(p.stderrText(), /^meshproxy: -listen: public listener 127\.0\.0\.1:\d+: address already in use/m, "naming -listen and the reason");
});
