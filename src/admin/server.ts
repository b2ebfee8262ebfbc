// The admin HTTP server (loopback by default). It trusts anyone who can open a TCP connection to
// it, and so refuses what only a web browser would send: a Host that is not this listener's
// (DNS rebinding), and on mutations a cross-origin Origin or Sec-Fetch-Site or a form body (CSRF).
// Mutations are POST only: a GET to a mutating endpoint is refused, as Envoy does, so a stray
// browser prefetch cannot drain a proxy.
import { listenOn } from "../tcp/listen.js";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Metrics } from "../telemetry/metrics.js";
import type { Snapshot } from "../config/snapshot.js";
import type { ClusterStatus } from "../cluster/runtime.js";
import { MetricsExposition } from "../telemetry/merge.js";
import { serveExposition } from "../telemetry/metrics-server.js";
import { logRejection, parseLevel, silentLogger, type LevelControl, type Logger } from "../telemetry/log.js";
import { clustersJson, clustersText } from "./clusters.js";
import { certsJson } from "./certs.js";
import { BROWSER_REFUSALS, HostAllowList, checkHost, checkMutation, type Refused } from "../http/browser-guard.js";
import { RateLimitedWarning } from "../telemetry/rate-limited-log.js";
import type { Counter } from "prom-client";
import { TrafficWindow, type RequestReadings } from "../telemetry/traffic-window.js";
import { trafficDocument } from "./traffic.js";
import { PAGE_CSS, PAGE_HEADERS, PAGE_HTML, PAGE_ICON, PAGE_JS } from "./page.js";
import { changeSplit, SPLIT_RESULTS, writability } from "./splits.js";
import type { SplitWriter } from "../config/split-weights.js";

export interface AdminTarget {
  readonly isReady: boolean;
  readonly snapshot: Snapshot | null;
  readonly metrics: Metrics;
  /** A promise under -concurrency N: the primary asks its workers. */
  clusters(): readonly ClusterStatus[] | Promise<readonly ClusterStatus[]>;
  stop(): Promise<void>;
  /** The request totals the traffic page's figures come from; absent: metrics.http (this process's). */
  readonly requestReadings?: RequestReadings;
  /** POST /healthcheck/fail was called (and no /healthcheck/ok since). */
  readonly healthCheckFailed?: boolean;
  /** POST /healthcheck/fail (true) and /healthcheck/ok (false); absent: those answer 501. */
  setHealthCheckFailed?(failed: boolean): Promise<void>;
  /** Writes split weights through the control plane (POST /splits/<service>); null or absent: it cannot. */
  readonly splitWriter?: SplitWriter | null;
}

export interface AdminOptions {
  /** What /stats/prometheus serves; default the target's registry alone (no app metrics). */
  readonly exposition?: MetricsExposition;
  /** The root logger's level, for POST /logging; without it /logging answers 501. */
  readonly logLevel?: LevelControl;
  readonly log?: Logger;
}

type Handler = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

function send(res: ServerResponse, status: number, body: string, type = "text/plain; charset=utf-8"): void {
  res.writeHead(status, { "content-type": type, "content-length": Buffer.byteLength(body) });
  res.end(body);
}

function sendJson(res: ServerResponse, status: number, v: unknown): void {
  send(res, status, JSON.stringify(v, null, 2) + "\n", "application/json");
}

const PRIVATE_KEY_PEM = /-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----/;

/**
 * Drops key material wherever it is, not only where the Snapshot type says a key lives: a
 * control plane that put a key in another field (or a future field) must not leak it here.
 */
function redactKeys(key: string, value: unknown): unknown {
  if (key === "privateKeyPem") return "[redacted]";
  if (typeof value === "string" && PRIVATE_KEY_PEM.test(value)) return "[redacted]";
  return value;
}

/** The Snapshot as operators may see it: certificates yes, private keys never. */
export function redactedSnapshot(s: Snapshot): unknown {
  const v: unknown = JSON.parse(JSON.stringify(s, redactKeys));
  return v;
}

function sendAsset(res: ServerResponse, body: string, type: string): void {
  for (const [k, v] of Object.entries(PAGE_HEADERS)) res.setHeader(k, v);
  send(res, 200, body, type);
}

const SPLITS_PREFIX = "/splits/";

/** The <service> of /splits/<service>[?...], percent-decoded; "" when it does not decode. */
function decodeService(url: string): string {
  const path = url.split("?", 1)[0]!;
  try {
    return decodeURIComponent(path.slice(SPLITS_PREFIX.length));
  } catch {
    return "";
  }
}

