// The client side of a Connect-native service for HTTP: an undici Dispatcher (for `fetch`,
// `undici.request`, anything that takes a dispatcher) that sends `https://<service>.service.consul`
// requests into the mesh. Per request, the same stages as the sidecar's outbound HTTP: the
// upstream's routes and splits (logical), a host chosen by the cluster's balancer among hosts that
// are healthy and not ejected, with failover (concrete.ts selectHost), and one attempt on that
// host's pooled mTLS connection, whose server must present the service's SPIFFE ID (cluster/pools.ts).
import { Dispatcher } from "undici";
import type { UpstreamListener } from "../config/snapshot.js";
import type { ClusterHost, ClusterRuntime } from "../cluster/runtime.js";
import { isConnectFailure } from "../cluster/pools.js";
import { selectHost } from "../outbound/concrete.js";
import { pickLeg, type OutboundHttpState } from "../outbound/http-router.js";
import { parseRequestTarget } from "../http/request-target.js";
import { serviceOfOrigin } from "./names.js";
import { NoHealthyUpstreamError } from "./errors.js";

/** What the dispatcher needs from its Service: upstreams resolved on first use, and the live clusters. */
export interface UpstreamResolver {
  /** The upstream as the current Snapshot has it, or null when it was never asked for. */
  known(service: string): ResolvedUpstream | null;
  /** Asks the control plane for the service and waits for a Snapshot that has it. */
  resolve(service: string): Promise<ResolvedUpstream>;
  readonly clusters: ReadonlyMap<string, ClusterRuntime>;
}

export interface ResolvedUpstream {
  readonly listener: UpstreamListener;
  /** Routes of an http upstream; null for tcp (every request to the listener's cluster). */
  readonly http: OutboundHttpState | null;
}


/**
 * A failed connect is retried once on another host, as the proxy's default route does (Envoy has
 * no retries without a policy; Consul's built-in proxy and Go library none at all): no byte of the
 * request left, so any method is safe. Only bodies that can be sent twice are retried.
 */
const CONNECT_RETRIES = 1;

type Headers = Dispatcher.DispatchOptions["headers"] | undefined;

export class MeshDispatcher extends Dispatcher {
  private closed = false;

  constructor(private readonly upstreams: UpstreamResolver) {
    super();
  }

  override dispatch(opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    let service: string;
    try {
      if (this.closed) throw new Error("the mesh dispatcher is closed (its Service was closed)");
      service = serviceOfOrigin(opts.origin);
    } catch (e) {
      fail(handler, e instanceof Error ? e : new Error(String(e)));
      return true;
    }
    const known = this.upstreams.known(service);
    if (known) this.route(known, service, opts, handler);
    else {
      this.upstreams.resolve(service).then(
        (u) => this.route(u, service, opts, handler),
        (e: unknown) => fail(handler, e instanceof Error ? e : new Error(String(e))),
      );
    }
    return true;
  }

  private route(u: ResolvedUpstream, service: string, opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): void {
    const clusterName = u.http ? this.clusterByRoute(u.http, opts) : u.listener.cluster;
    if (clusterName === null) return fail(handler, new NoHealthyUpstreamError(`no route of upstream "${service}" matches ${opts.method} ${opts.path}`));
    const primary = this.upstreams.clusters.get(clusterName);
    if (!primary) return fail(handler, new NoHealthyUpstreamError(`upstream "${service}": cluster "${clusterName}" is not configured`));
    const request = { ...opts, headers: withHost(opts.headers, `${service}.service.consul`) };
    const replayable = opts.body === undefined || opts.body === null || typeof opts.body === "string" || opts.body instanceof Uint8Array;
    new Attempt(primary, this.upstreams.clusters, request, handler, replayable ? CONNECT_RETRIES : 0).start();
  }

  /** The logical stage: the first matching route, then one draw among its split legs. */
  private clusterByRoute(http: OutboundHttpState, opts: Dispatcher.DispatchOptions): string | null {
    const target = parseRequestTarget(opts.path);
    const path = target.ok ? target.path : opts.path;
    const query = target.ok && target.query.length > 1 ? target.query.slice(1) : "";
    const headers = headerLookup(opts.headers);
    const route = http.match({ method: opts.method, path, query: query ? new URLSearchParams(query) : null, header: headers });
    if (!route) return null;
    return route.route.action.splits[pickLeg(route, Math.random())]?.cluster ?? null;
  }

  override close(): Promise<void>;
  override close(callback: () => void): void;
  override close(callback?: () => void): Promise<void> | void {
    // The pools belong to the Service (shared with dial()); closing the dispatcher only stops new requests.
    this.closed = true;
    if (callback) return void queueMicrotask(callback);
    return Promise.resolve();
  }

  override destroy(): Promise<void>;
  override destroy(err: Error | null): Promise<void>;
  override destroy(callback: () => void): void;
  override destroy(err: Error | null, callback: () => void): void;
  override destroy(a?: Error | null | (() => void), b?: () => void): Promise<void> | void {
    this.closed = true;
    const callback = typeof a === "function" ? a : b;
    if (callback) return void queueMicrotask(callback);
    return Promise.resolve();
  }
}

/**
 * One request through the concrete and endpoint stages. It keeps the host's books as the proxy's
 * endpoint stage does (active count for least_request, the status for outlier detection, the
 * response time for peak_ewma) and retries a failed connect on a host not tried yet.
 */
