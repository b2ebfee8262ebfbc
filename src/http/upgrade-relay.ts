// HTTP/1.1 upgrades (WebSocket) on a connection node:http has handed over raw. The request is
// sent on as an HTTP request of its own and the connection becomes a byte pipe only once the
// next hop answered `101 Switching Protocols` to the protocol asked for, as Envoy's
// upgrade_configs do. Any other answer is relayed and the connection is closed: the client's
// bytes after the upgrade request (say a pipelined `GET /secret`) are never sent anywhere, so
// every request that reaches an app is one that was authorized.
//
// Which upgrades pass: WebSocket, Consul's default (Envoy's `websocket` upgrade_config). `h2c`
// is ignored (RFC 9110 §7.8 lets a server ignore Upgrade; Envoy strips it): the request is
// served as plain HTTP/1.1. Anything else is refused with 403, as Envoy answers an upgrade its
// route does not allow. An upgrade request with a body is refused with 400: WebSocket's
// handshake is a GET without one (RFC 6455 §4.1), and node hands the body over unparsed.
import { request as httpRequest, type ClientRequest, type IncomingHttpHeaders, type IncomingMessage, type RequestOptions } from "node:http";
import type { Socket } from "node:net";
import { HOP_BY_HOP, SIDECAR_ONLY_FIELD } from "./headers.js";
import { FIRST_LINE_ONLY } from "../http1/fields.js";
import { FLAGS_HEADER, type ResponseFlag } from "./local-reply.js";
import { joinSockets } from "../tcp/pipe.js";

/** Upgrade protocols that become a byte pipe (lower-case tokens). */
export const ALLOWED_UPGRADES: ReadonlySet<string> = new Set(["websocket"]);

export type UpgradeDecision =
  /** Relay the upgrade; `protocol` is the lower-case token the answer must name. */
  | { readonly kind: "upgrade"; readonly protocol: string }
  /** `Upgrade: h2c`: serve the request as plain HTTP/1.1 without its upgrade fields. */
  | { readonly kind: "plain" }
  | { readonly kind: "refused"; readonly status: 400 | 403; readonly reason: "upgrade_not_allowed" | "upgrade_with_body"; readonly detail: string };

/** What to do with a request node:http emitted as an upgrade. */
export function classifyUpgrade(headers: IncomingHttpHeaders): UpgradeDecision {
  const cl = headers["content-length"];
  if ((cl !== undefined && cl !== "0") || headers["transfer-encoding"] !== undefined) {
    return { kind: "refused", status: 400, reason: "upgrade_with_body", detail: "an upgrade request must not carry a body" };
  }
  const token = (headers["upgrade"] ?? "").trim().toLowerCase();
  if (ALLOWED_UPGRADES.has(token)) return { kind: "upgrade", protocol: token };
  if (token === "h2c") return { kind: "plain" };
  return {
    kind: "refused",
    status: 403,
    reason: "upgrade_not_allowed",
    detail: `upgrade to ${JSON.stringify(headers["upgrade"] ?? "")} is not allowed (allowed: ${[...ALLOWED_UPGRADES].join(", ")})`,
  };
}

