// The proxy's own HTTP endpoints (admin API, metrics listener) against a web browser on the same
// host. Such a listener trusts whoever can open a TCP connection to it, and a browser can: a page
// on evil.example that re-resolves its own name to 127.0.0.1 (DNS rebinding) reads responses as
// same-origin, and any page can send a "simple" cross-origin POST without a CORS preflight. Both
// are refused here; curl, Prometheus and kubelet probes send none of the headers that trip them.
import { isIP } from "node:net";
import type { IncomingHttpHeaders } from "node:http";

/** Only the headers are read. */
interface Request {
  readonly headers: IncomingHttpHeaders;
}

export type BrowserRefusal = "host" | "origin" | "sec_fetch_site" | "content_type";

export const BROWSER_REFUSALS: readonly BrowserRefusal[] = ["host", "origin", "sec_fetch_site", "content_type"];

export interface Refused {
  readonly status: number;
  readonly reason: BrowserRefusal;
  readonly message: string;
}

/** The Content-Types a page may POST cross-origin without a preflight (Fetch's CORS-safelisted ones). */
const SIMPLE_CONTENT_TYPES = new Set(["application/x-www-form-urlencoded", "multipart/form-data", "text/plain"]);

/** Splits a Host header into its lowercased name; null when it is not a well-formed host[:port]. */
export function hostName(host: string): string | null {
  const h = host.trim().toLowerCase();
  let name: string;
  let rest: string;
  if (h.startsWith("[")) {
    const end = h.indexOf("]");
    if (end < 0) return null;
    name = h.slice(1, end);
    rest = h.slice(end + 1);
    if (isIP(name) !== 6) return null;
  } else {
    const colon = h.indexOf(":");
    name = colon < 0 ? h : h.slice(0, colon);
    rest = colon < 0 ? "" : h.slice(colon);
  }
  if (rest !== "" && !/^:[0-9]{1,5}$/.test(rest)) return null;
  return name === "" ? null : name;
}

export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || (isIP(h) === 4 && h.startsWith("127."));
}

/**
 * Which Host headers a listener bound at `boundHost` answers. An IP literal is always fine: a
 * rebinding attack needs a name the attacker controls, and a page whose origin is an address is
 * either this listener itself or another origin the browser keeps apart. Names are limited to
 * `localhost` (RFC 6761: browsers resolve it to loopback themselves) and the name the listener
 * was bound with. The port is not compared: `kubectl port-forward` and SSH tunnels change it.
 */
export class HostAllowList {
  private readonly names: ReadonlySet<string>;

  constructor(boundHost: string) {
    const bound = boundHost.toLowerCase();
    this.names = new Set(isIP(bound) === 0 && bound !== "" ? ["localhost", bound] : ["localhost"]);
  }

  allows(host: string): boolean {
    const name = hostName(host);
    if (name === null) return false;
    return isIP(name) !== 0 || this.names.has(name);
  }

  describe(): string {
    return [...this.names].join(", ");
  }
}

function header(req: Request, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v.join(",") : v;
}

/** Refuses a request whose Host is not one of this listener's names (DNS rebinding). */
export function checkHost(req: Request, allowed: HostAllowList): Refused | null {
  // Every browser sends Host; only a non-browser HTTP/1.0 client can omit it (node refuses
  // HTTP/1.1 without one with 400 before we see it).
  const host = req.headers.host;
  if (host === undefined || allowed.allows(host)) return null;
  return {
    status: 421,
    reason: "host",
    message: `Host "${host}" is not an address of this listener: requests must name it by IP address or as ${allowed.describe()} (a browser page under another name may be a DNS-rebinding attack)`,
  };
}

/**
 * Refuses a state-changing request a page on another origin could have sent: cross-site or
 * same-site per Sec-Fetch-Site, an Origin other than this listener's own, or a body type a form
 * or a preflight-free fetch() can carry. Call it after checkHost.
 */
export function checkMutation(req: Request): Refused | null {
  const site = header(req, "sec-fetch-site");
  if (site !== undefined && site !== "same-origin" && site !== "none") {
    return { status: 403, reason: "sec_fetch_site", message: `Sec-Fetch-Site "${site}": state-changing admin requests are refused from web pages; use curl or another non-browser client` };
  }
  const origin = header(req, "origin");
  if (origin !== undefined && !sameOrigin(origin, req.headers.host)) {
    return { status: 403, reason: "origin", message: `Origin "${origin}" is not this admin API: state-changing requests from other web origins are refused (CSRF); use curl or another non-browser client` };
  }
  const type = header(req, "content-type");
  if (type !== undefined && SIMPLE_CONTENT_TYPES.has(type.split(";", 1)[0]!.trim().toLowerCase())) {
    return { status: 415, reason: "content_type", message: `Content-Type "${type}": admin POSTs take no body, and form or text/plain bodies are refused because any web page can send them; send the request without a body (curl -X POST)` };
  }
  return null;
}

function sameOrigin(origin: string, host: string | undefined): boolean {
  if (host === undefined) return false;
  try {
    const o = new URL(origin);
    // An Origin header is exactly scheme://host[:port]; anything more is not one a browser sent.
    return o.origin === origin && o.protocol === "http:" && o.host === new URL(`http://${host}`).host;
  } catch {
    return false; // "null" (sandboxed frames, file: pages) and anything unparsable
  }
}
