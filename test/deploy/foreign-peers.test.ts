// Other data planes speak the same mTLS: HAProxy with a mesh leaf as a client of a meshproxy
// public listener and as a server that a meshproxy upstream dials, each side checking the other's
// SPIFFE ID; and redis-benchmark through an L4 upstream of two sidecars.
//
// HAProxy 2.6 has no fetch for a certificate's URI SANs, so its side of the check matches the
// DER encoding of the SAN itself (tag 0x86, length, the ID's bytes) in ssl_c_der / ssl_s_der:
// the length byte makes "…/svc/web" not match "…/svc/web-admin".
import t from "tap";
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { connect, type AddressInfo } from "node:net";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createRootCa, issueLeaf, type CaMaterial } from "../../src/index.js";
import { runMeshproxy, startSidecar, tempDir, hostPort, type Teardown } from "../helpers/mesh.js";
import { spiffe, TRUST_DOMAIN } from "../helpers/mesh-tls.js";
import { freePort, metric, nextLog, runCommand, upstreamCluster } from "../helpers/peers.js";
import { ignoreRejection } from "../helpers/ignore.js";

const hasHaproxy = existsSync("/usr/sbin/haproxy");
const hasRedis = existsSync("/usr/bin/redis-server") && existsSync("/usr/bin/redis-benchmark");

/** Hex of the DER GeneralName for a URI SAN: [6] IMPLICIT IA5String. */
function uriSanHex(uri: string): string {
  const body = Buffer.from(uri, "ascii");
  const len = body.length < 128 ? Buffer.from([body.length]) : Buffer.from([0x81, body.length]);
  return Buffer.concat([Buffer.from([0x86]), len, body]).toString("hex").toUpperCase();
}

interface Pki {
  readonly dir: string;
  readonly root: string;
  /** Writes `<service>.pem`/`.key` and a combined `<service>.haproxy.pem`; returns their paths. */
  leaf(service: string): Promise<{ cert: string; key: string; combined: string }>;
}

async function pki(t: Teardown): Promise<Pki> {
  const dir = await tempDir(t, "meshproxy-peers-");
  const ca: CaMaterial = await createRootCa(TRUST_DOMAIN);
  const root = join(dir, "root.pem");
  await writeFile(root, ca.certPem);
  return {
    dir,
    root,
    async leaf(service) {
      const l = await issueLeaf(ca, { spiffeId: spiffe(service), commonName: service, ttlMs: 3_600_000 });
      const cert = join(dir, `${service}.pem`);
      const key = join(dir, `${service}.key`);
      const combined = join(dir, `${service}.haproxy.pem`);
      await writeFile(cert, l.certPem);
      await writeFile(key, l.keyPem, { mode: 0o600 });
      await writeFile(combined, l.certPem + l.keyPem, { mode: 0o600 });
      return { cert, key, combined };
    },
  };
}

