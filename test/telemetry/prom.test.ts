// The proxy's process metrics come from prom-client's collectors loaded one by one (so a sidecar
// does not load prom-client's index and @opentelemetry/api); they must stay exactly what
// collectDefaultMetrics registers: the same families, types and help, with process_cpu_* counting.
import t from "tap";
import { Registry as PromRegistry, collectDefaultMetrics } from "prom-client";
import { Counter, Registry, collectProcessMetrics } from "../../src/telemetry/prom.js";

interface Family {
  readonly name: string;
  readonly type: string;
  readonly help: string;
}

async function families(r: PromRegistry): Promise<Family[]> {
  const all = await r.getMetricsAsJSON();
  return all.map((m) => ({ name: m.name, type: String(m.type), help: m.help })).sort((a, b) => a.name.localeCompare(b.name));
}

t.test("collectProcessMetrics registers what prom-client's collectDefaultMetrics does", async (t) => {
  const theirs = new PromRegistry();
  collectDefaultMetrics({ register: theirs });
  const ours = new Registry();
  collectProcessMetrics(ours);
  const expected = await families(theirs);
  t.ok(expected.length >= 15, "prom-client's defaults include the process_* and nodejs_* families");
  t.same(await families(ours), expected);
});

t.test("process_cpu_*: user + system = total, and they only grow", async (t) => {
  const r = new Registry();
  collectProcessMetrics(r);
  const read = async (): Promise<Map<string, number>> => new Map((await r.getMetricsAsJSON()).filter((m) => m.name.startsWith("process_cpu_")).map((m) => [m.name, Number(m.values[0]?.value)]));
  const first = await read();
  const until = Date.now() + 30;
  while (Date.now() < until); // burn some CPU so the counters move
  const second = await read();
  t.equal(first.size, 3);
  for (const [name, v] of second) t.ok(v >= (first.get(name) ?? Infinity), `${name} did not go down`);
  t.ok(second.get("process_cpu_user_seconds_total")! > first.get("process_cpu_user_seconds_total")!, "user CPU grew while burning CPU");
  t.ok(Math.abs(second.get("process_cpu_seconds_total")! - second.get("process_cpu_user_seconds_total")! - second.get("process_cpu_system_seconds_total")!) < 1e-9, "total = user + system");
});

t.test("the classes are prom-client's own: they register on a registry from its index", async (t) => {
  const r = new PromRegistry();
  new Counter({ name: "mixed_total", help: "h", registers: [r] }).inc(2);
  t.match(await r.metrics(), /^mixed_total 2$/m);
});
