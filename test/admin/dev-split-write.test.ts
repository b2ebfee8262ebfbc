// The traffic page's weight change on the dev control plane, attacked through its store: a
// splitter that does not load and a change written between read and write are refused, and
// neither is overwritten (a broken or newer config never turns into the page's weights).
import t from "tap";
import { mkdtemp, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { entryFile, writeEntry, writeSubsetWeights } from "../../src/controlplane/dev/state.js";
import { SplitChangeError } from "../../src/config/split-weights.js";
import type { Teardown } from "../helpers/mesh.js";

const RESOLVER = { Kind: "service-resolver", Name: "api", Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2" } } };
const HALF = [
  { subset: "v1", weight: 5000 },
  { subset: "v2", weight: 5000 },
];

async function stateDir(t: Teardown): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "meshproxy-split-write-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeEntry(dir, RESOLVER, "test");
  return dir;
}

t.test("a splitter file that does not parse is refused as a conflict and left as it is", async (t) => {
  const dir = await stateDir(t);
  const file = entryFile(dir, "service-splitter", "api");
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, '{"Kind": "service-splitter", "Name": "api", "Splits": [');
  const err = await writeSubsetWeights(dir, "api", HALF).then(() => null, (e: unknown) => e);
  t.ok(err instanceof SplitChangeError && err.refusal === "conflict", "refused as a conflict");
  t.match(String((err as Error).message), /not valid JSON.*fix it first/);
  t.equal(await readFile(file, "utf8"), '{"Kind": "service-splitter", "Name": "api", "Splits": [', "the broken file is not replaced");
});

t.test("a change written between the read and the write is refused, never overwritten", async (t) => {
  const dir = await stateDir(t);
  const file = entryFile(dir, "service-splitter", "api");
  await writeEntry(dir, { Kind: "service-splitter", Name: "api", Splits: [{ Weight: 100, ServiceSubset: "v1" }] }, "test");
  const human = { Kind: "service-splitter", Name: "api", Splits: [{ Weight: 90, ServiceSubset: "v1" }, { Weight: 10, ServiceSubset: "v2" }] };
  // The human's write lands while the page's change is between its read and its compare-and-set.
  const racing = writeSubsetWeights(dir, "api", HALF);
  await writeEntry(dir, human, "a human");
  const err = await racing.then(() => null, (e: unknown) => e);
  const stored = JSON.parse(await readFile(file, "utf8")) as typeof human;
  // Either the page's write came first and the human's replaced it, or the human's came first and
  // the page's compare-and-set failed: in both, the human's 90/10 is what stays.
  t.same(stored, human, "the human's 90/10 stays");
  if (err !== null) t.ok(err instanceof SplitChangeError && err.refusal === "conflict", "the page's change is refused as a conflict");
});
