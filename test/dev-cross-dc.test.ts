// The dev control plane's upstreams in another datacenter: which catalog a target's instances come
// from, and Consul's mesh gateway modes (none: the instances; local: this datacenter's gateways;
// remote: the target datacenter's), resolved upstream > proxy instance > source's service-defaults
// > proxy-defaults > target's service-defaults > none.
import t, { type Test } from "tap";
import { spawnSync } from "node:child_process";
import { DevControlPlane } from "../src/controlplane/dev/dev.js";
import { catalogDir, openStateDir, registerInstance, writeEntry, type CatalogEntry } from "../src/controlplane/dev/state.js";
import type { ProxyRequest, UpstreamRequest } from "../src/controlplane/controlplane.js";
import type { Snapshot } from "../src/config/snapshot.js";
import { createLogger } from "../src/telemetry/log.js";
import { issueLeaf } from "../src/identity/ca.js";
import { tempDir } from "./helpers/mesh.js";

const deadPid = spawnSync("true").pid;

interface Mesh {
  readonly dir: string;
  register(dc: string, e: Partial<CatalogEntry> & { id: string; port: number }): Promise<void>;
}

/** A state directory with db in dc1 (port 1001), dc2 (2001) and dc3 (3001), and a mesh gateway in dc1 (1443) and dc2 (2443). */
async function mesh(t: Test): Promise<Mesh> {
  const dir = await tempDir(t);
  await openStateDir(dir);
  const register = (dc: string, e: Partial<CatalogEntry> & { id: string; port: number }) =>
    registerInstance(dir, { service: "db", address: "127.0.0.1", protocol: "tcp", pid: process.pid, meta: {}, ...e }, catalogDir(dir, dc, "dc1"));
  await register("dc1", { id: "db-dc1", port: 1001 });
  await register("dc2", { id: "db-dc2", port: 2001 });
  await register("dc3", { id: "db-dc3", port: 3001 });
  await register("dc1", { id: "gw-dc1", port: 1443, service: "mesh-gateway", kind: "mesh-gateway" });
  await register("dc2", { id: "gw-dc2", port: 2443, service: "mesh-gateway", kind: "mesh-gateway" });
  return { dir, register };
}

interface Run {
  readonly snapshot: Snapshot;
  readonly warnings: string[];
}

/** Starts a dev control plane for web in dc1 with `upstream`, takes its first Snapshot, stops. */
async function firstSnapshot(t: Test, dir: string, upstream: Partial<UpstreamRequest>, extra: Partial<ProxyRequest> = {}): Promise<Run> {
  const warnings: string[] = [];
  const logger = createLogger({ level: "warn", json: true, write: (line: string) => void warnings.push(line) });
  const request: ProxyRequest = { service: "web", upstreams: [{ name: "db", bind: { host: "127.0.0.1", port: 0 }, ...upstream }], ...extra };
  // The leaf is issued in this process: the default child process, started with the TypeScript
  // loader, took seconds each on a loaded machine, and 17 of them ran this file past tap's timeout.
  const cp = new DevControlPlane({ dataDir: dir, request, logger, datacenter: "dc1", pollMs: 60_000, issueLeaf });
  let snapshot: Snapshot | null = null;
  await cp.start({ snapshot: (s) => (snapshot = snapshot ?? s), error: (e) => t.fail(`control plane error: ${e.message}`) });
  await cp.stop();
  if (!snapshot) throw new Error("no snapshot");
  return { snapshot, warnings };
}

function only(s: Snapshot) {
  const names = Object.keys(s.clusters);
  if (names.length !== 1) throw new Error(`want one cluster, got ${names.join(", ")}`);
  return s.clusters[names[0]!]!;
}

const ports = (s: Snapshot, cluster?: string) => (cluster ? s.clusters[cluster]! : only(s)).endpoints.map((e) => e.port);

t.test("mode none (the default): a target in dc2 gets dc2's instances, not the proxy's own datacenter's", async (t) => {
  const { dir } = await mesh(t);
  const { snapshot } = await firstSnapshot(t, dir, { datacenter: "dc2" });
  const c = only(snapshot);
  const td = snapshot.trust.trustDomain;
  t.same(ports(snapshot), [2001], "dc2's db instance");
  t.equal(c.sni, `db.default.dc2.internal.${td}`, "the target's SNI");
  t.equal(c.expectedSpiffeId, `spiffe://${td}/ns/default/dc/dc2/svc/db`, "the target's identity, with its datacenter");
  t.equal(c.meshGateway, undefined, "no gateway");
  const own = await firstSnapshot(t, dir, {});
  t.same(ports(own.snapshot), [1001], "an upstream without a datacenter stays in dc1");
});

t.test("mode local: dc1's gateways; remote: dc2's; SNI and identity stay the target's", async (t) => {
  const { dir } = await mesh(t);
  const local = await firstSnapshot(t, dir, { datacenter: "dc2" }, { meshGatewayMode: "local" });
  const td = local.snapshot.trust.trustDomain;
  t.same(ports(local.snapshot), [1443], "local: this datacenter's gateway");
  t.same(only(local.snapshot).meshGateway, { mode: "local", datacenter: "dc1" });
  t.equal(only(local.snapshot).sni, `db.default.dc2.internal.${td}`);
  t.equal(only(local.snapshot).expectedSpiffeId, `spiffe://${td}/ns/default/dc/dc2/svc/db`);
  t.ok(only(local.snapshot).endpoints.every((e) => e.healthy), "healthy: the gateway is up and db has a healthy instance in dc2");
  const remote = await firstSnapshot(t, dir, { datacenter: "dc2" }, { meshGatewayMode: "remote" });
  t.same(ports(remote.snapshot), [2443], "remote: the target datacenter's gateway");
  t.same(only(remote.snapshot).meshGateway, { mode: "remote", datacenter: "dc2" });
  const same = await firstSnapshot(t, dir, {}, { meshGatewayMode: "local" });
  t.same(ports(same.snapshot), [1001], "a target in the proxy's own datacenter never goes through a gateway");
});

