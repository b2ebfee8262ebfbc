// Port 0 under -concurrency N: the primary picks one free port per listener and keeps it, so
// every worker, and a worker restarted later, binds the same one.
import t from "tap";
import { createServer } from "node:net";
import { once } from "node:events";
import { PortChoices } from "../../src/workers/ports.js";
import type { Identity, Snapshot, TrustBundle } from "../../src/config/snapshot.js";
import { tcpUpstream, webIdentity } from "../helpers/in-process.js";

function snapshotOf(who: { identity: Identity; trust: TrustBundle }, version: number, publicPort: number | null, upstreams: Record<string, number>): Snapshot {
  return {
    version,
    source: "test",
    ...who,
    publicListener: publicPort === null ? null : { bind: { host: "127.0.0.1", port: publicPort }, localApp: { host: "127.0.0.1", port: 9 }, protocol: "tcp", handshakeTimeoutMs: 10_000, localConnectTimeoutMs: 5000, idleTimeoutMs: 60_000 },
    upstreams: Object.entries(upstreams).map(([name, port]) => tcpUpstream(name, { bind: { host: "127.0.0.1", port } })),
    clusters: {},
    intentions: { defaultAction: "deny", intentions: [] },
  };
}

t.test("port 0 becomes a free port, the same for the same listener in every later Snapshot", async (t) => {
  const who = await webIdentity();
  const snapshot = (version: number, publicPort: number | null, upstreams: Record<string, number>) => snapshotOf(who, version, publicPort, upstreams);
  const ports = new PortChoices();
  const first = await ports.apply(snapshot(1, 0, { db: 0, api: 7001 }));
  const pub = first.publicListener!.bind.port;
  const db = first.upstreams[0]!.bind.port;
  t.ok(pub > 0 && db > 0 && pub !== db, `public ${pub} and upstream db ${db}: two distinct real ports`);
  t.equal(first.upstreams[1]!.bind.port, 7001, "a fixed port is left alone");
  const server = createServer().listen(pub, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => server.close());
  t.pass("the chosen port was free to bind");
  const second = await ports.apply(snapshot(2, 0, { db: 0, api: 7001 }));
  t.equal(second.publicListener!.bind.port, pub, "the next Snapshot names the same public port");
  t.equal(second.upstreams[0]!.bind.port, db, "and the same upstream port");
  const fixed = snapshot(3, 7000, { api: 7001 });
  t.equal(await ports.apply(fixed), fixed, "a Snapshot without port 0 is passed on as it is");
});
