// Two real meshproxy processes and an echo app: bytes cross, large payloads cross intact,
// half-close works.
import t from "tap";
import { randomBytes, createHash } from "node:crypto";
import { connect, createServer, type AddressInfo, type Socket } from "node:net";
import { get as httpGet } from "node:http";
import { once } from "node:events";
import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { echoServer, hostPort, roundTrip, startSidecar, tcpApp, tempDir } from "../helpers/mesh.js";
import { configDump, configWrite, metric, until } from "../helpers/l7.js";
import { clusterOf } from "../helpers/l7-apps.js";

t.test("bytes cross a two-sidecar mesh over mTLS", async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  t.ok(db.publicAddr, "db has a public listener");
  const up = web.upstreams["db"]!;

  const small = await roundTrip(up, "hello mesh\n");
  t.equal(small.toString(), "hello mesh\n", "a small message is echoed back through both sidecars");

  const big = randomBytes(64 * 1024 * 1024);
  const back = await roundTrip(up, big, 120_000);
  t.equal(back.length, big.length, "64 MiB come back whole");
  t.equal(createHash("sha256").update(back).digest("hex"), createHash("sha256").update(big).digest("hex"), "and intact");

  t.equal(await web.stop(), 0, "web exits 0 on SIGTERM");
  t.equal(await db.stop(), 0, "db exits 0 on SIGTERM");
});

// The server sidecar reads the app's bytes into one buffer shared by all its connections
// (src/tcp/pipe.ts, DirectReads). Many streams at once to slow readers, so the kernel's and the
// sidecars' buffers fill and drain: every stream must still arrive byte for byte.
t.test("many concurrent streams from the app to slow readers arrive intact", async (t) => {
  const dir = await tempDir(t);
  const streams = Array.from({ length: 8 }, () => randomBytes(16 * 1024 * 1024));
  const app = await tcpApp(t, (s) => {
    s.once("data", (id: Buffer) => s.end(streams[id[0]!]!));
  });
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  const { host, port } = hostPort(web.upstreams["db"]!);
  const fetchStream = (id: number) =>
    new Promise<Buffer>((resolve, reject) => {
      const s = connect({ host, port });
      const chunks: Buffer[] = [];
      let sincePause = 0;
      s.on("data", (d: Buffer) => {
        chunks.push(d);
        sincePause += d.length;
        if (sincePause >= 128 * 1024) {
          sincePause = 0;
          s.pause();
          setTimeout(() => s.resume(), 5 + (id % 4) * 5);
        }
      });
      s.on("error", reject);
      s.on("end", () => resolve(Buffer.concat(chunks)));
      s.write(Buffer.from([id]));
    });
  const got = await Promise.all(streams.map((_, i) => fetchStream(i)));
  const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
  const intact = got.filter((g, i) => g.length === streams[i]!.length && sha(g) === sha(streams[i]!)).length;
  t.equal(intact, streams.length, `all ${streams.length} streams of 16 MiB arrive whole and intact`);
  t.equal(await web.stop(), 0, "web exits 0");
  t.equal(await db.stop(), 0, "db exits 0");
});

// New connections to the same endpoint resume the TLS session of an earlier one (about half the
// handshake's CPU), and a cached session is reused rather than replaced on every connection.
t.test("new upstream connections resume a cached TLS session", async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0", "-metrics-addr", "127.0.0.1:0"]);
  const metricsAddr = String((await web.waitForLog((l) => l["@message"] === "metrics listening"))["address"]);
  for (let i = 0; i < 20; i++) t.equal((await roundTrip(web.upstreams["db"]!, `ping ${i}`)).toString(), `ping ${i}`, `connection ${i + 1} echoes`, { diagnostic: false });
  const scrape = () =>
    new Promise<string>((resolve, reject) => {
      httpGet(`http://${metricsAddr}/metrics`, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () => resolve(body));
      }).on("error", reject);
    });
  const sent = Array.from({ length: 20 }, (_, i) => `ping ${i}`.length).reduce((a, b) => a + b, 0);
  let text = "";
  // Cluster series carry Consul's consul_destination_* and consul_source_* labels besides envoy_cluster_name.
  const value = (name: string) => Number(new RegExp(`^${name}\\{(?:[^}]*,)?envoy_cluster_name="db\\.[^"]+"[^}]*\\} (\\d+)`, "m").exec(text)?.[1] ?? NaN);
  // Bytes are counted when a connection's pipe closes, which may trail the client's own close.
  for (const deadline = Date.now() + 5000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 20))) {
    text = await scrape();
    if (value("envoy_cluster_upstream_cx_rx_bytes_total") === sent) break;
  }
  t.equal(value("envoy_cluster_ssl_handshake"), 20, "20 upstream TLS handshakes");
  // Both directions are read through DirectReads (src/tcp/pipe.ts); their bytes still count.
  t.equal(value("envoy_cluster_upstream_cx_tx_bytes_total"), sent, `${sent} bytes counted towards the upstream`);
  t.equal(value("envoy_cluster_upstream_cx_rx_bytes_total"), sent, "and as many back from it");
  t.ok(value("envoy_cluster_ssl_session_reused") >= 19, `all but the first resumed a session (${value("envoy_cluster_ssl_session_reused")})`);
});