async function httpApp(t: Teardown): Promise<{ port: number; hits: () => number }> {
  let hits = 0;
  const server = createServer((_req, res) => {
    hits++;
    res.end("hello from the app\n");
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(
    () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  );
  return { port: (server.address() as AddressInfo).port, hits: () => hits };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/** `haproxy -db -f cfg`, up once `port` accepts; killed at teardown. */
async function startHaproxy(t: Teardown, dir: string, name: string, cfg: string, port: number): Promise<void> {
  const path = join(dir, `${name}.cfg`);
  await writeFile(path, cfg);
  const check = await runCommand(t, "haproxy", ["-c", "-f", path]);
  if (check.code !== 0) throw new Error(`haproxy refuses ${name}.cfg:\n${check.stdout}${check.stderr}`);
  const child = spawn("haproxy", ["-db", "-f", path], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const exited = once(child, "close");
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await exited;
    }
  });
  const deadline = Date.now() + 10_000;
  while (!(await accepts(port))) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`haproxy (${name}) did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const DEFAULTS = `defaults
  timeout connect 5s
  timeout client 30s
  timeout server 30s
`;

async function staticSidecar(t: Teardown, dir: string, name: string, config: object): Promise<{ public: string | null; upstreams: Record<string, string>; adminAddr: string; proc: ReturnType<typeof runMeshproxy> }> {
  const file = join(dir, `${name}.json`);
  await writeFile(file, JSON.stringify(config));
  const proc = runMeshproxy(t, ["-config-file", file, "-log-json", "-admin-addr", "127.0.0.1:0"]);
  const ready = await proc.waitForLog((l) => l["@message"] === "proxy ready");
  const admin = await proc.waitForLog((l) => l["@message"] === "admin API listening");
  const upstreams: Record<string, string> = {};
  for (const [k, v] of Object.entries(ready)) if (k.startsWith("upstream.")) upstreams[k.slice(9)] = String(v);
  return { public: typeof ready["public"] === "string" ? ready["public"] : null, upstreams, adminAddr: String(admin["address"]), proc };
}

const curl = (t: Teardown, url: string) => runCommand(t, "curl", ["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", url]);

t.test("HAProxy with a mesh leaf is a client of a meshproxy public listener; both check the other's SPIFFE ID", { skip: hasHaproxy ? false : "haproxy is not installed (.ci/run installs it)", timeout: 60_000 }, async (t) => {
  const p = await pki(t);
  const app = await httpApp(t);
  const db = await p.leaf("db");
  const web = await p.leaf("web");
  const cache = await p.leaf("cache");
  const sidecar = await staticSidecar(t, p.dir, "db", {
    service: "db",
    identity: { cert_file: db.cert, key_file: db.key },
    roots_files: [p.root],
    public_listener: { bind: "127.0.0.1:0", local_app: `127.0.0.1:${app.port}`, protocol: "tcp" },
    intentions: { default_action: "deny", intentions: [{ source: "web", destination: "db", action: "allow" }] },
  });
  const { port: dbPort } = hostPort(sidecar.public!);
  const [asWeb, asCache, wrongServer] = [await freePort(), await freePort(), await freePort()];
  // Each backend dials meshproxy with the mesh root and a client leaf, and refuses a response from
  // a server whose certificate is not the expected service's. No `sni`: HAProxy then checks the
  // server certificate's DNS names against it, and mesh leaves carry only the SPIFFE URI.
  const backend = (name: string, leaf: string, expect: string) => `backend ${name}
  mode http
  http-response deny unless { ssl_s_der,hex -m sub ${uriSanHex(spiffe(expect))} }
  server db 127.0.0.1:${dbPort} ssl crt ${leaf} ca-file ${p.root} verify required
`;
  const frontend = (name: string, port: number) => `frontend ${name}
  mode http
  bind 127.0.0.1:${port}
  default_backend ${name}
`;
  await startHaproxy(
    t,
    p.dir,
    "client",
    `${DEFAULTS}${frontend("as_web", asWeb)}${backend("as_web", web.combined, "db")}${frontend("as_cache", asCache)}${backend("as_cache", cache.combined, "db")}${frontend("wrong_server", wrongServer)}${backend("wrong_server", web.combined, "api")}`,
    asWeb,
  );

  const ok = await curl(t, `http://127.0.0.1:${asWeb}/`);
  t.equal(ok.stdout, "hello from the app\n\n200", `HAProxy as web, with web's leaf, reaches the app behind db's sidecar ${ok.stderr}`);
  t.equal(app.hits(), 1, "the app served it");

  const refused = nextLog(sidecar.proc, (l) => l["@message"] === "inbound connection refused");
  const denied = await curl(t, `http://127.0.0.1:${asCache}/`);
  t.match(denied.stdout, /\n50[23]$/, "HAProxy presenting cache's leaf gets no answer from the app (intention web → db only)");
  const line = await refused;
  t.match(line, { reason: "denied_by_intention", source: "cache", destination: "db" }, "meshproxy read the source service from HAProxy's SPIFFE ID and refused it by intention");
  t.equal(app.hits(), 1, "the app never saw cache's request");

  const wrong = await curl(t, `http://127.0.0.1:${wrongServer}/`);
  t.match(wrong.stdout, /\n502$/, "an HAProxy backend that expects api's SPIFFE ID refuses db's answer (502)");
});