const STATUS_TEXT: Record<number, string> = { 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout" };

/**
 * A proxy-made answer on a raw connection, then the connection closes. What the client sent
 * after its request is read and dropped first, so the close is a FIN and not a reset that
 * could destroy the answer before the client reads it.
 */
export function rawLocalReply(socket: Socket, status: number, flag: ResponseFlag, detail: string): void {
  const body = `${detail}\n`;
  closeAfter(socket);
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? "Error"}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${FLAGS_HEADER}: ${flag}\r\nconnection: close\r\n\r\n${body}`,
  );
}

/**
 * Drains and drops what the client still sends, and destroys the socket once both directions
 * are done, or 5 s after the answer was written if the client keeps its side open.
 */
function closeAfter(socket: Socket): void {
  let ended = false;
  let written = false;
  socket.on("error", () => socket.destroy());
  socket.once("end", () => {
    ended = true;
    if (written) socket.destroy();
  });
  socket.once("finish", () => {
    written = true;
    if (ended) socket.destroy();
    else setTimeout(() => socket.destroy(), 5_000).unref();
  });
  socket.resume();
}

/**
 * The request's fields for the next hop: hop-by-hop ones and those Connection nominates left out,
 * and of a field node:http reads only the first line of (Host, Authorization, ...) only that line:
 * it is the one `headers` holds and the request was authorized and routed on, and an app that
 * reads the last line (or joins them) must not act on one that was never checked (as forward.ts).
 * `outbound` (a local app's upgrade going into the mesh): the app's x-forwarded-client-cert too.
 */
export function upgradeRequestHeaders(rawHeaders: readonly string[], headers: IncomingHttpHeaders, outbound = false): string[] {
  const nominated = new Set<string>(["http2-settings", "content-length"]);
  if (outbound) nominated.add(SIDECAR_ONLY_FIELD);
  for (const t of (headers["connection"] ?? "").split(",")) nominated.add(t.trim().toLowerCase());
  const out: string[] = [];
  const seen = new Set<string>();
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || nominated.has(lower)) continue;
    if (FIRST_LINE_ONLY.has(lower)) {
      if (seen.has(lower)) continue;
      seen.add(lower);
    }
    out.push(name, rawHeaders[i + 1]!);
  }
  return out;
}

export interface UpgradeRelay {
  /** The client's connection, as node:http's "upgrade" event gave it. */
  readonly client: Socket;
  /** Bytes the client sent after the request head: sent on only after a 101. */
  readonly head: Buffer;
  readonly method: string;
  /** The canonical path and query that were authorized and routed. */
  readonly path: string;
  /** End-to-end fields (upgradeRequestHeaders) plus the proxy's own; the upgrade fields are added here. */
  readonly headers: readonly string[];
  readonly decision: { readonly kind: "upgrade"; readonly protocol: string; readonly upgradeValue: string } | { readonly kind: "plain" };
  /** How to reach the next hop: host/port, or a connection already made (createConnection). */
  readonly connect: Pick<RequestOptions, "host" | "port" | "createConnection">;
  /** Time for the next hop to answer the request head. */
  readonly responseTimeoutMs: number;
  readonly idleTimeoutMs: number;
  /** Called once: the status the client got, and whether the connection became a pipe. */
  readonly done: (r: { readonly status: number; readonly flag: ResponseFlag | "-"; readonly joined: boolean; readonly error?: string }) => void;
}

/** Sends the request on and either joins the two connections after a 101 or relays the answer and closes. */
export function relayUpgrade(o: UpgradeRelay): ClientRequest {
  const { client } = o;
  let finished = false;
  const finish = (status: number, flag: ResponseFlag | "-", joined: boolean, error?: string) => {
    if (finished) return;
    finished = true;
    o.done(error === undefined ? { status, flag, joined } : { status, flag, joined, error });
  };
  const headers = [...o.headers];
  if (o.decision.kind === "upgrade") headers.push("Connection", "Upgrade", "Upgrade", o.decision.upgradeValue);
  else headers.push("Connection", "close");
  // A connection of its own, never a pooled one: `agent: false`, or no agent at all with createConnection.
  const up = httpRequest({ ...o.connect, ...(o.connect.createConnection ? {} : { agent: false }), method: o.method, path: o.path, headers, setHost: false });
  const clientGone = () => {
    up.destroy();
    finish(0, "DC", false);
  };
  client.once("close", clientGone);
  client.on("error", () => client.destroy());
  up.setTimeout(o.responseTimeoutMs, () => up.destroy(new ResponseTimeout(o.responseTimeoutMs)));
  up.on("error", (e: Error) => {
    if (finished) return;
    client.off("close", clientGone);
    const timedOut = e instanceof ResponseTimeout;
    rawLocalReply(client, timedOut ? 504 : 503, timedOut ? "UT" : "UF", timedOut ? `upstream did not answer the upgrade within ${o.responseTimeoutMs} ms` : `upstream connect error or disconnect/reset before headers: ${e.message}`);
    finish(timedOut ? 504 : 503, timedOut ? "UT" : "UF", false, e.message);
  });
  if (o.decision.kind === "upgrade") {
    const protocol = o.decision.protocol;
    up.on("upgrade", (res: IncomingMessage, upstream: Socket, upHead: Buffer) => {
      up.setTimeout(0);
      client.off("close", clientGone);
      if ((res.headers["upgrade"] ?? "").trim().toLowerCase() !== protocol) {
        upstream.destroy();
        rawLocalReply(client, 502, "UF", `the upstream switched to ${JSON.stringify(res.headers["upgrade"] ?? "")}, not the ${protocol} that was asked for`);
        return finish(502, "UF", false, "switched to another protocol");
      }
      let text = `HTTP/1.1 101 ${res.statusMessage || "Switching Protocols"}\r\n`;
      for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) text += `${res.rawHeaders[i]}: ${res.rawHeaders[i + 1]}\r\n`;
      client.write(`${text}\r\n`);
      if (upHead.length > 0) client.write(upHead);
      if (o.head.length > 0) upstream.write(o.head);
      joinSockets(client, upstream, o.idleTimeoutMs, () => {});
      finish(101, "-", true);
    });
  }
  up.on("response", (res: IncomingMessage) => {
    up.setTimeout(0);
    client.off("close", clientGone);
    // Not switched: the answer goes back and the connection ends; nothing else the client sent is read as a request.
    const status = res.statusCode ?? 502;
    let text = `HTTP/1.1 ${status} ${res.statusMessage ?? ""}\r\n`;
    const nominated = new Set((res.headers["connection"] ?? "").split(",").map((t) => t.trim().toLowerCase()));
    for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) {
      const lower = res.rawHeaders[i]!.toLowerCase();
      if (HOP_BY_HOP.has(lower) || nominated.has(lower)) continue;
      text += `${res.rawHeaders[i]}: ${res.rawHeaders[i + 1]}\r\n`;
    }
    closeAfter(client);
    client.write(`${text}connection: close\r\n\r\n`);
    // Without content-length the body is delimited by the close (node has undone any chunking).
    res.pipe(client);
    res.once("end", () => up.destroy());
    res.once("error", () => client.destroy());
    finish(status, "-", false);
  });
  up.end();
  return up;
}

class ResponseTimeout extends Error {
  constructor(ms: number) {
    super(`no answer within ${ms} ms`);
    this.name = "ResponseTimeout";
  }
}
