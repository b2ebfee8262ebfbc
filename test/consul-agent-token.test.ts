// What a Consul user sees when the agent refuses the ACL token (403), and the CLI environment
// read as Consul's api reads it (api/api.go defaultConfig: strconv.ParseBool for the SSL flags).
import t, { type Test } from "tap";
import { createServer } from "node:http";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { AgentClient } from "../src/controlplane/consul/client.js";
import { consulAgentFromEnv } from "../src/controlplane/select.js";

async function refusing(t: Test, body: string): Promise<string> {
  const server = createServer((_req, res) => {
    res.writeHead(403, { "content-type": "text/plain" });
    res.end(body);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function refusal(addr: string, o: { token?: string; tokenSource?: string }): Promise<string> {
  const client = new AgentClient({ httpAddr: addr, ...o });
  try {
    await client.call("GET", "/v1/agent/connect/ca/leaf/web");
    return "no error";
  } catch (e) {
    return (e as Error).message;
  } finally {
    await client.close();
  }
}

t.test("403 ACL not found names where the token came from", async (t) => {
  const addr = await refusing(t, "ACL not found");
  const msg = await refusal(addr, { token: "3f2a-secret", tokenSource: "CONSUL_HTTP_TOKEN_FILE /run/secrets/consul-token" });
  t.match(msg, /HTTP 403: ACL not found/);
  t.match(msg, /the agent does not know the ACL token from CONSUL_HTTP_TOKEN_FILE \/run\/secrets\/consul-token/);
  t.notMatch(msg, /3f2a/, "the token itself is not logged");
});

t.test("403 Permission denied: the token lacks the permission; no token: the agent's default token was used", async (t) => {
  const addr = await refusing(t, `Permission denied: token with AccessorID 'a1' lacks permission 'service:write' on "web"`);
  t.match(await refusal(addr, { token: "x", tokenSource: "-token" }), /the ACL token from -token lacks the permission the agent names/);
  t.match(await refusal(addr, {}), /no ACL token was sent, so the agent used its default token: give -token, -token-file, CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE/);
});

t.test("the environment: token source, CONSUL_HTTP_SSL_VERIFY in Go's boolean forms", async (t) => {
  t.equal(consulAgentFromEnv({ CONSUL_HTTP_ADDR: "127.0.0.1:8500", CONSUL_HTTP_TOKEN: "x" })?.tokenSource, "CONSUL_HTTP_TOKEN");
  t.equal(consulAgentFromEnv({ CONSUL_HTTP_ADDR: "127.0.0.1:8500" })?.tokenSource, undefined);
  for (const off of ["false", "0", "f", "F", "FALSE", "False"]) {
    t.equal(consulAgentFromEnv({ CONSUL_HTTP_ADDR: "https://127.0.0.1:8501", CONSUL_HTTP_SSL_VERIFY: off })?.tls?.verify, false, `CONSUL_HTTP_SSL_VERIFY=${off} turns verification off, as Consul's api does`);
  }
  for (const on of ["true", "1", "yes-please"]) {
    t.equal(consulAgentFromEnv({ CONSUL_HTTP_ADDR: "https://127.0.0.1:8501", CONSUL_HTTP_SSL_VERIFY: on })?.tls?.verify, true, `CONSUL_HTTP_SSL_VERIFY=${on} keeps it on`);
  }
});
