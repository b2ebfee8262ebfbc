// Real peers at both ends of the mesh: psql to a real PostgreSQL server through two sidecars,
// and curl and openssl s_client talking mTLS straight to a public listener with a dev-CA
// certificate, as any non-meshproxy client of the mesh would.
import t from "tap";
import { createServer } from "node:http";
import { once } from "node:events";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import { createRootCa } from "../../src/index.js";
import { hostPort, startSidecar, tempDir, type Teardown } from "../helpers/mesh.js";
import { leafFor, readDevCa, writeLeaf } from "../helpers/certs.js";
import { metric, nextLog, runCommand, startPostgres, upstreamCluster } from "../helpers/peers.js";

t.test("psql through the mesh to a real PostgreSQL 15 server", { timeout: 120_000 }, async (t) => {
  const pg = await startPostgres(t); // fails with a clear message if postgresql-15 is missing
  const dir = await tempDir(t);
  await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${pg.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  const { host, port } = hostPort(web.upstreams["db"]!);
  const psql = (sql: string) =>
    runCommand(t, "psql", ["-h", host, "-p", String(port), "-U", "postgres", "-d", "postgres", "-Atc", sql], { env: { PGCONNECT_TIMEOUT: "10" } });

  const answer = await psql("select 40+2");
  t.equal(answer.code, 0, `psql exits 0 ${answer.stderr}`);
  t.equal(answer.stdout, "42\n", "PostgreSQL answers 42 through web's upstream listener and db's public listener");

  // A result bigger than any socket buffer, so it takes many reads and writes through both sidecars.
  const big = await psql("select repeat('x', 3000000)");
  t.equal(big.code, 0, `psql exits 0 on a 3 MB row ${big.stderr}`);
  t.equal(big.stdout.length, 3_000_001, "the 3 MB value arrives whole");
  t.ok(/^x+\n$/.test(big.stdout), "and unaltered");

  const cluster = await upstreamCluster(web.adminAddr, "db");
  t.equal(await metric(web.adminAddr, "envoy_cluster_upstream_cx_total", { envoy_cluster_name: cluster }), 2, `both psql sessions went through web's cluster ${cluster}`);
});

/** A node:http app that counts requests; closed at teardown. */
async function httpApp(t: Teardown): Promise<{ port: number; hits: () => number }> {
  let hits = 0;
  const server = createServer((_req, res) => {
    hits++;
    res.end("hello from the db app\n");
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

t.test("curl and openssl s_client reach a public listener with a dev-CA client certificate", { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const app = await httpApp(t);
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  const addr = db.publicAddr!;
  const ca = await readDevCa(dir);
  const pems = await tempDir(t, "meshproxy-pems-");
  const root = join(pems, "root.pem");
  await writeFile(root, ca.certPem);
  const web = await writeLeaf(pems, "web", await leafFor(ca, "web"));

  // curl cannot check a server certificate that names no host (only a SPIFFE URI), hence -k;
  // what this shows is the other direction: the proxy lets curl in only with a mesh certificate.
  const withCert = await runCommand(t, "curl", ["-sS", "-k", "--cacert", root, "--cert", web.cert, "--key", web.key, "-w", "%{http_code}", `https://${addr}/`]);
  t.equal(withCert.code, 0, `curl with web's certificate exits 0 ${withCert.stderr}`);
  t.equal(withCert.stdout, "hello from the db app\n200", "and gets the app's 200 response through the sidecar");
  t.equal(app.hits(), 1, "the app served that request");

  const refused = nextLog(db, (l) => l["@message"] === "inbound connection refused" && l["reason"] === "no_client_cert");
  const noCert = await runCommand(t, "curl", ["-sS", "-k", "--cacert", root, `https://${addr}/`]);
  t.not(noCert.code, 0, `the same curl without --cert fails (exit ${noCert.code}: ${noCert.stderr.trim()})`);
  t.notMatch(noCert.stdout, /hello from the db app/, "and gets no response body");
  t.ok(await refused, "db logs the refusal: no client certificate");
  t.equal(await metric(db.adminAddr, "meshproxy_inbound_rejected_total", { reason: "no_client_cert" }), 1, "and counts it");
  t.equal(app.hits(), 1, "the app never saw the refused request");

  // s_client verifies the server's chain against the dev root (it checks no host name by default).
  const request = "GET / HTTP/1.0\r\nHost: db\r\n\r\n";
  const sClient = (caFile: string) =>
    runCommand(t, "openssl", ["s_client", "-connect", addr, "-cert", web.cert, "-key", web.key, "-CAfile", caFile, "-verify_return_error", "-ign_eof"], { input: request });
  const ok = await sClient(root);
  t.equal(ok.code, 0, "openssl s_client exits 0");
  t.match(ok.stdout, /Verify return code: 0 \(ok\)/, "the server's chain verifies against the dev root");
  t.match(ok.stdout, /HTTP\/1\.1 200 OK[\s\S]*hello from the db app/, "and the request crossed to the app");

  const otherRoot = join(pems, "other-root.pem");
  await writeFile(otherRoot, (await createRootCa("other.consul")).certPem);
  const bad = await sClient(otherRoot);
  t.not(bad.code, 0, "against an unrelated root the same s_client fails verification");
  t.notMatch(bad.stdout, /Verify return code: 0 \(ok\)/, "and does not report ok");
  t.equal(app.hits(), 2, "only the verified s_client request reached the app");
});
