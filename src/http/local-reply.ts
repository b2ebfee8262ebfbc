// Responses the proxy generates itself. Each carries a response flag (Envoy's access-log flags)
// in `x-meshproxy-response-flags`, so a client, a log and a dashboard can all tell a proxy-made
// 503 from the app's own.
import { writeHead, type ResponseSink } from "./compat.js";

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
  DPE: "bad request",
};

export function localReply(res: ResponseSink, status: number, flag: ResponseFlag, detail?: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = `${TEXT[flag] ?? flag}${detail ? `: ${detail}` : ""}\n`;
  const headers: Record<string, string | number> = {
    "content-type": "text/plain; charset=utf-8",
    "content-length": Buffer.byteLength(body),
    [FLAGS_HEADER]: flag,
  };
  if (flag === "UO") headers["x-envoy-overloaded"] = "true";
  writeHead(res, status, headers);
  res.end(body);
}
