// Raw HTTP/1.x over a plain or mTLS socket, for requests no well-behaved client would send
// (conflicting framing, bad methods, pipelining, dot segments) and for reading exactly what came
// back, interim responses included.
import { connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { hostPort } from "./mesh.js";

export type Opener = () => Promise<Socket | TLSSocket>;

/**
 * An app side that answers requests without bodies as their heads arrive: `answer` gets each
 * request's target, in order (pipelined requests included), and writes what it likes.
 */
export function onRequestTargets(s: Socket | TLSSocket, answer: (target: string) => void): void {
  let buf = "";
  s.on("data", (d: Buffer) => {
    buf += d.toString("latin1");
    for (let end = buf.indexOf("\r\n\r\n"); end >= 0; end = buf.indexOf("\r\n\r\n")) {
      const target = buf.slice(0, end).split(" ")[1] ?? "";
      buf = buf.slice(end + 4);
      answer(target);
    }
  });
}

/** A plain TCP connection to `addr` (an upstream listener). */
export function plainTo(addr: string): Opener {
  const { host, port } = hostPort(addr);
  return () =>
    new Promise((resolve, reject) => {
      const s = netConnect({ host, port });
      s.once("connect", () => {
        s.off("error", reject);
        resolve(s);
      });
      s.once("error", reject);
    });
}

/** An mTLS connection to `addr` (a public listener) presenting `leaf`; the server's certificate is not checked. */
export function tlsTo(addr: string, leaf: { certPem: string; keyPem: string }): Opener {
  const { host, port } = hostPort(addr);
  return () =>
    new Promise((resolve, reject) => {
      const s = tlsConnect({ host, port, cert: leaf.certPem, key: leaf.keyPem, rejectUnauthorized: false, ALPNProtocols: ["http/1.1"] });
      s.once("secureConnect", () => {
        s.off("error", reject);
        resolve(s);
      });
      s.once("error", reject);
    });
}

export interface RawResponse {
  readonly version: string;
  readonly status: number;
  /** Lower-case names; repeated fields joined with ", ". */
  readonly headers: Record<string, string>;
  readonly body: Buffer;
}

export interface Exchange {
  readonly data: Buffer;
  /** The server closed (or reset) the connection before the deadline. */
  readonly closed: boolean;
  readonly ms: number;
}

/**
 * Sends `payload` on a new connection and collects what comes back until the server closes,
 * `done(received)` says enough, or `timeoutMs` passes (then `closed` is false).
 */
export async function exchange(open: Opener, payload: string | Buffer, opts: { timeoutMs?: number; done?: (received: Buffer) => boolean } = {}): Promise<Exchange> {
  const s = await open();
  const t0 = performance.now();
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let settled = false;
    const finish = (closed: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ data: Buffer.concat(chunks), closed, ms: performance.now() - t0 });
    };
    const timer = setTimeout(() => finish(false), opts.timeoutMs ?? 10_000);
    s.on("data", (d: Buffer) => {
      chunks.push(d);
      if (opts.done?.(Buffer.concat(chunks))) finish(true);
    });
    s.on("error", () => finish(true));
    s.on("close", () => finish(true));
    s.write(payload);
  });
}

/**
 * Every complete response in `buf`, in order: framing by content-length, chunked encoding, or
 * (for the last one) the end of the data; 1xx, 204 and 304 have no body. A trailing partial
 * response is left out.
 */
export function parseResponses(buf: Buffer, opts: { closed?: boolean } = {}): RawResponse[] {
  const out: RawResponse[] = [];
  let at = 0;
  for (;;) {
    const end = buf.indexOf("\r\n\r\n", at);
    if (end < 0) return out;
    const head = buf.subarray(at, end).toString("latin1").split("\r\n");
    const m = /^(HTTP\/\d\.\d) (\d{3})/.exec(head[0] ?? "");
    if (!m) return out;
    const headers: Record<string, string> = {};
    for (const line of head.slice(1)) {
      const i = line.indexOf(":");
      if (i <= 0) continue;
      const k = line.slice(0, i).trim().toLowerCase();
      const v = line.slice(i + 1).trim();
      headers[k] = headers[k] === undefined ? v : `${headers[k]}, ${v}`;
    }
    const status = Number(m[2]);
    let p = end + 4;
    let body: Buffer;
    if (status < 200 || status === 204 || status === 304) {
      body = Buffer.alloc(0);
    } else if (headers["content-length"] !== undefined) {
      const n = Number(headers["content-length"]);
      if (buf.length < p + n) return out;
      body = buf.subarray(p, p + n);
      p += n;
    } else if ((headers["transfer-encoding"] ?? "").toLowerCase().includes("chunked")) {
      const parts: Buffer[] = [];
      for (;;) {
        const nl = buf.indexOf("\r\n", p);
        if (nl < 0) return out;
        const size = parseInt(buf.subarray(p, nl).toString("latin1"), 16);
        if (Number.isNaN(size)) return out;
        if (size === 0) {
          const tEnd = buf.indexOf("\r\n\r\n", nl);
          if (tEnd < 0) return out;
          p = tEnd + 4;
          break;
        }
        if (buf.length < nl + 2 + size + 2) return out;
        parts.push(buf.subarray(nl + 2, nl + 2 + size));
        p = nl + 2 + size + 2;
      }
      body = Buffer.concat(parts);
    } else {
      // Delimited by the close: complete only once the connection is gone.
      if (!opts.closed) return out;
      body = buf.subarray(p);
      p = buf.length;
    }
    out.push({ version: m[1]!, status, headers, body });
    at = p;
  }
}

/** True once `n` complete final (non-1xx) responses are in `buf`. */
export function hasResponses(n: number): (buf: Buffer) => boolean {
  return (buf) => parseResponses(buf).filter((r) => r.status >= 200).length >= n;
}
