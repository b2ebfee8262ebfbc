// The client side of a Connect-native service for HTTP: an undici Dispatcher (for `fetch`,
// `undici.request`, anything that takes a dispatcher) that sends `https://<service>.service.consul`
// requests into the mesh. It only turns the undici call into the router's Exchange (route match,
// split leg, header mutations, prefix rewrite, body buffered for retries); from there it is the
// sidecar's own code (outbound/http-router.ts forward): the request and pending breakers, hosts
// from the concrete stage, attempts on the endpoint stage over the host's pooled mTLS connection
// (whose server must present the service's SPIFFE ID), the route's retries and timeouts, and
// response header mutations. Only the place the answer goes differs (response-sink.ts).
import { Dispatcher } from "undici";
import type { UpstreamListener } from "../config/snapshot.js";
import type { ClusterRuntime } from "../cluster/runtime.js";
import { requestHash } from "../cluster/balancer.js";
import { clusterWithHosts } from "../outbound/concrete.js";
import { pickLeg, mutateRequestHeaders, upstreamPath, RETRY_BUFFER_LIMIT, type HttpRouter, type OutboundHttpState, type RequestRecord } from "../outbound/http-router.js";
import { parseRequestTarget, refusalDetail } from "../http/request-target.js";
import { Cancel } from "../http/compat.js";
import { endToEndCopy, type HeaderRecord } from "../http/headers.js";
import { LazyRequestView } from "../http/route-match.js";
import { targetOfOrigin, upstreamKey, type MeshTarget } from "./names.js";
import { MeshNameError, NoHealthyUpstreamError } from "./errors.js";
import { HandlerSink, failHandler } from "./response-sink.js";
import type { NativeObservers } from "./observe.js";

/** What the dispatcher needs from its Service: upstreams resolved on first use, and the live clusters. */
export interface UpstreamResolver {
  /** The upstream as the current Snapshot has it, or null when it was never asked for. */
  known(target: MeshTarget): ResolvedUpstream | null;
  /** Asks the control plane for the service (in its datacenter) and waits for a Snapshot that has it. */
  resolve(target: MeshTarget): Promise<ResolvedUpstream>;
  readonly clusters: ReadonlyMap<string, ClusterRuntime>;
}

export interface ResolvedUpstream {
  readonly listener: UpstreamListener;
  /** The upstream's routes; a tcp upstream (or one without routes) gets the default route (service.ts). */
  readonly http: OutboundHttpState;
}

type Headers = Dispatcher.DispatchOptions["headers"] | undefined;

export class MeshDispatcher extends Dispatcher {
  private closed = false;

  constructor(
    private readonly upstreams: UpstreamResolver,
    private readonly router: HttpRouter,
    private readonly obs: NativeObservers,
  ) {
    super();
  }

  override dispatch(opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    let target: MeshTarget & { readonly host: string };
    try {
      if (this.closed) throw new Error("the mesh dispatcher is closed (its Service was closed)");
      target = targetOfOrigin(opts.origin);
    } catch (e) {
      failHandler(handler, e instanceof Error ? e : new Error(String(e)));
      return true;
    }
    const known = this.upstreams.known(target);
    const service = upstreamKey(target.service, target.datacenter);
    if (known) this.route(known, service, target.host, opts, handler);
    else {
      this.upstreams.resolve(target).then(
        (u) => this.route(u, service, target.host, opts, handler),
        (e: unknown) => failHandler(handler, e instanceof Error ? e : new Error(String(e))),
      );
    }
    return true;
  }