// An instance the catalog lists as healthy but whose address refuses connections. TCP upstreams
// go through the cluster's concrete stage like HTTP: each refused connect is tried again on
// another instance (the app sees no failure) and counts as a consecutive local-origin failure
// for outlier detection, which ejects the instance after MaxFailures of them; once ejected it
// costs nothing, and once it accepts again it gets connections back after its ejection time.
t.test("a TCP upstream ejects an instance that refuses connections and takes it back after it recovers", async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  await configWrite(t, dir, {
    Kind: "service-defaults",
    Name: "web",
    UpstreamConfig: { Overrides: [{ Name: "db", PassiveHealthCheck: { Interval: "200ms", MaxFailures: 5, MaxEjectionPercent: 100, BaseEjectionTime: "4s" } }] },
  });
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`]);
  // A port nobody listens on, registered by a live pid so the catalog keeps it healthy.
  const probe = createServer();
  probe.listen(0, "127.0.0.1");
  await once(probe, "listening");
  const deadPort = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const file = join(dir, "catalog", "db-dead.json");
  await writeFile(file, JSON.stringify({ id: "db-dead", service: "db", address: "127.0.0.1", port: deadPort, protocol: "tcp", pid: process.pid, meta: {} }));
  t.teardown(() => rm(file, { force: true }));

  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  await until(async () => {
    const c = clusterOf(await configDump(web.adminAddr), "db");
    return c?.endpoints.length === 2 && "outlierDetection" in c;
  }, 10_000, "web to see both db instances and db's outlier detection");
  const up = web.upstreams["db"]!;
  const failures = () => metric(web.adminAddr, "envoy_cluster_upstream_cx_connect_fail");
  const ejected = () => metric(web.adminAddr, "envoy_cluster_outlier_detection_ejections_active");
  const echoes = async (n: number, tag: string): Promise<number> => {
    let ok = 0;
    for (let i = 0; i < n; i++) {
      const msg = `${tag} ${i}`;
      const back = await roundTrip(up, msg, 10_000).catch(() => Buffer.alloc(0));
      if (back.toString() === msg) ok++;
    }
    return ok;
  };

  const started = performance.now();
  t.equal(await echoes(20, "before"), 20, "all 20 connections echo: a refused connect is tried again on the live instance");
  const took = performance.now() - started;
  const early = await failures();
  // Round robin alone would try it 10 times. Back-offs of 100 ms doubling, each up to 10 % shorter
  // by jitter: in `took` ms at most this many can have ended (a slow machine sees more of them).
  const doublings = Math.ceil(Math.log2(took / 90 + 1)) + 1;
  t.ok(early >= 1 && early <= Math.min(5, doublings), `the dead instance refused ${early} connect(s) in ${took.toFixed(0)} ms, then was passed over while it backed off (100 ms, doubling: at most ${doublings})`);
  // Each back-off over, a new connection tries it again: the fifth refusal in a row ejects it.
  await until(async () => (await echoes(1, "probe")) === 1 && (await ejected()) === 1, 10_000, "the dead instance to be ejected");
  const failed = await failures();
  t.ok(failed >= 5 && failed <= 6, `the dead instance cost ${failed} refused connects, none of them the app's (MaxFailures 5)`);
  t.equal(await ejected(), 1, "and is ejected (envoy_cluster_outlier_detection_ejections_active 1)");

  t.equal(await echoes(10, "ejected"), 10, "while ejected, every connection echoes…");
  t.equal(await failures(), failed, "…and none is tried on the ejected instance");
  t.equal(await ejected(), 1, "which stayed ejected throughout");

  // The instance recovers: its port now leads to db's real public listener.
  const relayed = new Set<Socket>();
  let relayedTotal = 0;
  // A byte relay: the mTLS handshake and the half-closes pass through it untouched.
  const relay = createServer({ allowHalfOpen: true }, (s) => {
    relayedTotal++;
    const u = connect({ ...hostPort(db.publicAddr!), allowHalfOpen: true });
    relayed.add(s).add(u);
    s.pipe(u);
    u.pipe(s);
    const fail = () => {
      s.destroy();
      u.destroy();
    };
    s.on("error", fail).once("close", () => relayed.delete(s));
    u.on("error", fail).once("close", () => relayed.delete(u));
  });
  relay.listen(deadPort, "127.0.0.1");
  await once(relay, "listening");
  t.teardown(
    () =>
      new Promise<void>((r) => {
        for (const s of relayed) s.destroy();
        relay.close(() => r());
      }),
  );
  await until(async () => (await ejected()) === 0, 10_000, "the ejection to end (BaseEjectionTime 4s)");
  t.equal(await echoes(10, "after"), 10, "after the ejection ends every connection echoes");
  t.ok(relayedTotal >= 3, `and the recovered instance carries its share again (${relayedTotal} of 10)`);
  t.equal(await failures(), failed, "with no refused connect");
  t.equal(await web.stop(), 0, "web exits 0");
  t.equal(await db.stop(), 0, "db exits 0");
});
