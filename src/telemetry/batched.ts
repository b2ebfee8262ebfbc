// Counters and gauges whose updates on the request path are additions to a local number, handed
// to prom-client when it collects (a scrape), as cluster-gauges.ts does for cluster state.
// prom-client hashes the label set and validates it on every inc(), even through a labels()
// child: the four metric updates of an L7 request were ~3 % of the client sidecar's CPU.
import { Counter, Gauge, type Registry } from "prom-client";

/** A counter's series for one label set. */
export interface CountSlot {
  inc(by?: number): void;
}

/** A gauge's series for one label set. */
export interface LevelSlot {
  inc(by?: number): void;
  dec(by?: number): void;
}

class Slot<L extends string> implements CountSlot, LevelSlot {
  value = 0;
  constructor(readonly labels: Readonly<Partial<Record<L, string>>>) {}
  inc(by = 1): void {
    this.value += by;
  }
  dec(by = 1): void {
    this.value -= by;
  }
}

interface Definition<L extends string> {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly L[];
  readonly registry: Registry;
}

function metricOptions<L extends string>(d: Definition<L>): { name: string; help: string; labelNames: readonly L[]; registers: Registry[] } {
  return { name: d.name, help: d.help, labelNames: d.labelNames, registers: [d.registry] };
}

abstract class Batched<L extends string> {
  protected readonly slots = new Map<string, Slot<L>>();
  constructor(private readonly labelNames: readonly L[]) {}

  /** The series for these label values (in labelNames order); cache it, it does not change. */
  protected slotFor(values: readonly string[]): Slot<L> {
    const key = values.join("\u0000");
    let s = this.slots.get(key);
    if (!s) {
      const labels: Partial<Record<L, string>> = {};
      this.labelNames.forEach((n, i) => (labels[n] = values[i] ?? ""));
      s = new Slot(labels);
      this.slots.set(key, s);
    }
    return s;
  }
}

export class BatchedCounter<L extends string> extends Batched<L> {
  constructor(d: Definition<L>) {
    super(d.labelNames);
    const slots = this.slots;
    new Counter<L>({
      ...metricOptions(d),
      collect() {
        this.reset();
        for (const s of slots.values()) this.inc(s.labels, s.value);
      },
    });
  }

  labels(...values: string[]): CountSlot {
    return this.slotFor(values);
  }
}

export class BatchedGauge<L extends string> extends Batched<L> {
  constructor(d: Definition<L>) {
    super(d.labelNames);
    const slots = this.slots;
    new Gauge<L>({
      ...metricOptions(d),
      collect() {
        this.reset();
        for (const s of slots.values()) this.set(s.labels, s.value);
      },
    });
  }

  labels(...values: string[]): LevelSlot {
    return this.slotFor(values);
  }
}
