// The CLI holds V8's young generation at its smallest while a proxy idles and lets it grow once
// the event loop is busy (src/cli/startup-heap.ts). That rests on V8 reading
// --semi-space-growth-factor each time it grows the space; this checks it on the Node running the
// tests (.ci/run also runs it on Node 22 and 24), in a fresh process: the same burst of surviving
// objects grows the space after the release and not while held.
import t from "tap";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { ROOT } from "../helpers/mesh.js";

const MODULE = join(ROOT, "dist", "cli", "startup-heap.js");

// A burst like a start's: many objects that survive scavenges. Prints the new space's size (bytes)
// after a burst while held, then after one more burst once released.
const SCRIPT = `
import { getHeapSpaceStatistics } from "node:v8";
import { holdYoungGeneration, releaseYoungGeneration } from ${JSON.stringify(MODULE)};
const newSpace = () => getHeapSpaceStatistics().find((s) => s.space_name === "new_space").space_size;
const kept = [];
const burst = () => { for (let i = 0; i < 400000; i++) kept.push({ i, s: "x" + i }); };
holdYoungGeneration();
burst();
const held = newSpace();
releaseYoungGeneration();
burst();
console.log(JSON.stringify({ held, released: newSpace(), kept: kept.length }));
`;

function run(nodeFlags: string[] = []): { held: number; released: number } {
  const r = spawnSync(process.execPath, [...nodeFlags, "--input-type=module", "-e", SCRIPT], { encoding: "utf8", env: { ...process.env, NODE_OPTIONS: "" } });
  if (r.status !== 0) throw new Error(`the probe failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout) as { held: number; released: number };
}

t.test("the young generation does not grow while held, and grows again once released", async (t) => {
  const { held, released } = run();
  t.ok(held <= 4 * 1024 * 1024, `held: the new space stayed small (${held} bytes)`);
  t.ok(released >= 4 * held, `released: the same burst grew it as V8 does unheld (${held} → ${released} bytes)`);
});

t.test("an operator's own --semi-space-growth-factor is left alone", async (t) => {
  const { held } = run(["--semi-space-growth-factor=2"]);
  t.ok(held > 4 * 1024 * 1024, `the burst grew the new space as the operator's factor says (${held} bytes)`);
});

// Under load the governor lets go: a busy event loop (allocating, as a proxy under load does)
// grows the new space after a busy second.
const BUSY_SCRIPT = `
import { getHeapSpaceStatistics } from "node:v8";
import { governYoungGeneration, holdYoungGeneration } from ${JSON.stringify(MODULE)};
const newSpace = () => getHeapSpaceStatistics().find((s) => s.space_name === "new_space").space_size;
holdYoungGeneration();
governYoungGeneration();
const start = newSpace();
const live = [];
const until = performance.now() + 4000;
const work = () => {
  for (let i = 0; i < 20000; i++) { live.push({ i, s: "y" + i }); if (live.length > 200000) live.splice(0, 100000); }
  if (performance.now() < until) setImmediate(work);
  else console.log(JSON.stringify({ start, busy: newSpace() }));
};
work();
`;

t.test("the governor lets the young generation grow once the event loop is busy", async (t) => {
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", BUSY_SCRIPT], { encoding: "utf8", env: { ...process.env, NODE_OPTIONS: "" } });
  t.equal(r.status, 0, `the probe ran (${r.stderr})`);
  const { start, busy } = JSON.parse(r.stdout) as { start: number; busy: number };
  t.ok(busy >= 2 * start, `busy: the new space grew (${start} → ${busy} bytes)`);
});

