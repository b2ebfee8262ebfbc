// A stand-in Consul agent for the canary: config entries with Consul's ModifyIndex and
// check-and-set (`PUT /v1/config?cas=<index>` answers true or false; cas=0 creates only), and the
// catalog's connect proxies (`/v1/catalog/services?filter=...`, `/v1/catalog/service/<name>`).
// It can go down and come back on the same port, as an agent restart does. The full agent double
// (test/helpers/consul-agent.ts) has no config-entry writes; this one has only what a rollout needs.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { once } from "node:events";
import type { AddressInfo, Socket } from "node:net";
import type { Teardown } from "../helpers/mesh.js";

export interface ProxyInstance {
  readonly id: string;
  readonly service: string;
  readonly address: string;
  /** Proxy.Config.envoy_prometheus_bind_addr, or none. */
  readonly metricsBind?: string;
}

export interface RecordedCall {
  readonly method: string;
  readonly url: string;
  readonly answer: unknown;
}

export class ConfigAgent {
  readonly calls: RecordedCall[] = [];
  readonly proxies: ProxyInstance[] = [];
  private readonly entries = new Map<string, Record<string, unknown>>();
  private index = 100;
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  port = 0;
  /** Runs once just before the next PUT is applied: a human's edit landing between a read and a write. */
  beforeNextPut: (() => void) | null = null;
  /** When set, PUTs are answered with this status and text instead of being applied. */
  refusePuts: { readonly status: number; readonly text: string } | null = null;

  static async start(t: Teardown): Promise<ConfigAgent> {
    const a = new ConfigAgent();
    await a.up();
    t.teardown(() => a.down());
    return a;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  set(entry: Record<string, unknown>): void {
    const key = `${String(entry["Kind"])}/${String(entry["Name"])}`;
    const old = this.entries.get(key);
    this.index++;
    this.entries.set(key, { ...entry, CreateIndex: old?.["CreateIndex"] ?? this.index, ModifyIndex: this.index });
  }

  get(kind: string, name: string): Record<string, unknown> | undefined {
    return this.entries.get(`${kind}/${name}`);
  }

  async up(): Promise<void> {
    const server = createServer((req, res) => this.handle(req, res));
    server.on("connection", (s: Socket) => {
      this.sockets.add(s);
      s.once("close", () => this.sockets.delete(s));
    });
    server.listen(this.port, "127.0.0.1");
    await once(server, "listening");
    this.port = (server.address() as AddressInfo).port;
    this.server = server;
  }

  /** The agent goes away: connections are cut and new ones refused until up(). */
  async down(): Promise<void> {
    const s = this.server;
    if (!s) return;
    this.server = null;
    for (const sock of this.sockets) sock.destroy();
    await new Promise<void>((r) => s.close(() => r()));
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    let body = "";
    req.setEncoding("utf8").on("data", (d: string) => (body += d));
    req.on("end", () => {
      const url = new URL(req.url ?? "/", "http://agent");
      const send = (status: number, v: unknown) => {
        this.calls.push({ method: req.method ?? "", url: req.url ?? "", answer: v });
        res.writeHead(status, { "content-type": "application/json", "x-consul-index": String(this.index) });
        res.end(typeof v === "string" ? v : JSON.stringify(v));
      };
      const entry = /^\/v1\/config\/([^/]+)\/([^/]+)$/.exec(url.pathname);
      if (req.method === "GET" && entry) {
        const e = this.entries.get(`${entry[1]}/${decodeURIComponent(entry[2]!)}`);
        return e ? send(200, e) : send(404, `Config entry not found for "${entry[1]}" / "${entry[2]}"`);
      }
      if (req.method === "PUT" && url.pathname === "/v1/config") {
        const hook = this.beforeNextPut;
        this.beforeNextPut = null;
        hook?.();
        if (this.refusePuts) return send(this.refusePuts.status, this.refusePuts.text);
        const e = JSON.parse(body) as Record<string, unknown>;
        const cur = this.entries.get(`${String(e["Kind"])}/${String(e["Name"])}`);
        const cas = url.searchParams.get("cas");
        if (cas !== null && Number(cas) !== Number(cur?.["ModifyIndex"] ?? 0)) return send(200, false);
        this.set(e);
        return send(200, true);
      }
      if (req.method === "GET" && url.pathname === "/v1/catalog/services") {
        const out: Record<string, string[]> = {};
        if (url.searchParams.get("filter") !== 'ServiceKind == "connect-proxy"') return send(400, "this stand-in answers only the connect-proxy filter");
        for (const p of this.proxies) out[p.service] = [];
        return send(200, out);
      }
      const svc = /^\/v1\/catalog\/service\/([^/]+)$/.exec(url.pathname);
      if (req.method === "GET" && svc) {
        return send(
          200,
          this.proxies
            .filter((p) => p.service === svc[1])
            .map((p) => ({ Node: "node1", Address: p.address, ServiceID: p.id, ServiceName: p.service, ServiceKind: "connect-proxy", ServiceAddress: p.address, ServiceProxy: { Config: p.metricsBind ? { envoy_prometheus_bind_addr: p.metricsBind } : {} } })),
        );
      }
      send(404, "not found");
    });
  }
}
