// The metrics listener (-metrics-addr, or Consul's envoy_prometheus_bind_addr): the merged
// exposition and nothing else, so it can be exposed to a Prometheus on another host without
// exposing the admin API's mutations and config dump with it. It is read-only (GET and HEAD),
// so there is nothing for a cross-origin page to forge; on loopback it also refuses foreign Host
// names, so a DNS-rebinding page cannot read what only the host itself could.
import { listenOn } from "../tcp/listen.js";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Counter } from "prom-client";
import type { MetricsExposition } from "./merge.js";
import { HostAllowList, checkHost, isLoopbackHost } from "../http/browser-guard.js";

export const METRICS_PATHS: readonly string[] = ["/metrics", "/stats/prometheus"];

function send(res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(body), ...headers });
  res.end(body);
}

/**
 * Serves an exposition for one scrape; shared by the metrics listener and the admin API. The
 * scraper's `X-Prometheus-Scrape-Timeout-Seconds` bounds the wait for the app's metrics.
 */
export async function serveExposition(exposition: MetricsExposition, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const body = await exposition.render(req.headers["x-prometheus-scrape-timeout-seconds"]);
  const head = req.method === "HEAD";
  res.writeHead(200, { "content-type": exposition.contentType, "content-length": Buffer.byteLength(body) });
  res.end(head ? undefined : body);
}

export class MetricsServer {
  private readonly server: Server;
  /**
   * Null when bound beyond loopback: the operator published the metrics to the network, and a
   * Prometheus there may name this host by any DNS name, which we cannot know.
   */
  private hosts: HostAllowList | null = null;

  /** `refused` counts requests refused for their Host (meshproxy_admin_rejected_total). */
  constructor(exposition: MetricsExposition, private readonly refused?: Counter<"listener" | "reason">) {
    this.server = createServer((req, res) => {
      const path = (req.url ?? "/").split("?")[0]!;
      const wrongHost = this.hosts ? checkHost(req, this.hosts) : null;
      if (wrongHost) {
        this.refused?.labels("metrics", wrongHost.reason).inc();
        return send(res, wrongHost.status, `${wrongHost.message}\n`, { connection: "close" });
      }
      if (!METRICS_PATHS.includes(path)) return send(res, 404, `no such endpoint: ${path}; metrics are at /metrics\n`);
      if (req.method !== "GET" && req.method !== "HEAD") return send(res, 405, "metrics are read with GET\n", { allow: "GET, HEAD" });
      serveExposition(exposition, req, res).catch((e: unknown) => send(res, 500, `rendering metrics failed: ${e instanceof Error ? e.message : String(e)}\n`));
    });
  }

  async listen(host: string, port: number): Promise<AddressInfo> {
    this.hosts = isLoopbackHost(host) ? new HostAllowList(host) : null;
    if (this.hosts) this.refused?.labels("metrics", "host").inc(0);
    return listenOn(this.server, host, port);
  }

  close(): void {
    this.server.close();
    this.server.closeAllConnections();
  }
}
