// Types of the soak's verdicts (check.mjs) for the TypeScript tests that exercise them.

export interface LeakSample {
  readonly t: number;
  readonly name: string;
  readonly pid: number;
  readonly rssMb?: number | null;
  readonly heapMb?: number | null;
  readonly fdsNet?: number | null;
}

export interface FaultEvent {
  readonly kind: string;
  readonly t0: number;
  readonly t1?: number;
}

export interface MetricVerdict {
  readonly mean: number;
  readonly growth: number;
  readonly rises: number;
  readonly steps: number;
  readonly levels: ReadonlyArray<number | null>;
  readonly slopeGrowth: number;
  readonly limit: number;
  readonly perHour: number;
  readonly over: boolean;
  readonly gating: boolean;
}

export type LeakVerdict =
  | { readonly name: string; readonly judged: false; readonly why: string }
  | {
      readonly name: string;
      readonly judged: true;
      readonly pid: number;
      readonly spanS: number;
      readonly points: number;
      readonly metrics: Readonly<Partial<Record<"rssMb" | "heapMb" | "fdsNet", MetricVerdict>>>;
      readonly leak: boolean;
    };

export const LEAK_BOUNDS: Readonly<Record<"rssMb" | "heapMb" | "fdsNet", { readonly abs: number; readonly rel: number; readonly what: string }>>;
export const LEAK_WINDOWS: number;

export function windowLevels(points: ReadonlyArray<{ readonly t: number; readonly y: number }>, from: number, to: number, windows?: number): Array<number | null>;

export function sustainedGrowth(levels: ReadonlyArray<number | null>, limit: number): { growth: number; rises: number; steps: number; over: boolean } | null;

export function leakCheck(
  samples: ReadonlyArray<LeakSample>,
  opts: {
    fromMs: number;
    toMs: number;
    events: ReadonlyArray<FaultEvent>;
    quietMs: number;
    quietAfterBurstMs?: number;
    warmupMs: number;
    gate: ReadonlyArray<string>;
  },
): LeakVerdict[];
