// The metrics listener (-metrics-addr, or Consul's envoy_prometheus_bind_addr): the merged
// exposition and nothing else, so it can be exposed to a Prometheus on another host without
// exposing the admin API's mutations and config dump with it.
import { listenOn } from "../tcp/listen.js";
import { createServer, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { MetricsExposition } from "./merge.js";

export const METRICS_PATHS: readonly string[] = ["/metrics", "/stats/prometheus"];

function send(res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(body), ...headers });
  res.end(body);
}

/** Serves an exposition for one scrape; shared by the metrics listener and the admin API. */
export async function serveExposition(exposition: MetricsExposition, res: ServerResponse, head = false): Promise<void> {
  const body = await exposition.render();
  res.writeHead(200, { "content-type": exposition.contentType, "content-length": Buffer.byteLength(body) });
  res.end(head ? undefined : body);
}

export class MetricsServer {
  private readonly server: Server;

  constructor(exposition: MetricsExposition) {
    this.server = createServer((req, res) => {
      const path = (req.url ?? "/").split("?")[0]!;
      if (!METRICS_PATHS.includes(path)) return send(res, 404, `no such endpoint: ${path}; metrics are at /metrics\n`);
      if (req.method !== "GET" && req.method !== "HEAD") return send(res, 405, "metrics are read with GET\n", { allow: "GET, HEAD" });
      serveExposition(exposition, res, req.method === "HEAD").catch((e: unknown) => send(res, 500, `rendering metrics failed: ${e instanceof Error ? e.message : String(e)}\n`));
    });
  }

  async listen(host: string, port: number): Promise<AddressInfo> {
    return listenOn(this.server, host, port);
  }

  close(): void {
    this.server.close();
    this.server.closeAllConnections();
  }
}
