// HAProxy as the same mTLS sidecar pair meshproxy forms (the shape haproxy-consul-connect
// generates: an upstream frontend whose backend server speaks `ssl crt … ca-file … verify
// required`, and a public frontend `bind … ssl crt … ca-file … verify required` in front of the
// app), with certificates issued by meshproxy's dev CA. One process per side, `nbthread 1`.
import { connect } from "node:net";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";

// meshproxy's TLS 1.3 suite order (src/tls/contexts.ts), so both pairs negotiate the same cipher.
const TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
const TLS12_CIPHERS = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

function globalSection(maxconn, statsSocket) {
  return `global
  nbthread 1
  # For the harness: "show info" after a run (TLS session reuse), "set weight" (weight shift).
  stats socket ${statsSocket} mode 600 level admin
  # Set explicitly: HAProxy sizes its fd needs from maxconn (about 2 per connection) and the
  # hard fd limit on this machine is 20000.
  maxconn ${maxconn}
  ssl-default-bind-ciphersuites ${TLS13_SUITES}
  ssl-default-server-ciphersuites ${TLS13_SUITES}
  ssl-default-bind-ciphers ${TLS12_CIPHERS}
  ssl-default-server-ciphers ${TLS12_CIPHERS}
  ssl-default-bind-options ssl-min-ver TLSv1.2
  ssl-default-server-options ssl-min-ver TLSv1.2

defaults
  timeout connect 5s
  timeout client 10m
  timeout server 10m
  timeout http-keep-alive 10m
  maxconn ${maxconn}
`;
}

/**
 * Client side: plain listeners for the local app → mTLS to the server side.
 * L4 (mode tcp) and L7 (mode http, keep-alive to the next hop) frontends in one process.
 */
export function clientConfig({ l4Port, l7Port, serverL4Port, serverL7Port, sni, dir, maxconn, statsSocket, split, gateway }) {
  const tls = `ssl crt ${join(dir, "client.pem")} ca-file ${join(dir, "root.pem")} verify required sni str(${sni})`;
  // The gateway path: the same upstream, now in dc2, reached through this datacenter's gateway
  // (Consul's mesh gateway mode local). The connection carries the dc2 target's SNI, as
  // meshproxy's sidecar sends it, and HAProxy checks the server certificate against that name.
  const gatewaySection = gateway
    ? `
frontend upstream_gw
  mode tcp
  bind 127.0.0.1:${gateway.port}
  default_backend mesh_gw

backend mesh_gw
  mode tcp
  server gw_dc1 127.0.0.1:${gateway.gatewayPort} ssl crt ${join(dir, "client.pem")} ca-file ${join(dir, "root.pem")} verify required sni str(${gateway.sni})
`
    : "";
  const splitSection = split
    ? `
# Weight shift under load: two versions behind one upstream, moved with "set weight" at runtime.
frontend upstream_split
  mode http
  bind 127.0.0.1:${split.port}
  default_backend split

backend split
  mode http
  http-reuse always
  server v1 127.0.0.1:${split.serverV1Port} ${tls} alpn http/1.1 weight 100
  server v2 127.0.0.1:${split.serverV2Port} ${tls} alpn http/1.1 weight 0
`
    : "";
  return `${globalSection(maxconn, statsSocket)}${splitSection}${gatewaySection}
frontend upstream_l4
  mode tcp
  bind 127.0.0.1:${l4Port}
  default_backend mesh_l4

backend mesh_l4
  mode tcp
  # TLS session reuse towards the server is HAProxy's default.
  server app1 127.0.0.1:${serverL4Port} ${tls}

frontend upstream_l7
  mode http
  bind 127.0.0.1:${l7Port}
  default_backend mesh_l7

backend mesh_l7
  mode http
  http-reuse always
  server app1 127.0.0.1:${serverL7Port} ${tls} alpn http/1.1
`;
}

/** Server side: the public mTLS listeners → the local app. */
export function serverConfig({ l4Port, l7Port, appPort, dir, maxconn, statsSocket, split, dc2Cert = false }) {
  const tls = `ssl crt ${join(dir, "server.pem")} ca-file ${join(dir, "root.pem")} verify required`;
  // With the gateway path, the public L4 listener also holds the app's dc2 certificate (CN = its
  // dc2 SNI); HAProxy picks the certificate whose name matches the ClientHello's SNI.
  const l4Tls = dc2Cert ? `ssl crt ${join(dir, "server.pem")} crt ${join(dir, "server-dc2.pem")} ca-file ${join(dir, "root.pem")} verify required` : tls;
  const splitSection = split
    ? ["v1", "v2"]
        .map(
          (v) => `
frontend public_${v}
  mode http
  bind 127.0.0.1:${split[v].port} ${tls} alpn http/1.1
  default_backend app_${v}

backend app_${v}
  mode http
  http-reuse always
  server app_${v} 127.0.0.1:${split[v].appPort}
`,
        )
        .join("")
    : "";
  return `${globalSection(maxconn, statsSocket)}${splitSection}
frontend public_l4
  mode tcp
  bind 127.0.0.1:${l4Port} ${l4Tls}
  default_backend app_l4

backend app_l4
  mode tcp
  server app 127.0.0.1:${appPort}

frontend public_l7
  mode http
  bind 127.0.0.1:${l7Port} ${tls} alpn http/1.1
  default_backend app_l7

backend app_l7
  mode http
  http-reuse always
  server app 127.0.0.1:${appPort}
`;
}