// Under load the space stops near the bound (2 × BOUND_SEMI_SPACE_MB), where V8 alone takes the
// same load to its own maximum (2 × 16 MB on Node 20, 2 × 64 MB on Node 24: measured in the same
// test, ungoverned); an operator's --max-semi-space-size replaces the bound. The bound is soft: a
// GC can grow the space before the observer holds it, and V8 13 (Node 24) also sizes it in steps
// of its own: 22–36 MB seen on Node 24 (18.75 under CI's load on another machine), 8.4 on Node
// 20. So the check is against what V8 does with the same load: at most half of it (Node 20:
// 2 × the bound, Node 24: 8 ×).
const BOUND_SCRIPT = `
import { getHeapSpaceStatistics } from "node:v8";
import { governYoungGeneration, holdYoungGeneration, BOUND_SEMI_SPACE_MB } from ${JSON.stringify(MODULE)};
const newSpace = () => getHeapSpaceStatistics().find((s) => s.space_name === "new_space").space_size;
if (process.argv.includes("governed")) {
  holdYoungGeneration();
  governYoungGeneration();
}
let max = 0;
const live = [];
const until = performance.now() + 4000;
const work = () => {
  for (let i = 0; i < 20000; i++) { live.push({ i, s: "z" + i }); if (live.length > 400000) live.splice(0, 200000); }
  max = Math.max(max, newSpace());
  if (performance.now() < until) setImmediate(work);
  else console.log(JSON.stringify({ max, bound: 2 * BOUND_SEMI_SPACE_MB * 1024 * 1024 }));
};
work();
`;

function busyMax(nodeOptions: string, governed = true): { max: number; bound: number } {
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", BOUND_SCRIPT, ...(governed ? ["governed"] : [])], { encoding: "utf8", env: { ...process.env, NODE_OPTIONS: nodeOptions } });
  if (r.status !== 0) throw new Error(`the probe failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout) as { max: number; bound: number };
}

t.test("under load the young generation grows to the bound and stops there; an operator's --max-semi-space-size replaces it", async (t) => {
  const bounded = busyMax("");
  const own = busyMax("", false);
  t.ok(bounded.max >= bounded.bound, `it grew to the bound (${bounded.max} bytes, bound ${bounded.bound})`);
  t.ok(bounded.max <= own.max / 2, `and stopped near it, at most half of where V8 takes the same load ungoverned (${bounded.max} against ${own.max} bytes)`);
  const sized = busyMax("--max-semi-space-size=32");
  t.ok(sized.max > 4 * sized.bound, `the same load with the operator's 32 MB semi-spaces grew past that (${sized.max} bytes)`);
});

// The old generation: the proxy sets V8's growing factor to 1 + OLD_GENERATION_GROWING_PERCENT /
// 100 at start, so promoted garbage is collected at a lower old-space size; V8 must read the flag
// after start for that (checked here against the same load under an operator's factor of 4,
// which the governor leaves alone).
const OLD_SCRIPT = `
import { getHeapSpaceStatistics } from "node:v8";
import { governYoungGeneration } from ${JSON.stringify(MODULE)};
const oldSpace = () => getHeapSpaceStatistics().find((s) => s.space_name === "old_space").space_used_size;
governYoungGeneration();
const live = [];
for (let i = 0; i < 100000; i++) live.push({ i, s: "live" + i });
let max = 0;
let batches = [];
for (let round = 0; round < 400; round++) {
  // Objects that survive two scavenges (promoted), then are dropped: the client sidecar's pattern.
  const batch = [];
  for (let i = 0; i < 20000; i++) batch.push({ round, i, s: "g" + i });
  batches.push(batch);
  if (batches.length > 8) batches.shift();
  max = Math.max(max, oldSpace());
}
console.log(JSON.stringify({ max, live: live.length }));
`;

function oldMax(nodeFlags: string[]): number {
  const r = spawnSync(process.execPath, [...nodeFlags, "--input-type=module", "-e", OLD_SCRIPT], { encoding: "utf8", env: { ...process.env, NODE_OPTIONS: "" } });
  if (r.status !== 0) throw new Error(`the probe failed (${r.status}): ${r.stderr}`);
  return (JSON.parse(r.stdout) as { max: number }).max;
}

t.test("the proxy's old-generation growing factor: promoted garbage is collected sooner than under a factor of 4", async (t) => {
  const governed = oldMax([]);
  // Not allowed in NODE_OPTIONS: an operator gives it to node itself.
  const operator = oldMax(["--heap-growing-percent=300"]);
  t.ok(governed < 0.75 * operator, `old space at most ${governed} bytes against ${operator} with the operator's factor`);
});
