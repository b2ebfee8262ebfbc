// Counters and gauges whose updates on the request path are additions to a local number, handed
// to prom-client when it collects (a scrape), as cluster-gauges.ts does for cluster state.
// prom-client hashes the label set and validates it on every inc(), even through a labels()
// child: the four metric updates of an L7 request were ~3 % of the client sidecar's CPU.
import { Counter, Gauge, Histogram, type Registry } from "./prom.js";

/** A counter's series for one label set. */
export interface CountSlot {
  inc(by?: number): void;
}

/** A gauge's series for one label set. */
export interface LevelSlot {
  inc(by?: number): void;
  dec(by?: number): void;
}

/** A counter series whose running total can be read back (the admin API's traffic window). */
export interface CountReading extends CountSlot {
  readonly value: number;
}

class Slot<L extends string> implements CountReading, LevelSlot {
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

  labels(...values: string[]): CountReading {
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

interface HistogramExport {
  name: string;
  help: string;
  type: "histogram";
  aggregator: "sum";
  /** sharedLabels: prom-client's Histogram.get() (the JSON form, which -concurrency aggregates) reads it. */
  values: Array<{ labels: Readonly<Record<string, string | number>>; sharedLabels: Readonly<Record<string, string>>; value: number; metricName: string }>;
}

const NO_SHARED_LABELS: Readonly<Record<string, string>> = Object.freeze({});

/** A histogram's series for one label set. */
export interface TimeSlot {
  observe(value: number): void;
}

/** A histogram series whose buckets can be read back (the admin API's traffic window). */
export interface TimeReading extends TimeSlot {
  /** Per bucket, not cumulative, in the histogram's bucket order; observations above the last bound are only in `count`. */
  readonly counts: Float64Array;
  readonly count: number;
}

class HistogramSlot implements TimeReading {
  /** Per bucket, not cumulative: observe() adds to one; cumulated at scrape time. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  constructor(
    readonly labels: Readonly<Record<string, string>>,
    private readonly bounds: readonly number[],
  ) {
    this.counts = new Float64Array(bounds.length);
  }
  observe(value: number): void {
    const b = this.bounds;
    let i = 0;
    while (i < b.length && value > b[i]!) i++;
    if (i < b.length) this.counts[i]! += 1;
    this.sum += value;
    this.count++;
  }
}

/**
 * A histogram whose observe() on the request path is a bucket scan and three additions (a
 * prom-client histogram child hashes its label set on every observe); the series are built
 * when Prometheus scrapes, in prom-client's own format. A series asked for shows zeros from then
 * on, as Envoy's do (prom-client shows a child only once observed).
 */
export class BatchedHistogram<L extends string> extends Histogram<L> {
  private readonly slots = new Map<string, HistogramSlot>();
  private readonly bounds: readonly number[];
  private readonly names: readonly L[];
  private readonly def: Definition<L>;

  constructor(d: Definition<L> & { readonly buckets: readonly number[] }) {
    super({ ...metricOptions(d), buckets: [...d.buckets] });
    this.def = d;
    this.bounds = [...d.buckets].sort((a, b) => a - b);
    this.names = d.labelNames;
  }

  /** The series for these label values (in labelNames order); cache it, it does not change. */
  slot(...values: string[]): TimeReading {
    const key = values.join("\u0000");
    let s = this.slots.get(key);
    if (!s) {
      const labels: Record<string, string> = {};
      this.names.forEach((n, i) => (labels[n] = values[i] ?? ""));
      s = new HistogramSlot(labels, this.bounds);
      this.slots.set(key, s);
    }
    return s;
  }

  /**
   * prom-client's registry renders a histogram through this method (its get() calls it too, for
   * JSON): the series come from the slots, none from prom-client's own children.
   */
  getForPromString(): Promise<HistogramExport> {
    const values: Array<HistogramExport["values"][number]> = [];
    for (const s of this.slots.values()) {
      let cumulative = 0;
      this.bounds.forEach((le, i) => {
        cumulative += s.counts[i]!;
        values.push({ labels: { le, ...s.labels }, sharedLabels: NO_SHARED_LABELS, value: cumulative, metricName: `${this.def.name}_bucket` });
      });
      values.push({ labels: { le: "+Inf", ...s.labels }, sharedLabels: NO_SHARED_LABELS, value: s.count, metricName: `${this.def.name}_bucket` });
      values.push({ labels: s.labels, sharedLabels: NO_SHARED_LABELS, value: s.sum, metricName: `${this.def.name}_sum` });
      values.push({ labels: s.labels, sharedLabels: NO_SHARED_LABELS, value: s.count, metricName: `${this.def.name}_count` });
    }
    return Promise.resolve({ name: this.def.name, help: this.def.help, type: "histogram", values, aggregator: "sum" });
  }
}