class Attempt implements Dispatcher.DispatchHandler {
  private cluster!: ClusterRuntime;
  private host!: ClusterHost;
  private tried: Set<string> | null = null;
  private responded = false;
  private active = false;
  private sent = 0;

  constructor(
    private readonly primary: ClusterRuntime,
    private readonly clusters: ReadonlyMap<string, ClusterRuntime>,
    private readonly opts: Dispatcher.DispatchOptions,
    private readonly inner: Dispatcher.DispatchHandler,
    private retriesLeft: number,
  ) {}

  start(): void {
    const sel = selectHost(this.primary, this.clusters, this.tried === null ? {} : { exclude: this.tried }, false);
    if (sel === null) return fail(this.inner, new NoHealthyUpstreamError(this.primary.describeUnavailable()));
    this.cluster = sel.cluster;
    this.host = sel.host;
    this.cluster.begin(this.host);
    this.active = true;
    this.sent = this.cluster.learnsLatency ? performance.now() : 0;
    const pool = this.cluster.poolFor(this.host);
    // A handler written to undici's newer interface is passed on as is: its host is chosen the
    // same way, only the per-request books and the connect retry need the classic callbacks.
    if (this.inner.onRequestStart !== undefined) {
      this.finish();
      pool.dispatch(this.opts, this.inner);
      return;
    }
    pool.dispatch(this.opts, this);
  }

  private finish(): void {
    if (!this.active) return;
    this.active = false;
    this.cluster.end(this.host);
  }

  onConnect(abort: (err?: Error) => void): void {
    this.inner.onConnect?.(abort);
  }

  onResponseStarted(): void {
    this.inner.onResponseStarted?.();
  }

  onHeaders(statusCode: number, headers: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode >= 200 && !this.responded) {
      this.responded = true;
      this.cluster.reportResult(this.host, { status: statusCode });
      if (this.sent > 0) this.cluster.observeLatency(this.host, performance.now() - this.sent);
    }
    return this.inner.onHeaders?.(statusCode, headers, resume, statusText) ?? true;
  }

  onData(chunk: Buffer): boolean {
    return this.inner.onData?.(chunk) ?? true;
  }

  onBodySent(chunkSize: number, totalBytesSent: number): void {
    this.inner.onBodySent?.(chunkSize, totalBytesSent);
  }

  onUpgrade(statusCode: number, headers: Buffer[] | string[] | null, socket: import("node:stream").Duplex): void {
    this.finish();
    this.inner.onUpgrade?.(statusCode, headers, socket);
  }

  onComplete(trailers: string[] | null): void {
    this.finish();
    this.inner.onComplete?.(trailers);
  }

  onError(err: Error): void {
    this.finish();
    if (!this.responded) {
      this.cluster.reportResult(this.host, { localOriginFailure: true });
      if (isConnectFailure(err) && this.retriesLeft > 0) {
        this.retriesLeft--;
        (this.tried ??= new Set()).add(this.host.key);
        return this.start();
      }
    }
    fail(this.inner, err);
  }
}

function fail(handler: Dispatcher.DispatchHandler, err: Error): void {
  if (handler.onResponseError) {
    handler.onResponseError(
      {
        abort: () => {},
        pause: () => {},
        resume: () => {},
        aborted: false,
        paused: false,
        reason: err,
      },
      err,
    );
    return;
  }
  if (handler.onError) return handler.onError(err);
  throw err;
}

/** The request's Host is the name the app wrote, not the instance's address (as a sidecar passes it on). */
function withHost(headers: Headers, host: string): NonNullable<Headers> {
  if (headers === undefined || headers === null) return { host };
  if (Array.isArray(headers)) {
    for (let i = 0; i < headers.length; i += 2) if (String(headers[i]).toLowerCase() === "host") return headers;
    return [...headers, "host", host];
  }
  if (isRecord(headers)) {
    for (const k of Object.keys(headers)) if (k.toLowerCase() === "host") return headers;
    return { ...headers, host };
  }
  return headers;
}

function isRecord(h: Headers): h is Record<string, string | string[] | undefined> {
  return typeof h === "object" && h !== null && !Array.isArray(h) && !(Symbol.iterator in h);
}

/** Header lookup for route matching, over the shapes undici accepts. */
function headerLookup(headers: Headers): (name: string) => string | undefined {
  const map = new Map<string, string>();
  const add = (k: unknown, v: unknown) => {
    if (typeof k !== "string" && !Buffer.isBuffer(k)) return;
    const key = k.toString().toLowerCase();
    const value = typeof v === "string" || Buffer.isBuffer(v) ? v.toString() : Array.isArray(v) ? v.filter((x) => typeof x === "string").join(", ") : null;
    if (value === null) return;
    const prev = map.get(key);
    map.set(key, prev === undefined ? value : `${prev}, ${value}`);
  };
  if (Array.isArray(headers)) {
    for (let i = 0; i + 1 < headers.length; i += 2) add(headers[i], headers[i + 1]);
  } else if (headers && isRecord(headers)) {
    for (const [k, v] of Object.entries(headers)) add(k, v);
  } else if (headers && Symbol.iterator in headers) {
    for (const pair of headers) if (Array.isArray(pair)) add(pair[0], pair[1]);
  }
  return (name) => map.get(name);
}
