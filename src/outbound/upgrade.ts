// HTTP upgrades (WebSocket and the like) through the mesh: routed like any request, then the
// connection becomes a byte pipe over its own mTLS connection (never a pooled one), with the
// request head replayed to the other sidecar.
import type { IncomingMessage } from "node:http";
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { originate, type SessionCache, type UpstreamTlsError } from "../tls/origin.js";
import type { TlsMaterial } from "../tls/contexts.js";
import { joinSockets } from "../tcp/pipe.js";
import { originForm } from "../http/match.js";
import type { Logger } from "../telemetry/log.js";
import type { OutboundHttpState } from "./http-router.js";

function refuse(socket: Socket, status: string): void {
  socket.end(`HTTP/1.1 ${status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
}

export function upgradeOutbound(req: IncomingMessage, socket: Socket, head: Buffer, state: OutboundHttpState, tls: TlsMaterial, sessions: SessionCache, idleTimeoutMs: number, log: Logger): void {
  const url = originForm(req.url ?? "/");
  const q = url.indexOf("?");
  const route = state.routes.match({
    method: req.method ?? "GET",
    path: q < 0 ? url : url.slice(0, q),
    query: q < 0 ? null : new URLSearchParams(url.slice(q + 1)),
    header: (n) => {
      const v = req.headers[n];
      return Array.isArray(v) ? v.join(", ") : v;
    },
  });
  if (!route) return refuse(socket, "404 Not Found");
  // The heaviest leg: an upgraded connection is long-lived, one draw is as good as another.
  const leg = [...route.action.splits].sort((a, b) => b.weight - a.weight)[0];
  const cluster = leg ? state.clusters.get(leg.cluster) : undefined;
  const host = cluster?.pick({});
  if (!cluster || !host) return refuse(socket, "503 Service Unavailable");
  const c = cluster.config;
  originate(
    { host: host.endpoint.host, port: host.endpoint.port, sni: c.sni, expectedSpiffeId: c.expectedSpiffeId, timeoutMs: c.connectTimeoutMs ?? 5000 },
    tls,
    sessions,
    (err: UpstreamTlsError | null, up: TLSSocket) => {
      if (err) {
        log.warn("upgrade: upstream connect failed", { cluster: c.name, error: err.message });
        return refuse(socket, "503 Service Unavailable");
      }
      let headText = `${req.method} ${url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) headText += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(headText + "\r\n");
      if (head.length > 0) up.write(head);
      joinSockets(socket, up, idleTimeoutMs, () => {});
    },
  );
}
