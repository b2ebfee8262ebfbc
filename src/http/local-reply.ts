// Responses the proxy generates itself. Each carries a response flag (Envoy's access-log flags)
// in `x-meshproxy-response-flags`, so a client, a log and a dashboard can all tell a proxy-made
// 503 from the app's own.
import { isHttp2, writeHead, type ResponseSink } from "./compat.js";

export type ResponseFlag =
  /** No healthy upstream host. */
  | "UH"
  /** Upstream connection failure. */
  | "UF"
  /** Upstream overflow (circuit breaker). */
  | "UO"
  /** Upstream request timeout. */
  | "UT"
  /** Retry limit exceeded: the last attempt's answer is passed on. */
  | "URX"
  /** No route matched. */
  | "NR"
  /** Denied by an intention (external authorization in Envoy's terms). */
  | "UAEX"
  /** Upstream connection terminated mid-response. */
  | "UC"
  /** Upstream protocol error: the answer did not parse, and none of it had reached the client (502). */
  | "UPE"
  /** Downstream (client) went away. */
  | "DC"
  /** Downstream protocol error: a request target or upgrade refused with 400/403 (request-target.ts). */
  | "DPE";

export const FLAGS_HEADER = "x-meshproxy-response-flags";

const TEXT: Partial<Record<ResponseFlag, string>> = {
  UH: "no healthy upstream",
  UF: "upstream connect error or disconnect/reset before headers",
  UO: "upstream overflow",
  UT: "upstream request timeout",
  NR: "no route",
  UAEX: "RBAC: access denied",
  UC: "upstream connection terminated",
  // Envoy's words for the same case, which operators search for.
  UPE: "upstream connect error or disconnect/reset before headers. reset reason: protocol error",
  DPE: "bad request",
};

/** A local reply's text: what the flag means, then the detail. */
export function localReplyText(flag: ResponseFlag, detail?: string): string {
  return `${TEXT[flag] ?? flag}${detail ? `: ${detail}` : ""}`;
}

export function localReply(res: ResponseSink, status: number, flag: ResponseFlag, detail?: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = localReplyText(flag, detail);
  if (isGrpcCall(res)) return grpcLocalReply(res, status, flag, text);
  const body = `${text}\n`;
  const headers: Record<string, string | number> = {
    "content-type": "text/plain; charset=utf-8",
    "content-length": Buffer.byteLength(body),
    [FLAGS_HEADER]: flag,
  };
  if (flag === "UO") headers["x-envoy-overloaded"] = "true";
  writeHead(res, status, headers);
  res.end(body);
}

/** A gRPC call: an HTTP/2 request whose content-type is application/grpc[+proto|;…]. */
function isGrpcCall(res: ResponseSink): boolean {
  if (!isHttp2(res)) return false;
  const type = res.req.headers["content-type"];
  return typeof type === "string" && /^application\/grpc(?:$|[+;])/i.test(type);
}

/**
 * Envoy's status mapping for a local reply to a gRPC call (Grpc::Utility::httpToGrpcStatus): a
 * gRPC client reads only grpc-status, and an HTTP 403 would reach it as UNKNOWN or INTERNAL.
 */
export function grpcStatusOf(httpStatus: number): number {
  switch (httpStatus) {
    case 400:
      return 13; // INTERNAL
    case 401:
      return 16; // UNAUTHENTICATED
    case 403:
      return 7; // PERMISSION_DENIED
    case 404:
      return 12; // UNIMPLEMENTED
    case 429:
    case 502:
    case 503:
    case 504:
      return 14; // UNAVAILABLE
    default:
      return 2; // UNKNOWN
  }
}

/** grpc-message is percent-encoded UTF-8 (grpc/doc/PROTOCOL-HTTP2.md): printable ASCII except '%' stays. */
export function grpcMessage(text: string): string {
  let out = "";
  for (const byte of Buffer.from(text, "utf8")) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** A trailers-only answer: gRPC requires HTTP 200 and reads the outcome from grpc-status alone. */
function grpcLocalReply(res: ResponseSink, status: number, flag: ResponseFlag, text: string): void {
  const headers: Record<string, string | number> = {
    "content-type": "application/grpc",
    "grpc-status": grpcStatusOf(status),
    "grpc-message": grpcMessage(text),
    [FLAGS_HEADER]: flag,
  };
  if (flag === "UO") headers["x-envoy-overloaded"] = "true";
  writeHead(res, 200, headers);
  res.end();
}