  /** `service` names the upstream in errors (`db`, `db.service.dc2`); `host` is what the app wrote. */
  private route(u: ResolvedUpstream, service: string, host: string, opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): void {
    const state = u.http;
    const target = parseRequestTarget(opts.path);
    // The same refusal a sidecar gives (meshproxy_outbound_rejected_total), as an error: no upstream saw it.
    if (!target.ok) {
      this.router.refused("invalid_request_target", service, opts.method, opts.path, target.reason);
      return failHandler(handler, new MeshNameError(`${opts.method} ${opts.path.slice(0, 256)}: ${refusalDetail(target)}`));
    }
    const headers = requestHeaders(opts.headers, host);
    const view = new LazyRequestView(opts.method, target.path, target.query, (name) => {
      const v = headers[name];
      return Array.isArray(v) ? v.join(",") : v;
    });
    const c = state.match(view);
    if (c === null) return failHandler(handler, new NoHealthyUpstreamError(`no route of upstream "${service}" matches ${opts.method} ${target.path}`));
    const leg = c.route.action.splits[pickLeg(c, Math.random())]!;
    const primary = state.clusters.get(leg.cluster);
    if (!primary) return failHandler(handler, new NoHealthyUpstreamError(`upstream "${service}": cluster "${leg.cluster}" is not configured`));
    // No instance at all: an error the app can tell apart (the router would answer 503 UH).
    if (clusterWithHosts(primary, state.clusters, undefined, false) === null) return failHandler(handler, new NoHealthyUpstreamError(primary.describeUnavailable()));
    mutateRequestHeaders(c, leg, headers);
    const hashPolicies = primary.config.lb.hashPolicies;
    const hash =
      hashPolicies.length > 0 ? requestHash(hashPolicies, { header: view.header, cookie: (n) => cookie(view.header("cookie"), n), query: (n) => view.query?.get(n) ?? undefined, sourceIp: "" }) : undefined;
    // A body that can be sent twice is retried (the sidecar buffers up to the same limit); a stream is not.
    const body = opts.body ?? null;
    const buffered = typeof body === "string" ? Buffer.from(body) : body instanceof Uint8Array ? Buffer.from(body.buffer, body.byteOffset, body.byteLength) : null;
    const canRetry = body === null || (buffered !== null && buffered.length <= RETRY_BUFFER_LIMIT);
    const clientGone = new Cancel();
    const res = new HandlerSink(handler, clientGone);
    const rec: RequestRecord = { start: performance.now(), startTime: Date.now(), status: 0, flag: "-", attempts: 0 };
    this.obs.outboundStart(rec, state.upstream, primary.config.service, opts.method, target.path, headers);
    this.router
      .forward({ state, route: c, leg, primary, method: opts.method, path: upstreamPath(c, target.path, target.query), headers, body: buffered ?? body, canRetry, hash, res, clientGone }, rec)
      .catch((e: unknown) => res.fail(e instanceof Error ? e : new Error(String(e))))
      .finally(() => this.obs.outboundEnd(rec, state.upstream, opts.method, opts.path, headers));
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

function cookie(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(";")) {
    const i = part.indexOf("=");
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}

/**
 * The request's headers for the upstream, over the shapes undici accepts: lower-case names,
 * hop-by-hop fields dropped (as a sidecar drops them), and the Host the app wrote (the service's
 * name, not the instance's address, as a sidecar passes it on).
 */
function requestHeaders(headers: Headers, host: string): HeaderRecord {
  const raw: HeaderRecord = {};
  const add = (k: unknown, v: unknown): void => {
    if (typeof k !== "string" && !Buffer.isBuffer(k)) return;
    const key = k.toString().toLowerCase();
    const value = typeof v === "string" || Buffer.isBuffer(v) ? v.toString() : Array.isArray(v) ? v.filter((x) => typeof x === "string").join(", ") : null;
    if (value === null) return;
    const prev = raw[key];
    raw[key] = prev === undefined ? value : Array.isArray(prev) ? [...prev, value] : [prev, value];
  };
  if (Array.isArray(headers)) {
    for (let i = 0; i + 1 < headers.length; i += 2) add(headers[i], headers[i + 1]);
  } else if (headers && isRecord(headers)) {
    for (const [k, v] of Object.entries(headers)) add(k, v);
  } else if (headers && Symbol.iterator in headers) {
    for (const pair of headers) if (Array.isArray(pair)) add(pair[0], pair[1]);
  }
  const out = endToEndCopy(raw, true, true);
  if (raw["te"] === "trailers") out["te"] = "trailers";
  if (out["host"] === undefined) out["host"] = host;
  return out;
}

function isRecord(h: Headers): h is Record<string, string | string[] | undefined> {
  return typeof h === "object" && h !== null && !Array.isArray(h) && !(Symbol.iterator in h);
}
