// OpenTelemetry tracing of proxied HTTP requests: a server span per inbound request, a client
// span per outbound one, W3C trace context and B3 extracted and injected so the app's spans and
// both sidecars' join one trace. Parent-based ratio sampling; OTLP/HTTP export, batched, never
// on the request path; export failures are counted, not fatal. With tracing off nothing is
// extracted, injected or allocated.
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Context, type Span, type TextMapGetter, type TextMapSetter, type Tracer } from "@opentelemetry/api";
import { W3CTraceContextPropagator, ExportResultCode, type ExportResult } from "@opentelemetry/core";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor, NodeTracerProvider, ParentBasedSampler, TraceIdRatioBasedSampler, type ReadableSpan, type SpanExporter } from "@opentelemetry/sdk-trace-node";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import type { Counter } from "prom-client";
import { B3Propagator, b3FormatOf } from "./b3.js";

export interface TracingOptions {
  /** OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:4318/v1/traces. */
  readonly endpoint: string;
  /** 0..1 of new traces sampled; a parent's decision always wins. */
  readonly sampleRate: number;
  readonly serviceName: string;
  readonly exportFailures: Counter<"reason">;
}

type Headers = Record<string, string | string[] | undefined>;

const getter: TextMapGetter<Headers> = {
  keys: (c) => Object.keys(c),
  get: (c, k) => c[k],
};
const setter: TextMapSetter<Headers> = {
  set: (c, k, v) => void (c[k] = v),
};

/** Counts failed exports; the batch processor drops what it cannot send. */
class CountingExporter implements SpanExporter {
  constructor(
    private readonly inner: SpanExporter,
    private readonly failures: Counter<"reason">,
  ) {}

  export(spans: ReadableSpan[], done: (r: ExportResult) => void): void {
    this.inner.export(spans, (r) => {
      if (r.code !== ExportResultCode.SUCCESS) this.failures.labels(r.error?.name ?? "export_failed").inc();
      done(r);
    });
  }

  shutdown(): Promise<void> {
    return this.inner.shutdown();
  }

  forceFlush(): Promise<void> {
    return this.inner.forceFlush?.() ?? Promise.resolve();
  }
}

export interface RequestSpan {
  readonly span: Span;
  /** The context to inject downstream of this hop. */
  readonly context: Context;
  readonly b3: "single" | "multi" | null;
}

export class Tracing {
  private readonly provider: NodeTracerProvider;
  private readonly tracer: Tracer;
  private readonly w3c = new W3CTraceContextPropagator();
  private readonly b3single = new B3Propagator("single");
  private readonly b3multi = new B3Propagator("multi");

  private readonly exportFailures: TracingOptions["exportFailures"];

  constructor(opts: TracingOptions) {
    this.exportFailures = opts.exportFailures;
    this.provider = new NodeTracerProvider({
      resource: resourceFromAttributes({ "service.name": opts.serviceName, "service.namespace": "meshproxy" }),
      sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(opts.sampleRate) }),
      spanProcessors: [
        new BatchSpanProcessor(new CountingExporter(new OTLPTraceExporter({ url: opts.endpoint, timeoutMillis: 5000 }), opts.exportFailures), {
          maxQueueSize: 4096,
          scheduledDelayMillis: 500,
        }),
      ],
    });
    this.tracer = this.provider.getTracer("meshproxy");
  }

  private extract(headers: Headers): { ctx: Context; b3: "single" | "multi" | null } {
    const b3 = b3FormatOf(headers);
    if (headers["traceparent"] !== undefined) return { ctx: this.w3c.extract(ROOT_CONTEXT, headers, getter), b3 };
    if (b3 === "single") return { ctx: this.b3single.extract(ROOT_CONTEXT, headers, getter), b3 };
    if (b3 === "multi") return { ctx: this.b3multi.extract(ROOT_CONTEXT, headers, getter), b3 };
    return { ctx: ROOT_CONTEXT, b3 };
  }

  /** Starts a span as a child of whatever context the request carries. */
  start(kind: "server" | "client", name: string, headers: Headers, attributes: Record<string, string | number>): RequestSpan {
    const { ctx, b3 } = this.extract(headers);
    const span = this.tracer.startSpan(name, { kind: kind === "server" ? SpanKind.SERVER : SpanKind.CLIENT, attributes }, ctx);
    return { span, context: trace.setSpan(ctx, span), b3 };
  }

  /** Writes this hop's context into the headers going to the next hop, in the formats it came in. */
  inject(s: RequestSpan, headers: Headers): void {
    this.w3c.inject(s.context, headers, setter);
    if (s.b3 === "single") this.b3single.inject(s.context, headers, setter);
    if (s.b3 === "multi") this.b3multi.inject(s.context, headers, setter);
  }

  end(s: RequestSpan, status: number, attributes: Record<string, string | number>): void {
    s.span.setAttributes({ "http.response.status_code": status, ...attributes });
    if (status >= 500) s.span.setStatus({ code: SpanStatusCode.ERROR });
    s.span.end();
  }

  async shutdown(): Promise<void> {
    // Spans still queued at shutdown are lost; counted as the export failures they are.
    await this.provider.shutdown().catch(() => this.exportFailures.labels("shutdown").inc());
  }
}
