// Reaching the agent the ways Consul's CLI can: HTTPS with a CA file, a client certificate and a
// server name (an agent with verify_incoming), and a unix socket. A front in the test terminates
// TLS (or listens on the socket) and passes bytes to the agent double.
import t from "tap";
import { createServer as createTlsServer } from "node:tls";
import { createServer as createNetServer, connect, type Server } from "node:net";
import { once } from "node:events";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import { AgentClient } from "../src/controlplane/consul/client.js";
import { createRootCa, issueLeaf } from "../src/identity/ca.js";
import { ConsulAgentDouble } from "./helpers/consul-agent.js";
import { tempDir } from "./helpers/mesh.js";

function forwardTo(port: number): (s: import("node:net").Socket) => void {
  return (s) => {
    const up = connect({ host: "127.0.0.1", port });
    s.pipe(up).pipe(s);
    s.on("error", () => up.destroy());
    up.on("error", () => s.destroy());
  };
}

async function listening(server: Server, where: { port: number; host: string } | { path: string }): Promise<void> {
  server.listen(where);
  await once(server, "listening");
}

t.test("HTTPS to the agent: CA file, client certificate, verification", async (t) => {
  const d = await ConsulAgentDouble.start();
  t.teardown(() => d.stop());
  const dir = await tempDir(t);
  const ca = await createRootCa("agent-ca.example");
  const server = await issueLeaf(ca, { spiffeId: "spiffe://agent-ca.example/agent/server", commonName: "consul.example", ttlMs: 3_600_000 });
  const client = await issueLeaf(ca, { spiffeId: "spiffe://agent-ca.example/agent/client", commonName: "meshproxy", ttlMs: 3_600_000 });
  const front = createTlsServer({ cert: server.certPem, key: server.keyPem, ca: [ca.certPem], requestCert: true, rejectUnauthorized: true }, forwardTo(d.port));
  await listening(front, { port: 0, host: "127.0.0.1" });
  t.teardown(() => new Promise<void>((r) => front.close(() => r())));
  const port = (front.address() as AddressInfo).port;
  await writeFile(join(dir, "ca.pem"), ca.certPem);
  await writeFile(join(dir, "client.pem"), client.certPem);
  await writeFile(join(dir, "client.key"), client.keyPem);

  const ok = new AgentClient({
    httpAddr: `https://127.0.0.1:${port}`,
    tls: { caFile: join(dir, "ca.pem"), clientCert: join(dir, "client.pem"), clientKey: join(dir, "client.key"), verify: true },
  });
  t.teardown(() => ok.close());
  // The dev CA's leaves carry no DNS or IP name for 127.0.0.1: with verification on, the
  // agent's certificate is refused although its chain is good (the name is checked too).
  await t.rejects(ok.call("GET", "/v1/agent/connect/ca/roots"), "with verification on, an agent certificate that does not name the host is refused");

  const named = new AgentClient({
    httpAddr: `https://127.0.0.1:${port}`,
    tls: { caFile: join(dir, "ca.pem"), clientCert: join(dir, "client.pem"), clientKey: join(dir, "client.key"), verify: false },
  });
  t.teardown(() => named.close());
  const res = await named.call("GET", "/v1/agent/connect/ca/roots");
  t.equal(res.status, 200, "with CONSUL_HTTP_SSL_VERIFY=false the call goes through, over TLS, presenting the client certificate the agent requires");

  const noCert = new AgentClient({ httpAddr: `https://127.0.0.1:${port}`, tls: { caFile: join(dir, "ca.pem"), verify: false } });
  t.teardown(() => noCert.close());
  await t.rejects(noCert.call("GET", "/v1/agent/connect/ca/roots"), "an agent that requires client certificates refuses a client without one");

  const wrongCa = await createRootCa("other.example");
  await writeFile(join(dir, "other.pem"), wrongCa.certPem);
  const untrusted = new AgentClient({ httpAddr: `https://127.0.0.1:${port}`, tls: { caFile: join(dir, "other.pem"), clientCert: join(dir, "client.pem"), clientKey: join(dir, "client.key"), verify: true } });
  t.teardown(() => untrusted.close());
  await t.rejects(untrusted.call("GET", "/v1/agent/connect/ca/roots"), "an agent certificate from a CA not in -ca-file is refused");
});

