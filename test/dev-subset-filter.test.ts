// A service-resolver subset Filter is checked when the entry is read, as Consul checks it when the
// entry is written. Compiled only when an upstream first routes to the subset, a bad one failed
// every build from then on: no later change (an instance, intentions, a renewed leaf) reached the
// proxy.
import t from "tap";
import { writeFile } from "node:fs/promises";
import { DevControlPlane } from "../src/controlplane/dev/dev.js";
import { entryFile, openStateDir, readEntries, registerInstance, writeEntry } from "../src/controlplane/dev/state.js";
import type { ControlPlaneError, ProxyRequest } from "../src/controlplane/controlplane.js";
import type { Snapshot } from "../src/config/snapshot.js";
import { createLogger } from "../src/telemetry/log.js";
import { tempDir } from "./helpers/mesh.js";

const BAD_RESOLVER = { Kind: "service-resolver", Name: "cache", DefaultSubset: "v2", Subsets: { v2: { Filter: `Service.Meta.version == ` } } };

t.test("a bad Filter is a problem of its entry file, named by field and position", async (t) => {
  const dir = await tempDir(t);
  await openStateDir(dir);
  await writeFile(entryFile(dir, "service-resolver", "cache"), JSON.stringify(BAD_RESOLVER));
  const { entries, problems } = await readEntries(dir);
  t.equal(entries.length, 0);
  t.equal(problems.length, 1);
  t.match(problems[0]!.message, /Subsets\.v2\.Filter: invalid filter at position \d+/);
  await t.rejects(writeEntry(dir, BAD_RESOLVER, "cache.json"), /Subsets\.v2\.Filter/, "`meshproxy config write` refuses it too");
});

t.test("a bad Filter written while serving leaves the previous entries in force, and later changes still arrive", async (t) => {
  const dir = await tempDir(t);
  await openStateDir(dir);
  const db = (id: string, port: number) => registerInstance(dir, { id, service: "db", address: "127.0.0.1", port, protocol: "tcp", pid: process.pid, meta: {} });
  const cacheInstance = registerInstance(dir, { id: "cache-1", service: "cache", address: "127.0.0.1", port: 2001, protocol: "tcp", pid: process.pid, meta: { version: "v2" } });
  await Promise.all([db("db-1", 1001), cacheInstance]);
  const request: ProxyRequest = { service: "web", upstreams: [{ name: "db", bind: { host: "127.0.0.1", port: 0 } }] };
  const cp = new DevControlPlane({ dataDir: dir, request, logger: createLogger({ level: "error", json: true, write: () => {} }), pollMs: 60_000 });
  t.teardown(() => cp.stop());
  const snapshots: Snapshot[] = [];
  const errors: ControlPlaneError[] = [];
  const waiters: (() => void)[] = [];
  const changed = () => waiters.splice(0).forEach((w) => w());
  // Woken by every snapshot and error; the 1 s wake only bounds the wait when neither comes.
  const until = async (what: string, ok: () => boolean): Promise<void> => {
    const deadline = performance.now() + 20_000;
    while (!ok()) {
      if (performance.now() > deadline) throw new Error(`gave up waiting for ${what}`);
      let wake: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        waiters.push(resolve);
        wake = setTimeout(resolve, 1000);
      });
      clearTimeout(wake);
    }
  };
  await cp.start({
    snapshot: (s) => {
      snapshots.push(s);
      changed();
    },
    error: (e) => {
      errors.push(e);
      changed();
    },
  });
  t.equal(snapshots.length, 1, "serving db");

  // Hand-written, past `meshproxy config write`'s check; the directory watch reads it.
  await writeFile(entryFile(dir, "service-resolver", "cache"), JSON.stringify(BAD_RESOLVER));
  await until("the bad Filter to be reported", () => errors.some((e) => /Filter/.test(e.message)));
  t.match(errors.find((e) => /Filter/.test(e.message))!.message, /Subsets\.v2\.Filter: invalid filter.*the previous config entries stay in force/);

  // A Connect-native app's upstream to the service, then a new db instance: both must arrive.
  cp.addUpstream({ name: "cache", bind: { host: "127.0.0.1", port: 0 } });
  await db("db-2", 1002);
  const last = () => snapshots[snapshots.length - 1]!;
  const hasBoth = () => last().upstreams.some((u) => u.name === "cache") && Object.values(last().clusters).some((c) => c.endpoints.some((e) => e.port === 1002));
  await until("a Snapshot with the cache upstream and db-2", hasBoth);
  t.ok(hasBoth(), "the cache upstream (on the previous entries: no subset) and the new db instance");
  t.notOk(
    errors.some((e) => /cannot read the state directory/.test(e.message)),
    "no build failed",
  );
});