/**
 * An SNI-routing passthrough gateway, the HAProxy counterpart of a mesh gateway: it waits for the
 * ClientHello, reads its SNI and pipes the still-encrypted stream to the route's target. It holds
 * no certificate. A connection that is not TLS, or whose SNI no route names, gets no backend and
 * is closed (a mesh gateway refuses an unknown SNI the same way).
 * routes: [{ name, sniEnd | sniExact, target: "host:port" }], first match wins.
 */
export function gatewayConfig({ port, routes, maxconn, statsSocket }) {
  const uses = routes.map((r) => `  use_backend ${r.name} if { req.ssl_sni ${r.sniEnd ? `-m end ${r.sniEnd}` : `-m str ${r.sniExact}`} }`).join("\n");
  const backends = routes
    .map(
      (r) => `
backend ${r.name}
  mode tcp
  server ${r.name} ${r.target}
`,
    )
    .join("");
  return `${globalSection(maxconn, statsSocket)}
frontend gateway
  mode tcp
  bind 127.0.0.1:${port}
  tcp-request inspect-delay 5s
  tcp-request content accept if { req_ssl_hello_type 1 }
${uses}
${backends}`;
}

/** Writes the certificates HAProxy needs (cert + key in one PEM) from the dev CA. */
export async function writeHaproxyCerts(dir, { rootPem, server, serverDc2, client }) {
  await writeFile(join(dir, "root.pem"), rootPem);
  await writeFile(join(dir, "server.pem"), server.certPem + server.keyPem, { mode: 0o600 });
  if (serverDc2) await writeFile(join(dir, "server-dc2.pem"), serverDc2.certPem + serverDc2.keyPem, { mode: 0o600 });
  await writeFile(join(dir, "client.pem"), client.certPem + client.keyPem, { mode: 0o600 });
}

/** Resolves when something accepts on host:port (polled every 2 ms), or rejects after timeoutMs. */
export async function waitAccepting(port, { host = "127.0.0.1", timeoutMs = 10_000, handle } = {}) {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = connect({ host, port });
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (ok) return performance.now();
    if (handle && !handle.running) throw new Error(`${handle.name} (pid ${handle.pid}) exited while starting:\n${handle.stderr().slice(-3000)}`);
    if (performance.now() > deadline) throw new Error(`nothing accepting on ${host}:${port} after ${timeoutMs} ms${handle ? `; ${handle.name} stderr:\n${handle.stderr().slice(-3000)}` : ""}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Sends one runtime API command; resolves with the reply text. */
export function haproxyCommand(socketPath, command) {
  return new Promise((resolve, reject) => {
    const s = connect(socketPath);
    let b = "";
    s.setEncoding("utf8");
    s.on("data", (d) => (b += d));
    s.on("error", reject);
    s.on("end", () => resolve(b));
    s.end(`${command}\n`);
  });
}

/** Connections HAProxy's backends have taken so far (`show stat`: the BACKEND rows' stot), or null. */
export async function haproxyBackendSessions(socketPath) {
  let csv;
  try {
    csv = await haproxyCommand(socketPath, "show stat");
  } catch {
    return null;
  }
  const [head, ...rows] = csv.split("\n").filter(Boolean);
  const stot = head?.replace(/^# /, "").split(",").indexOf("stot") ?? -1;
  if (stot < 0) return null;
  return rows.map((r) => r.split(",")).filter((f) => f[1] === "BACKEND").reduce((n, f) => n + Number(f[stot]), 0);
}

/** `show info` on a stats socket, as { field: value } (numbers where numeric). */
export function haproxyInfo(socketPath) {
  return new Promise((resolve) => {
    const s = connect(socketPath);
    let b = "";
    s.setEncoding("utf8");
    s.on("data", (d) => (b += d));
    s.on("error", () => resolve(null));
    s.on("end", () => {
      const out = {};
      for (const line of b.split("\n")) {
        const i = line.indexOf(": ");
        if (i > 0) {
          const v = line.slice(i + 2).trim();
          out[line.slice(0, i)] = /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v;
        }
      }
      resolve(out);
    });
    s.end("show info\n");
  });
}

/** Starts `haproxy -db -f cfg` and times spawn → first listener accepting. */
export async function startHaproxy(procs, name, cfgPath, cfgText, probePort) {
  await writeFile(cfgPath, cfgText);
  const h = procs.spawn(name, "haproxy", ["-db", "-f", cfgPath], { role: "proxy" });
  const readyAt = await waitAccepting(probePort, { handle: h });
  return { handle: h, readyMs: readyAt - h.spawnedAt };
}