function query(req: IncomingMessage): URLSearchParams {
  const u = req.url ?? "/";
  const i = u.indexOf("?");
  return new URLSearchParams(i < 0 ? "" : u.slice(i + 1));
}

export class AdminServer {
  private readonly server: Server;
  private readonly gets: Record<string, Handler>;
  private readonly posts: Record<string, Handler>;
  private readonly exposition: MetricsExposition;
  private readonly log: Logger;
  private hosts = new HostAllowList("127.0.0.1");
  private readonly refusedLog: RateLimitedWarning;
  private readonly traffic: TrafficWindow;
  private readonly splitChanges: Counter<"result">;

  constructor(
    private readonly target: AdminTarget,
    private readonly opts: AdminOptions = {},
  ) {
    this.log = opts.log ?? silentLogger;
    this.exposition = opts.exposition ?? new MetricsExposition(target.metrics.registry, null, this.log);
    this.gets = {
      // Envoy's /ready names the state: DRAINING after /healthcheck/fail.
      "/ready": (_q, res) => (target.isReady ? send(res, 200, "LIVE\n") : send(res, 503, target.healthCheckFailed ? "DRAINING\n" : "NOT READY\n")),
      "/stats/prometheus": (q, res) => serveExposition(this.exposition, q, res),
      "/metrics": (q, res) => serveExposition(this.exposition, q, res),
      "/config_dump": (_q, res) => {
        const s = target.snapshot;
        sendJson(res, s ? 200 : 503, s ? redactedSnapshot(s) : { error: "no snapshot yet" });
      },
      "/clusters": async (q, res) => {
        const clusters = await target.clusters();
        if (query(q).get("format") === "json") return sendJson(res, 200, clustersJson(clusters));
        send(res, 200, clustersText(clusters));
      },
      "/ui": (_q, res) => sendAsset(res, PAGE_HTML, "text/html; charset=utf-8"),
      "/ui/app.js": (_q, res) => sendAsset(res, PAGE_JS, "text/javascript; charset=utf-8"),
      "/ui/style.css": (_q, res) => sendAsset(res, PAGE_CSS, "text/css; charset=utf-8"),
      "/ui/icon.svg": (_q, res) => sendAsset(res, PAGE_ICON, "image/svg+xml"),
      "/traffic.json": (_q, res) => {
        res.setHeader("cache-control", "no-store");
        sendJson(res, 200, trafficDocument(target.snapshot, this.traffic, writability(target)));
      },
      "/certs": (_q, res) => {
        const s = target.snapshot;
        if (!s) return sendJson(res, 503, { error: "no snapshot yet: no certificates in use" });
        sendJson(res, 200, certsJson(s));
      },
    };
    this.posts = {
      "/drain": (_q, res) => {
        send(res, 202, "draining\n");
        target.stop().catch(logRejection(this.log, "drain requested through the admin API"));
      },
      // Envoy's name, which Job/CronJob sidecar-stoppers and preStop hooks call
      // (`curl -X POST localhost:19000/quitquitquit`): the same graceful drain and exit.
      "/quitquitquit": (_q, res) => {
        send(res, 202, "draining\n");
        target.stop().catch(logRejection(this.log, "quitquitquit requested through the admin API"));
      },
      "/logging": (q, res) => this.logging(q, res),
      // Envoy's: fail the health check (ready 503, state DRAINING) so load balancers and the
      // catalog stop sending traffic before a shutdown; listeners stay open, nothing exits.
      "/healthcheck/fail": (q, res) => this.healthCheck(q, res, true),
      "/healthcheck/ok": (q, res) => this.healthCheck(q, res, false),
    };
    this.server = createServer((req, res) => {
      this.handle(req, res).catch(logRejection(this.log, "admin request"));
    });
    this.refusedLog = new RateLimitedWarning(this.log, "admin request refused as coming from a web page");
    this.traffic = new TrafficWindow(target.requestReadings ?? target.metrics.http);
    this.splitChanges = target.metrics.adminSplitChanges;
    for (const r of SPLIT_RESULTS) this.splitChanges.labels(r).inc(0);
    for (const reason of BROWSER_REFUSALS) target.metrics.adminRejected.labels("admin", reason).inc(0);
  }

  /** The POST handler of a path: an exact one, or /splits/<service>. */
  private postFor(path: string): Handler | undefined {
    return this.posts[path] ?? (path.startsWith(SPLITS_PREFIX) ? this.splits : undefined);
  }

