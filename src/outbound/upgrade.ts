// HTTP upgrades (WebSocket) through the mesh: the request target is checked and routed like
// any request, then sent over an mTLS connection of its own (never a pooled one, opened by the
// concrete stage like an L4 connection); the
// connection becomes a byte pipe only once the other side answered 101 (upgrade-relay.ts).
import type { IncomingMessage } from "node:http";
import type { Socket } from "node:net";
import type { SessionCache } from "../tls/origin.js";
import { openStream } from "./concrete.js";
import type { TlsMaterial } from "../tls/contexts.js";
import { parseRequestTarget, refusalDetail } from "../http/request-target.js";
import { classifyUpgrade, rawLocalReply, relayUpgrade, upgradeRequestHeaders } from "../http/upgrade-relay.js";
import type { Logger } from "../telemetry/log.js";
import type { HttpRouter, OutboundHttpState } from "./http-router.js";

/** What the relay reads of an upgrade request: node:http's IncomingMessage, or the llhttp core's parse. */
export type UpgradeRequest = Pick<IncomingMessage, "method" | "url" | "headers" | "rawHeaders">;

export function upgradeOutbound(
  req: UpgradeRequest,
  socket: Socket,
  head: Buffer,
  state: OutboundHttpState,
  tls: TlsMaterial,
  sessions: SessionCache,
  idleTimeoutMs: number,
  router: HttpRouter,
  log: Logger,
): void {
  const target = parseRequestTarget(req.url ?? "/");
  if (!target.ok) {
    router.refused("invalid_request_target", state.upstream, req.method, req.url, target.reason);
    return rawLocalReply(socket, 400, "DPE", refusalDetail(target));
  }
  const kind = classifyUpgrade(req.headers);
  if (kind.kind === "refused") {
    router.refused(kind.reason, state.upstream, req.method, req.url, kind.detail);
    return rawLocalReply(socket, kind.status, "DPE", kind.detail);
  }
  const query = target.query;
  const compiled = state.match({
    method: req.method ?? "GET",
    path: target.path,
    query: query.length > 1 ? new URLSearchParams(query.slice(1)) : null,
    header: (n) => {
      const v = req.headers[n];
      return Array.isArray(v) ? v.join(", ") : v;
    },
  });
  if (!compiled) return rawLocalReply(socket, 404, "NR", `no route: ${state.upstream}`);
  // The heaviest leg: an upgraded connection is long-lived, one draw is as good as another.
  const primary = state.clusters.get(compiled.upgradeLeg.cluster);
  if (!primary) return rawLocalReply(socket, 503, "UH", `no healthy upstream: ${state.upstream}`);
  // Through the concrete stage, as a TCP connection: the cluster's balancer, failover, outlier
  // detection fed with connect results, MaxConnections, and a connect failure tried elsewhere.
  openStream(
    {
      primary,
      clusters: state.clusters,
      tls,
      sessions,
      connectTimeoutMs: primary.config.connectTimeoutMs,
      wanted: () => !socket.destroyed,
      attemptFailed: (cluster, host, err) => log.warn("upgrade: upstream connect failed", { cluster: cluster.name, host: host.key, error: err.message }),
    },
    (result) => {
      if ("flag" in result) {
        if (result.flag !== "UO") log.warn("upgrade: no upstream connection", { upstream: state.upstream, error: result.detail });
        return rawLocalReply(socket, 503, result.flag, result.flag === "UH" ? `no healthy upstream: ${state.upstream}` : result.detail);
      }
      const up = result.socket;
      const c = result.cluster.config;
      relayUpgrade({
        client: socket,
        head,
        method: req.method ?? "GET",
        path: target.path + query,
        headers: upgradeRequestHeaders(req.rawHeaders, req.headers, true),
        decision: kind.kind === "upgrade" ? { kind: "upgrade", protocol: kind.protocol, upgradeValue: req.headers["upgrade"] ?? kind.protocol } : { kind: "plain" },
        connect: { createConnection: () => up },
        responseTimeoutMs: compiled.upgradeResponseTimeoutMs,
        idleTimeoutMs,
        done: (r) => {
          if (r.error !== undefined) log.warn("upgrade: upstream failed", { cluster: c.name, error: r.error, status: r.status });
        },
      });
    },
  );
}