t.test("unix:// agent addresses", async (t) => {
  const d = await ConsulAgentDouble.start();
  t.teardown(() => d.stop());
  const dir = await tempDir(t);
  const path = join(dir, "consul.sock");
  const front = createNetServer(forwardTo(d.port));
  await listening(front, { path });
  t.teardown(() => new Promise<void>((r) => front.close(() => r())));
  const client = new AgentClient({ httpAddr: `unix://${path}` });
  t.teardown(() => client.close());
  const res = await client.call("GET", "/v1/agent/connect/ca/roots");
  t.equal(res.status, 200, "the agent answered over the unix socket");
  t.ok(res.index !== null && res.index > 0, "with its X-Consul-Index");
});

t.test("HTTPS to the agent with full verification: the agent's name from -tls-server-name", async (t) => {
  const { execFileSync } = await import("node:child_process");
  const { readFile } = await import("node:fs/promises");
  const d = await ConsulAgentDouble.start();
  t.teardown(() => d.stop());
  const dir = await tempDir(t);
  // An agent certificate as Consul's own CA tooling makes them: a DNS name, here consul.example.
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=consul.example", "-addext", "subjectAltName=DNS:consul.example", "-keyout", join(dir, "agent.key"), "-out", join(dir, "agent.pem")], { stdio: "ignore" });
  const front = createTlsServer({ cert: await readFile(join(dir, "agent.pem")), key: await readFile(join(dir, "agent.key")) }, forwardTo(d.port));
  await listening(front, { port: 0, host: "127.0.0.1" });
  t.teardown(() => new Promise<void>((r) => front.close(() => r())));
  const port = (front.address() as AddressInfo).port;
  const client = new AgentClient({ httpAddr: `https://127.0.0.1:${port}`, tls: { caFile: join(dir, "agent.pem"), serverName: "consul.example", verify: true } });
  t.teardown(() => client.close());
  const res = await client.call("GET", "/v1/agent/connect/ca/roots");
  t.equal(res.status, 200, "chain and name verified against -ca-file and -tls-server-name");
  const wrongName = new AgentClient({ httpAddr: `https://127.0.0.1:${port}`, tls: { caFile: join(dir, "agent.pem"), serverName: "other.example", verify: true } });
  t.teardown(() => wrongName.close());
  await t.rejects(wrongName.call("GET", "/v1/agent/connect/ca/roots"), "a server name the certificate does not carry is refused");
});

t.test("an answer past the size bound is refused, not read to its end, and the client goes on", async (t) => {
  const { createServer } = await import("node:http");
  let streamClosed: () => void = () => {};
  const closed = new Promise<void>((r) => (streamClosed = r));
  const agent = createServer((req, res) => {
    if (req.url?.startsWith("/v1/endless")) {
      // Never ends: the client must stop reading, not wait for the end.
      res.writeHead(200, { "content-type": "application/json" });
      res.on("close", () => streamClosed());
      const feed = (): void => {
        while (res.write("[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]".repeat(64)));
        res.once("drain", feed);
      };
      feed();
      return;
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ ok: true }));
  });
  await listening(agent, { port: 0, host: "127.0.0.1" });
  t.teardown(() => {
    agent.closeAllConnections();
    return new Promise<void>((r) => agent.close(() => r()));
  });
  const client = new AgentClient({ httpAddr: `127.0.0.1:${(agent.address() as AddressInfo).port}`, maxAnswerBytes: 64 * 1024 });
  t.teardown(() => client.close());
  await t.rejects(client.call("GET", "/v1/endless"), /GET \/v1\/endless: the agent's answer is larger than 65536 bytes; refused as bad input/, "an endless answer is refused with what was wrong");
  await closed;
  t.pass("the endless answer's connection was closed by the client");
  const res = await client.call("GET", "/v1/agent/self");
  t.same(res.body, { ok: true }, "the next call is answered as before");
});
