// Static-config errors quote a bounded part of a bad key or value (found by
// test/fuzz/static-config.test.ts: a megabyte key or host made a megabyte error message and log line).
import t from "tap";
import { StaticConfigError, parseStaticConfig } from "../src/controlplane/static/config.js";

const BASE = { service: "web", identity: { cert_file: "c.pem", key_file: "k.pem" }, roots_files: ["r.pem"] };

function configError(doc: unknown): StaticConfigError {
  try {
    parseStaticConfig(JSON.stringify(doc), "proxy.json");
  } catch (e) {
    if (e instanceof StaticConfigError) return e;
    throw e;
  }
  throw new Error("parsed");
}

t.test("a huge key or value is quoted in part", async (t) => {
  const key = configError({ ...BASE, ["x".repeat(1_000_000)]: 1 });
  t.ok(key.message.length < 400, `unknown key: ${key.message.length} characters`);
  t.match(key.path, /^x{77}\.\.\.$/, "the path shows the start of the key");
  const host = configError({ ...BASE, public_listener: { bind: `${"a-".repeat(500_000)}!:1`, local_app: "127.0.0.1:1" } });
  t.ok(host.message.length < 400, `bad host: ${host.message.length} characters`);
  t.match(host.message, /is not an IP address or host name/);
  const meta = configError({ ...BASE, upstreams: [{ name: "db", bind: ":1", endpoints: [{ address: "10.0.0.1", port: 1, meta: { ["k".repeat(1_000_000)]: 1 } }] }] });
  t.ok(meta.message.length < 400, `bad meta value: ${meta.message.length} characters`);
  t.match(meta.path, /^upstreams\[0\]\.endpoints\[0\]\.meta\.k{77}\.\.\.$/);
});

t.test("a near-miss key still gets a suggestion", async (t) => {
  t.match(configError({ ...BASE, servce: "x" }).message, /did you mean "service"/);
  t.match(configError({ ...BASE, upstreams: [{ name: "db", bind: ":1", endpoints: [], conect_timeout_ms: 1 }] }).message, /did you mean "connect_timeout_ms"/);
});