  /** POST /splits/<service>?weights=v1:90,v2:10: new service-splitter weights, through the control plane. */
  private readonly splits: Handler = async (req, res) => {
    const service = decodeService(req.url ?? "");
    const r = await changeSplit(this.target, service, query(req).get("weights"));
    this.splitChanges.labels(r.result).inc();
    const fields = { service: service.slice(0, 100), result: r.result, message: r.message, peer: req.socket.remoteAddress };
    if (r.result === "stored") this.log.info("split weights change stored", fields);
    else this.log.info("split weights change refused", fields);
    sendJson(res, r.status, { service, result: r.result, message: r.message, ...(r.weights ? { weights: r.weights } : {}) });
  };

  private refuse(req: IncomingMessage, res: ServerResponse, path: string, r: Refused): void {
    this.target.metrics.adminRejected.labels("admin", r.reason).inc();
    this.refusedLog.note({ method: req.method, path, reason: r.reason, host: req.headers.host, origin: req.headers.origin, peer: req.socket.remoteAddress });
    // Connection: close: a browser that was refused once has no business reusing the connection.
    res.setHeader("connection", "close");
    send(res, r.status, `${r.message}\n`);
  }

  private async healthCheck(req: IncomingMessage, res: ServerResponse, failed: boolean): Promise<void> {
    const set = this.target.setHealthCheckFailed?.bind(this.target);
    if (!set) return send(res, 501, "this proxy has no health check to fail\n");
    const was = this.target.healthCheckFailed ?? false;
    const fields = { peer: req.socket.remoteAddress };
    try {
      await set(failed);
    } catch (e) {
      // The proxy's own state changed (/ready, the server state); the catalog's may lag: the next heartbeat retries.
      this.log.warn("could not update the registered health check; the next heartbeat retries", { error: e instanceof Error ? e.message : String(e) });
    }
    if (failed && !was) this.log.warn("health check failed through the admin API: /ready answers 503 and the state is DRAINING; listeners stay open", fields);
    else if (!failed && was) this.log.info("health check passing again through the admin API", fields);
    send(res, 200, "OK\n");
  }

  /** POST /logging?level=debug sets the level of every logger; without ?level reports it. */
  private logging(req: IncomingMessage, res: ServerResponse): void {
    const control = this.opts.logLevel;
    if (!control) return send(res, 501, "this proxy was started without a run-time log level control\n");
    const raw = query(req).get("level");
    if (raw === null) return send(res, 200, `level: ${control.level()}\n`);
    const level = parseLevel(raw);
    if (!level) return send(res, 400, `level "${raw}": want trace, debug, info, warn or error, e.g. POST /logging?level=debug\n`);
    const was = control.level();
    control.setLevel(level);
    this.log.info("log level changed", { from: was, to: level });
    send(res, 200, `level: ${level}\n`);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? "/").split("?")[0]!;
    if (this.log.enabled("debug")) this.log.debug("admin request", { method: req.method, path });
    const wrongHost = checkHost(req, this.hosts);
    if (wrongHost) return this.refuse(req, res, path, wrongHost);
    try {
      if (req.method === "GET" || req.method === "HEAD") {
        const h = this.gets[path];
        if (h) return await h(req, res);
        if (this.postFor(path)) return send(res, 405, `${path} changes state: use POST\n`);
        return send(res, 404, `no such admin endpoint: ${path}\n`);
      }
      if (req.method === "POST") {
        const h = this.postFor(path);
        if (!h) return send(res, this.gets[path] ? 405 : 404, `no POST endpoint: ${path}\n`);
        const crossOrigin = checkMutation(req);
        if (crossOrigin) return this.refuse(req, res, path, crossOrigin);
        return await h(req, res);
      }
      send(res, 405, "method not allowed\n");
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      if (res.headersSent) return void res.destroy();
      send(res, 500, `${path}: ${msg}\n`);
    }
  }

  async listen(host: string, port: number): Promise<AddressInfo> {
    this.hosts = new HostAllowList(host);
    this.traffic.start();
    return listenOn(this.server, host, port);
  }

  /** The bound address, once listening. */
  address(): AddressInfo | null {
    const a = this.server.address();
    return a !== null && typeof a === "object" ? a : null;
  }

  close(): void {
    this.traffic.stop();
    this.refusedLog.close();
    this.server.close();
    this.server.closeAllConnections();
  }
}
