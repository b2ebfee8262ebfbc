// The admin HTTP server (loopback by default). Mutations are POST only: a GET to a mutating
// endpoint is refused, as Envoy does, so a stray browser prefetch cannot drain a proxy.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Metrics } from "../telemetry/metrics.js";
import type { Snapshot } from "../config/snapshot.js";

export interface AdminTarget {
  readonly isReady: boolean;
  readonly snapshot: Snapshot | null;
  readonly metrics: Metrics;
  stop(): Promise<void>;
}

type Handler = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

function send(res: ServerResponse, status: number, body: string, type = "text/plain; charset=utf-8"): void {
  res.writeHead(status, { "content-type": type, "content-length": Buffer.byteLength(body) });
  res.end(body);
}

/** The Snapshot as operators may see it: private keys and certificate bodies never leave. */
export function redactedSnapshot(s: Snapshot): unknown {
  return {
    ...s,
    identity: { ...s.identity, privateKeyPem: "[redacted]" },
  };
}

export class AdminServer {
  private readonly server: Server;
  private readonly gets: Record<string, Handler>;
  private readonly posts: Record<string, Handler>;

  constructor(private readonly target: AdminTarget) {
    this.gets = {
      "/ready": (_q, res) => (target.isReady ? send(res, 200, "LIVE\n") : send(res, 503, "NOT READY\n")),
      "/stats/prometheus": (q, res) => this.prometheus(q, res),
      "/metrics": (q, res) => this.prometheus(q, res),
      "/config_dump": (_q, res) => {
        const s = target.snapshot;
        send(res, s ? 200 : 503, JSON.stringify(s ? redactedSnapshot(s) : { error: "no snapshot yet" }, null, 2) + "\n", "application/json");
      },
    };
    this.posts = {
      "/drain": (_q, res) => {
        send(res, 202, "draining\n");
        void target.stop();
      },
    };
    this.server = createServer((req, res) => void this.handle(req, res));
  }

  private async prometheus(_req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await this.target.metrics.registry.metrics();
    send(res, 200, body, this.target.metrics.registry.contentType);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? "/").split("?")[0]!;
    try {
      if (req.method === "GET" || req.method === "HEAD") {
        const h = this.gets[path];
        if (h) return await h(req, res);
        if (this.posts[path]) return send(res, 405, `${path} changes state: use POST\n`);
        return send(res, 404, `no such admin endpoint: ${path}\n`);
      }
      if (req.method === "POST") {
        const h = this.posts[path];
        if (h) return await h(req, res);
        return send(res, this.gets[path] ? 405 : 404, `no POST endpoint: ${path}\n`);
      }
      send(res, 405, "method not allowed\n");
    } catch (e) {
      send(res, 500, `${(e as Error).message}\n`);
    }
  }

  async listen(host: string, port: number): Promise<AddressInfo> {
    await new Promise<void>((resolve, reject) => {
      const onError = (e: Error) => reject(e);
      this.server.once("error", onError);
      this.server.listen({ host, port, exclusive: true }, () => {
        this.server.off("error", onError);
        resolve();
      });
    });
    return this.server.address() as AddressInfo;
  }

  close(): void {
    this.server.close();
    this.server.closeAllConnections();
  }
}
