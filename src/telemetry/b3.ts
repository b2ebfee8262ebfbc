// B3 propagation (Zipkin's; single `b3` header and the multi-header X-B3-* form), so apps
// instrumented for Zipkin-style tracing join the same trace as W3C ones. Envoy speaks both.
import { isSpanContextValid, trace, TraceFlags, type Context, type TextMapGetter, type TextMapPropagator, type TextMapSetter } from "@opentelemetry/api";

const HEX16 = /^[0-9a-f]{16}$/;
const HEX32 = /^[0-9a-f]{32}$/;

function traceIdOf(v: string): string | null {
  // 64-bit B3 trace ids are left-padded to W3C's 128 bits.
  if (HEX32.test(v)) return v;
  if (HEX16.test(v)) return `0000000000000000${v}`;
  return null;
}

function sampledOf(v: string | undefined): boolean | undefined {
  if (v === undefined) return undefined;
  if (v === "1" || v === "d" || v === "true") return true;
  if (v === "0" || v === "false") return false;
  return undefined;
}

function first(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

export class B3Propagator implements TextMapPropagator {
  /** `single` writes one `b3` header; `multi` writes X-B3-TraceId/SpanId/Sampled. */
  constructor(private readonly format: "single" | "multi") {}

  inject(context: Context, carrier: unknown, setter: TextMapSetter): void {
    const sc = trace.getSpanContext(context);
    if (!sc || !isSpanContextValid(sc)) return;
    const sampled = (sc.traceFlags & TraceFlags.SAMPLED) !== 0 ? "1" : "0";
    if (this.format === "single") {
      setter.set(carrier, "b3", `${sc.traceId}-${sc.spanId}-${sampled}`);
    } else {
      setter.set(carrier, "x-b3-traceid", sc.traceId);
      setter.set(carrier, "x-b3-spanid", sc.spanId);
      setter.set(carrier, "x-b3-sampled", sampled);
    }
  }

  extract(context: Context, carrier: unknown, getter: TextMapGetter): Context {
    const single = first(getter.get(carrier, "b3"));
    let traceId: string | null;
    let spanId: string | undefined;
    let sampled: boolean | undefined;
    if (single) {
      const [t, s, f] = single.split("-");
      traceId = t ? traceIdOf(t) : null;
      spanId = s;
      sampled = sampledOf(f);
    } else {
      const t = first(getter.get(carrier, "x-b3-traceid"));
      traceId = t ? traceIdOf(t) : null;
      spanId = first(getter.get(carrier, "x-b3-spanid"));
      sampled = sampledOf(first(getter.get(carrier, "x-b3-sampled"))) ?? (first(getter.get(carrier, "x-b3-flags")) === "1" ? true : undefined);
    }
    if (!traceId || !spanId || !HEX16.test(spanId)) return context;
    return trace.setSpanContext(context, { traceId, spanId, traceFlags: sampled === false ? TraceFlags.NONE : TraceFlags.SAMPLED, isRemote: true });
  }

  fields(): string[] {
    return this.format === "single" ? ["b3"] : ["x-b3-traceid", "x-b3-spanid", "x-b3-sampled"];
  }
}

/** Which B3 form a request used, if any, so the proxy answers in kind. */
export function b3FormatOf(headers: Record<string, string | string[] | undefined>): "single" | "multi" | null {
  if (headers["b3"] !== undefined) return "single";
  if (headers["x-b3-traceid"] !== undefined) return "multi";
  return null;
}
