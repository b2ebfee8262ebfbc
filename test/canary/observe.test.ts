// The per-subset reader against the exposition a sidecar really writes (its own Metrics
// registry), the cluster-name rule, and the dev control plane's check-and-set entry write.
import t from "tap";
import { Metrics } from "../../src/telemetry/metrics.js";
import { parseSubsetCounters, subsetOf, SubsetWindow, type Sample } from "../../src/canary/observe.js";
import { entryVersion, openStateDir, readEntryVersioned, writeEntryCas, writeEntry } from "../../src/controlplane/dev/state.js";
import { tempDir } from "../helpers/mesh.js";

const TD = "0c4a3f6e-2b1d-4e8a-9f7c-5d6e7a8b9c01.consul";

t.test("subsetOf reads Consul's cluster names", async (t) => {
  t.equal(subsetOf(`v2.api.default.dc1.internal.${TD}`, "api"), "v2");
  t.equal(subsetOf(`api.default.dc1.internal.${TD}`, "api"), "", "the service's own cluster");
  t.equal(subsetOf(`v2.api.default.part1.dc1.internal-v1.${TD}`, "api"), "v2", "with a partition");
  t.equal(subsetOf(`v2.web.default.dc1.internal.${TD}`, "api"), null, "another service's subset");
  t.equal(subsetOf(`api.default.dc1.internal.${TD}`, "v2"), null, "a service named like the subset");
  t.equal(subsetOf("local_app", "api"), null);
});

t.test("figures of a subset from a sidecar's own exposition, between two reads", async (t) => {
  const m = new Metrics({ processMetrics: false });
  const v2 = `v2.api.default.dc1.internal.${TD}`;
  const v1 = `v1.api.default.dc1.internal.${TD}`;
  const read = async (at: number): Promise<Sample> => ({ at, bySidecar: new Map([["web", parseSubsetCounters(await m.registry.metrics(), "api")]]), problems: [], read: 1 });
  for (let i = 0; i < 10; i++) m.http.response(v2, 200, 3);
  m.http.response(v1, 500, 1);
  const w = new SubsetWindow(await read(0));
  for (let i = 0; i < 97; i++) m.http.response(v2, 200, 20);
  m.http.response(v2, 503, 700);
  m.http.retry(v2);
  m.http.timeout(v2);
  m.http.failed(v2);
  m.cluster(v2).cxConnectFail.inc();
  w.add(await read(1));
  const f = w.figures("v2");
  t.equal(f.requests, 98 + 3, "98 answers, a retried attempt, a 504 UT, a 503 UF; the 10 before the window are not counted");
  t.equal(f.errors, 4, "the 503, the retried attempt, the timeout and the failed connect, each once");
  t.ok(f.p99Ms !== null && f.p99Ms > 25 && f.p99Ms <= 1000, `p99 ${String(f.p99Ms)} ms: the 700 ms answer is the top 1%`);
  t.equal(w.figures("v1").requests, 0, "v1's 500 happened before the window");
});

t.test("the dev control plane's config-entry write with check-and-set", async (t) => {
  const dir = await tempDir(t);
  await openStateDir(dir);
  const entry = (w: number) => ({ Kind: "service-splitter", Name: "api", Splits: [{ Weight: 100 - w, ServiceSubset: "v1" }, { Weight: w, ServiceSubset: "v2" }] });
  t.equal((await writeEntryCas(dir, entry(5), "test", { version: null })).written, true, "create-only write of a new entry");
  t.equal((await writeEntryCas(dir, entry(6), "test", { version: null })).written, false, "create-only write of an existing entry is refused");
  const read = await readEntryVersioned(dir, "service-splitter", "api");
  t.ok(read);
  await writeEntry(dir, entry(50), "a human");
  t.equal((await writeEntryCas(dir, entry(25), "test", { version: read!.version })).written, false, "a write naming the version before the human's edit is refused");
  const now = await readEntryVersioned(dir, "service-splitter", "api");
  t.same(now?.raw, entry(50), "the human's edit stands");
  t.equal((await writeEntryCas(dir, entry(25), "test", { version: now!.version })).written, true, "a write naming the current version lands");
  t.not(entryVersion("a"), entryVersion("b"));
  const results = await Promise.all([1, 2, 3, 4].map((w) => writeEntryCas(dir, entry(w), "racer", { version: now!.version })));
  t.equal(results.filter((r) => r.written).length, 0, "racers naming a stale version all lose");
  const fresh = await readEntryVersioned(dir, "service-splitter", "api");
  const race = await Promise.all([1, 2, 3, 4].map((w) => writeEntryCas(dir, entry(w), "racer", { version: fresh!.version })));
  t.equal(race.filter((r) => r.written).length, 1, "of four racers naming the same version, exactly one wins");
});