t.test("a meshproxy upstream dials HAProxy serving a mesh leaf; both check the other's SPIFFE ID", { skip: hasHaproxy ? false : "haproxy is not installed (.ci/run installs it)", timeout: 60_000 }, async (t) => {
  const p = await pki(t);
  const app = await httpApp(t);
  const db = await p.leaf("db");
  const web = await p.leaf("web");
  const cache = await p.leaf("cache");
  const haproxyPort = await freePort();
  // HAProxy as db's public listener: mTLS with the mesh root, and only web's SPIFFE ID gets in
  // (checked once the handshake is done, before any byte reaches the app).
  await startHaproxy(
    t,
    p.dir,
    "server",
    `${DEFAULTS}frontend public_listener
  mode http
  bind 127.0.0.1:${haproxyPort} ssl crt ${db.combined} ca-file ${p.root} verify required
  tcp-request session reject unless { ssl_c_der,hex -m sub ${uriSanHex(spiffe("web"))} }
  default_backend local_app
backend local_app
  mode http
  server app 127.0.0.1:${app.port}
`,
    haproxyPort,
  );
  const endpoint = `127.0.0.1:${haproxyPort}`;
  const sidecar = (service: string, leaf: { cert: string; key: string }) =>
    staticSidecar(t, p.dir, service, {
      service,
      identity: { cert_file: leaf.cert, key_file: leaf.key },
      roots_files: [p.root],
      upstreams: [
        { name: "db", bind: "127.0.0.1:0", endpoints: [endpoint] },
        // The same endpoint under another name: meshproxy expects cache's SPIFFE ID there.
        { name: "cache", bind: "127.0.0.1:0", endpoints: [endpoint] },
      ],
    });
  const webSidecar = await sidecar("web", web);
  const ok = await curl(t, `http://${webSidecar.upstreams["db"]}/`);
  t.equal(ok.stdout, "hello from the app\n\n200", `web's upstream db reaches the app behind HAProxy ${ok.stderr}`);
  t.equal(app.hits(), 1, "the app served it");

  const mismatch = await curl(t, `http://${webSidecar.upstreams["cache"]}/`);
  t.notOk(mismatch.stdout.endsWith("\n200"), "web's upstream cache refuses HAProxy, whose certificate is db's, not cache's");
  const cacheCluster = await upstreamCluster(webSidecar.adminAddr, "cache");
  const failures = await metric(webSidecar.adminAddr, "envoy_cluster_upstream_cx_connect_fail", { envoy_cluster_name: cacheCluster });
  t.ok(failures !== null && failures >= 1, `meshproxy counts the refused server as a connect failure (${failures})`);

  const cacheSidecar = await sidecar("cache", cache);
  const rejected = await curl(t, `http://${cacheSidecar.upstreams["db"]}/`);
  t.notOk(rejected.stdout.endsWith("\n200"), "HAProxy refuses a client whose SPIFFE ID is cache's");
  t.equal(app.hits(), 1, "only web's request reached the app");
});

t.test("redis-benchmark through an L4 upstream", { skip: hasRedis ? false : "redis-server and redis-tools are not installed (.ci/run installs them)", timeout: 120_000 }, async (t) => {
  const dir = await tempDir(t, "meshproxy-redis-");
  const redisPort = await freePort();
  const redis = spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], { stdio: "ignore" });
  const exited = once(redis, "close");
  t.teardown(async () => {
    redis.kill("SIGKILL");
    await exited.catch(ignoreRejection("redis-server's exit only matters for cleanup"));
  });
  const deadline = Date.now() + 10_000;
  while (!(await accepts(redisPort)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  await startSidecar(t, dir, ["-service", "redis", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${redisPort}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "redis:0"]);
  const { port } = hostPort(web.upstreams["redis"]!);
  const bench = (p: number) => runCommand(t, "redis-benchmark", ["-h", "127.0.0.1", "-p", String(p), "-n", "20000", "-c", "20", "-t", "set,get", "-q"], { timeoutMs: 100_000 });
  const rps = (out: string, op: string): number => Number(new RegExp(`${op}: ([\\d.]+) requests per second`).exec(out)?.[1] ?? "NaN");
  const direct = await bench(redisPort);
  const mesh = await bench(port);
  t.equal(mesh.code, 0, `redis-benchmark through the mesh exits 0 ${mesh.stderr}`);
  for (const op of ["SET", "GET"]) {
    t.ok(rps(mesh.stdout, op) > 0, `${op}: ${rps(mesh.stdout, op)} req/s through web's upstream and redis's public listener (direct: ${rps(direct.stdout, op)} req/s)`);
  }
  const pong = await runCommand(t, "redis-cli", ["-p", String(port), "ping"]);
  t.equal(pong.stdout, "PONG\n", "and redis answers through the mesh afterwards");
  const cluster = await metric(web.adminAddr, "envoy_cluster_upstream_cx_total", {});
  t.ok(cluster !== null && cluster >= 40, `redis-benchmark's connections (2 runs × 20 clients) crossed web's cluster (${cluster})`);
});
