// One request/response shape for HTTP/1.1 (node:http) and HTTP/2 (node:http2's compatibility
// API), so routing, authorization and forwarding are written once. The differences that matter
// are here: pseudo-headers, connection-specific headers, and trailers (gRPC's grpc-status).
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";
import { Http2ServerResponse, type Http2ServerRequest } from "node:http2";
import { endToEndCopy, type HeaderRecord } from "./headers.js";

export type AnyRequest = IncomingMessage | Http2ServerRequest;
export type AnyResponse = ServerResponse | Http2ServerResponse;

/**
 * Where an upstream answer (or a local reply) is written: a node:http or node:http2 response for
 * the sidecar, an undici handler for a Connect-native client (native/response-sink.ts). The
 * endpoint stage and the router's retry loop write to this, so both go through the same code.
 */
export interface ResponseSink {
  readonly headersSent: boolean;
  writeHead(status: number, headers: OutgoingHttpHeaders): unknown;
  /** False when the reader is full: wait for 'drain'. */
  write(chunk: Buffer): boolean;
  end(): unknown;
  end(body: string): unknown;
  destroy(): unknown;
  once(event: "drain", listener: () => void): unknown;
  /** The answer's trailers, for sinks that pass them on whatever the protocol (HTTP/2 responses use addTrailers). */
  forwardTrailers?(trailers: OutgoingHttpHeaders): void;
  /**
   * The head of an answer parsed by the HTTP/1 core, its fields unchanged (sinks on the core):
   * the end-to-end ones go on as they came, without a header record in between.
   */
  writeParsedHead?(status: number, raw: readonly string[]): void;
  /**
   * Takes back a head that has not left yet (sinks on the core hold it until its body or the end
   * of the parse): true when nothing of the answer went out and a local reply can still be sent.
   */
  retractHead?(): boolean;
}

/**
 * The request's end-to-end headers for the next hop: no hop-by-hop fields, no HTTP/2
 * pseudo-headers, `host` filled from `:authority`, and `te: trailers` kept (gRPC needs it end to
 * end; it is the one TE value HTTP/2 allows).
 */
export function requestHeaders(req: AnyRequest, outbound = false): HeaderRecord {
  const out = endToEndCopy(req.headers, true, outbound);
  const authority = req.headers[":authority"];
  if (out["host"] === undefined && typeof authority === "string") out["host"] = authority;
  if (req.headers["te"] === "trailers") out["te"] = "trailers";
  // The sidecar already answered 100-continue itself, and undici refuses to send `expect`.
  if (out["expect"] !== undefined) delete out["expect"];
  return out;
}

/** Whether a request carries a body: HTTP/2 says so in its HEADERS frame, HTTP/1.1 in its framing headers. */
export function requestHasBody(req: AnyRequest): boolean {
  if ("stream" in req) return !req.stream.endAfterHeaders;
  const cl = req.headers["content-length"];
  if (cl !== undefined) return cl !== "0";
  return req.headers["transfer-encoding"] !== undefined;
}

/** The fields of a gRPC status (grpc/doc/PROTOCOL-HTTP2.md). */
const GRPC_STATUS_FIELDS = ["grpc-status", "grpc-message", "grpc-status-details-bin"] as const;

export function writeHead(res: ResponseSink, status: number, headers: OutgoingHttpHeaders): void {
  if (res instanceof Http2ServerResponse) {
    // HTTP/2 forbids connection-specific fields; hop-by-hop stripping removed most already.
    delete headers["connection"];
    delete headers["keep-alive"];
    delete headers["transfer-encoding"];
    // A gRPC "trailers-only" answer (grpc-status in the HEADERS frame that ends the stream, as
    // grpc-js sends any status before a message) would go out as headers, then an empty DATA
    // frame: clients read the status only from trailers then, and fail the call with INTERNAL
    // ("Call ended without gRPC status"). The status fields move to the trailers.
    if (headers["grpc-status"] !== undefined) {
      const trailers: OutgoingHttpHeaders = {};
      for (const k of GRPC_STATUS_FIELDS) {
        if (headers[k] === undefined) continue;
        trailers[k] = headers[k];
        delete headers[k];
      }
      res.addTrailers(trailers);
    }
    res.writeHead(status, headers);
  } else {
    res.writeHead(status, headers);
  }
}


export function isHttp2(res: ResponseSink): res is Http2ServerResponse {
  return res instanceof Http2ServerResponse;
}

/** The `code` of an error from undici or node (e.g. UND_ERR_HEADERS_TIMEOUT), if it has one. */
export function errorCode(e: unknown): string | undefined {
  return typeof e === "object" && e !== null && "code" in e && typeof e.code === "string" ? e.code : undefined;
}

/**
 * An answer that did not parse, as undici reports it (its parser's HPE_* codes, or a body that
 * does not match its Content-Length): Envoy's upstream protocol error.
 */
export function isResponseParseError(e: unknown): boolean {
  const code = errorCode(e);
  return code !== undefined && (code.startsWith("HPE_") || code === "UND_ERR_RES_CONTENT_LENGTH_MISMATCH");
}

/**
 * "The client went away", for the attempt in flight. One is made for every request, so it is a
 * flag and a short listener list rather than an EventEmitter (whose once() allocates a wrapper
 * per listener) or an AbortController (an EventTarget that builds a DOMException to abort).
 */
export class Cancel {
  cancelled = false;
  private listeners: (() => void)[] | null = null;

  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    const ls = this.listeners;
    this.listeners = null;
    if (ls) for (const l of ls) l();
  }

  /** `listener` runs once, when the request is cancelled (not if it already was). */
  once(_event: "abort", listener: () => void): void {
    if (this.cancelled) return;
    (this.listeners ??= []).push(listener);
  }

  off(_event: "abort", listener: () => void): void {
    const ls = this.listeners;
    if (!ls) return;
    const i = ls.lastIndexOf(listener);
    if (i >= 0) ls.splice(i, 1);
  }
}
