// The command line for upstreams in another datacenter: `-upstream db.service.dc2:8181` (Consul's
// DNS form) and `-mesh-gateway-mode local|remote|none`.
import t from "tap";
import { parseUpstream, UsageError } from "../src/cli/args.js";
import { runCli, type Handlers, type ProxyCommand } from "../src/cli/program.js";

t.test("-upstream <name>.service.<dc>:port names the destination's datacenter", async (t) => {
  t.same(parseUpstream("db.service.dc2:8181"), { name: "db", bind: { host: "127.0.0.1", port: 8181 }, datacenter: "dc2" });
  t.same(parseUpstream("db.service.dc2:0.0.0.0:8181"), { name: "db", bind: { host: "0.0.0.0", port: 8181 }, datacenter: "dc2" });
  t.same(parseUpstream("db.service:8181"), { name: "db", bind: { host: "127.0.0.1", port: 8181 } }, "no datacenter: the proxy's own");
  t.same(parseUpstream("db:8181"), { name: "db", bind: { host: "127.0.0.1", port: 8181 } });
  // Prepared queries are not resolved: read as the service of that name they would reach another destination.
  t.throws(() => parseUpstream("orders.query.dc3:9000"), new UsageError('-upstream "orders.query.dc3:9000": prepared queries (.query) are not resolved by meshproxy (Consul\'s built-in proxy executes them with /v1/query/<name>/execute); name the service instead, e.g. orders.service.dc3:9000'));
  t.throws(() => parseUpstream("orders.query:127.0.0.2:9000"), /prepared queries \(\.query\) are not resolved by meshproxy.*e\.g\. orders:127\.0\.0\.2:9000/);
  t.throws(() => parseUpstream("db.service.dc!2:8181"), new UsageError('-upstream "db.service.dc!2:8181": "dc!2" is not a datacenter name (letters, digits, - _), e.g. db.service.dc2:8181'));
  t.throws(() => parseUpstream(".service.dc2:8181"), UsageError, "no name before .service");
  t.same(parseUpstream("db.:8181"), { name: "db", bind: { host: "127.0.0.1", port: 8181 } }, "an empty type is a service, as Consul's built-in proxy reads it");
  for (const bad of ["db.foo:8181", "db.services:8181", "my.db:8181", "my.db.service:8181", "db.service.dc2.consul:8181", "db.foo.dc2:8181"]) {
    t.throws(() => parseUpstream(bad), { name: "UsageError", message: new RegExp(`^-upstream "${bad.replace(/\./g, "\\.")}": ".*" is not a destination Consul accepts`) }, `${bad}: only .service is a type`);
  }
  t.throws(() => parseUpstream("db.service.:8181"), /"" is not a datacenter name/, "an empty datacenter");
});

async function parse(argv: string[]): Promise<{ code: number; cmd: ProxyCommand | null; err: string }> {
  let cmd: ProxyCommand | null = null;
  let err = "";
  const h: Handlers = {
    proxy: (c) => {
      cmd = c;
      return Promise.resolve(0);
    },
    intention: () => Promise.resolve(0),
    demo: () => Promise.resolve(0),
    config: () => Promise.resolve(0),
    canary: () => Promise.resolve(0),
    ca: () => Promise.resolve(0),
  };
  const code = await runCli(argv, h, (s) => {
    err += s;
  });
  return { code, cmd, err };
}

t.test("-mesh-gateway-mode sets the proxy instance's mode; a bad one is a usage error", async (t) => {
  const ok = await parse(["-service", "web", "-upstream", "db.service.dc2:8181", "-mesh-gateway-mode", "local"]);
  t.equal(ok.code, 0);
  t.equal(ok.cmd?.request.meshGatewayMode, "local");
  t.same(ok.cmd?.request.upstreams, [{ name: "db", bind: { host: "127.0.0.1", port: 8181 }, datacenter: "dc2" }]);
  const none = await parse(["-service", "web"]);
  t.equal(none.cmd?.request.meshGatewayMode, undefined, "unset: config entries decide, else none");
  const bad = await parse(["-service", "web", "-mesh-gateway-mode", "nearest"]);
  t.equal(bad.code, 2);
  t.match(bad.err, /^meshproxy: -mesh-gateway-mode "nearest": want local \(through this datacenter's mesh gateways\), remote \(the destination datacenter's\) or none/);
  const gw = await parse(["-gateway", "mesh", "-listen", "127.0.0.1:0", "-mesh-gateway-mode", "local"]);
  t.equal(gw.code, 2);
  t.match(gw.err, /-gateway mesh cannot be combined with -mesh-gateway-mode/);
  const file = await parse(["-config-file", "x.json", "-mesh-gateway-mode", "remote"]);
  t.equal(file.code, 2);
  t.match(file.err, /-config-file cannot be combined with -mesh-gateway-mode/);
});

t.test("-upstream <name>.query with a Consul agent is refused, not read as the service <name>", async (t) => {
  const r = await parse(["-http-addr", "127.0.0.1:8500", "-service", "web", "-upstream", "orders.query:9000"]);
  t.equal(r.code, 2, "a usage error");
  t.equal(r.cmd, null, "no proxy started with a service upstream named orders");
  t.match(r.err, /prepared queries \(\.query\) are not resolved by meshproxy/);
});
