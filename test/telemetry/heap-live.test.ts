// meshproxy_heap_live_bytes is the leak signal the soak gates on: it must follow what is
// reachable after a full GC, not the garbage a scrape happens to see.
import t from "tap";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { PerformanceObserver } from "node:perf_hooks";
import { Registry } from "../../src/telemetry/prom.js";
import { registerHeapLive } from "../../src/telemetry/heap-live.js";

setFlagsFromString("--expose-gc");
const gc: unknown = runInNewContext("gc");
function fullGc(): void {
  if (typeof gc !== "function") throw new Error("--expose-gc did not expose gc()");
  Reflect.apply(gc, undefined, []);
}

/** Runs a full GC and resolves once its performance entry has been delivered to observers. */
async function collect(): Promise<void> {
  // GC entries are delivered from a later turn of the event loop, and an observer does not keep
  // the loop alive: hold it open until the entry is here.
  const keepAlive = setInterval(() => {}, 1000);
  const delivered = new Promise<void>((resolve) => {
    const o = new PerformanceObserver(() => {
      o.disconnect();
      clearInterval(keepAlive);
      // Observers registered earlier got the same batch first; let their callbacks finish.
      setImmediate(resolve);
    });
    o.observe({ entryTypes: ["gc"] });
  });
  fullGc();
  await delivered;
}

async function live(r: Registry): Promise<number> {
  const [m] = (await r.getMetricsAsJSON()).filter((f) => f.name === "meshproxy_heap_live_bytes");
  return Number(m?.values[0]?.value);
}

t.test("set at each full GC to what survived it; garbage is not counted", async (t) => {
  const r = new Registry();
  registerHeapLive(r);
  t.equal(await live(r), 0, "0 until the first full GC");
  const retained: number[][] = Array.from({ length: 40 }, (_, i) => new Array<number>(100_000).fill(i + 0.5));
  await collect();
  const withRetained = await live(r);
  t.ok(withRetained > 30 * 2 ** 20, `32 MB held: live heap ${(withRetained / 2 ** 20).toFixed(1)} MB`);
  t.equal(retained.length, 40);
  retained.length = 0;
  // Garbage made after the GC does not move the gauge until the next full GC.
  for (let i = 0; i < 20; i++) new Array<number>(100_000).fill(i + 0.5);
  await collect();
  const released = await live(r);
  t.ok(withRetained - released > 25 * 2 ** 20, `released: live heap ${(released / 2 ** 20).toFixed(1)} MB`);
});