t.test("precedence: upstream > proxy instance > source's service-defaults > proxy-defaults > target's service-defaults", async (t) => {
  const { dir } = await mesh(t);
  await writeEntry(dir, { Kind: "service-defaults", Name: "db", MeshGateway: { Mode: "local" } }, "test");
  t.same(ports((await firstSnapshot(t, dir, { datacenter: "dc2" })).snapshot), [1443], "the target's service-defaults when nothing else says");
  await writeEntry(dir, { Kind: "proxy-defaults", Name: "global", MeshGateway: { Mode: "remote" } }, "test");
  t.same(ports((await firstSnapshot(t, dir, { datacenter: "dc2" })).snapshot), [2443], "proxy-defaults over the target's service-defaults");
  await writeEntry(dir, { Kind: "service-defaults", Name: "web", MeshGateway: { Mode: "none" } }, "test");
  t.same(ports((await firstSnapshot(t, dir, { datacenter: "dc2" })).snapshot), [2001], "the source's service-defaults over proxy-defaults");
  t.same(ports((await firstSnapshot(t, dir, { datacenter: "dc2" }, { meshGatewayMode: "local" })).snapshot), [1443], "-mesh-gateway-mode over service-defaults");
  await writeEntry(dir, { Kind: "service-defaults", Name: "web", MeshGateway: { Mode: "none" }, UpstreamConfig: { Overrides: [{ Name: "db", MeshGateway: { Mode: "remote" } }] } }, "test");
  t.same(ports((await firstSnapshot(t, dir, { datacenter: "dc2" }, { meshGatewayMode: "local" })).snapshot), [2443], "UpstreamConfig's override for db over -mesh-gateway-mode");
  t.same(ports((await firstSnapshot(t, dir, { datacenter: "dc2", meshGatewayMode: "none" }, { meshGatewayMode: "local" })).snapshot), [2001], "the upstream's own mode over everything");
});

t.test("no gateway for the mode: no endpoint and a warning naming the upstream, never a direct fallback", async (t) => {
  const { dir } = await mesh(t);
  const { snapshot, warnings } = await firstSnapshot(t, dir, { datacenter: "dc3" }, { meshGatewayMode: "remote" });
  t.same(ports(snapshot), [], "dc3 has no gateway: no endpoint at all");
  t.same(only(snapshot).meshGateway, { mode: "remote", datacenter: "dc3" });
  t.ok(warnings.some((w) => w.includes('upstream \\"db\\": no mesh gateway in dc3 for mode remote')), `warned: ${warnings.join("\n")}`);
});

t.test("a gateway is unhealthy when it is down or when the target has no healthy instance behind it", async (t) => {
  const m = await mesh(t);
  await m.register("dc2", { id: "gw-dc2-dead", port: 2444, service: "mesh-gateway", kind: "mesh-gateway", pid: deadPid });
  const up = await firstSnapshot(t, m.dir, { datacenter: "dc2" }, { meshGatewayMode: "remote" });
  t.same(only(up.snapshot).endpoints.map((e) => [e.port, e.healthy]).sort(), [[2443, true], [2444, false]], "the dead gateway is unhealthy");
  await m.register("dc2", { id: "db-dc2", port: 2001, pid: deadPid });
  const down = await firstSnapshot(t, m.dir, { datacenter: "dc2" }, { meshGatewayMode: "remote" });
  t.ok(only(down.snapshot).endpoints.every((e) => !e.healthy), "db has no healthy instance in dc2: every gateway to it is unhealthy, so failover can act");
});

t.test("resolver Redirect.Datacenter and Failover.Datacenters make targets in other datacenters, each through its gateway", async (t) => {
  const { dir } = await mesh(t);
  await writeEntry(dir, { Kind: "service-resolver", Name: "db", Failover: { "*": { Datacenters: ["dc2", "dc3"] } } }, "test");
  const { snapshot } = await firstSnapshot(t, dir, {}, { meshGatewayMode: "local" });
  const td = snapshot.trust.trustDomain;
  const primary = snapshot.clusters[`db.default.dc1.internal.${td}`]!;
  t.same(primary.failover, [`db.default.dc2.internal.${td}`, `db.default.dc3.internal.${td}`], "failover in the order given");
  t.same(ports(snapshot, primary.name), [1001], "the local target: its instances");
  t.same(ports(snapshot, `db.default.dc2.internal.${td}`), [1443], "dc2 through dc1's gateway");
  t.equal(snapshot.clusters[`db.default.dc2.internal.${td}`]!.expectedSpiffeId, `spiffe://${td}/ns/default/dc/dc2/svc/db`);
  await writeEntry(dir, { Kind: "service-resolver", Name: "db", Redirect: { Datacenter: "dc2" } }, "test");
  const red = await firstSnapshot(t, dir, {}, { meshGatewayMode: "remote" });
  t.same(Object.keys(red.snapshot.clusters), [`db.default.dc2.internal.${td}`], "the redirect's target only");
  t.same(ports(red.snapshot), [2443], "through dc2's gateway");
  t.equal(red.snapshot.upstreams[0]!.cluster, `db.default.dc2.internal.${td}`);
});
