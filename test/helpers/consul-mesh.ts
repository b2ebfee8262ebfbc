// Helpers for end-to-end tests on the Consul agent double: real meshproxy processes pointed at
// it with -http-addr, apps that say who they are, direct mTLS clients with leafs the double
// issues, and the admin API's /ready.
import { connect as netConnect } from "node:net";
import { connect as tlsConnect, type PeerCertificate, type TLSSocket } from "node:tls";
import { request } from "undici";
import { ConsulAgentDouble, type ConsulAgentDoubleOptions } from "./consul-agent.js";
import { hostPort, roundTrip, startSidecar, tcpApp, tempDir, type Sidecar, type Teardown } from "./mesh.js";
export { freePort } from "./peers.js";
import { until } from "./l7.js";
import { ignoreRejection } from "./ignore.js";
import { colonHexSerial } from "../../src/identity/ca.js";

export async function startDouble(t: Teardown, opts: ConsulAgentDoubleOptions = {}): Promise<ConsulAgentDouble> {
  const d = await ConsulAgentDouble.start(opts);
  t.teardown(() => d.stop());
  return d;
}

/** A sidecar on the double: `-http-addr <double>` plus `args`, JSON logs, admin on port 0. */
export async function consulSidecar(t: Teardown, d: ConsulAgentDouble, args: string[]): Promise<Sidecar> {
  return startSidecar(t, await tempDir(t), ["-http-addr", d.url, ...args]);
}


/** A TCP app that first writes `<name>\n`, then echoes (and ends after the client ends). */
export async function namedApp(t: Teardown, name: string): Promise<{ port: number }> {
  const { port } = await tcpApp(t, (s) => {
    s.write(`${name}\n`);
    s.pipe(s);
  });
  return { port };
}

/** GET /ready on the admin API: the status code. */
export async function readyStatus(adminAddr: string): Promise<number> {
  const res = await request(`http://${adminAddr}/ready`);
  await res.body.text();
  return res.statusCode;
}

/** Resolves with the connect error code (ECONNREFUSED) or null if something accepted. */
export async function connectError(addr: string): Promise<string | null> {
  const { host, port } = hostPort(addr);
  const s = netConnect({ host, port });
  return new Promise((resolve) => {
    s.once("connect", () => {
      s.destroy();
      resolve(null);
    });
    s.once("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

export interface MtlsResult {
  /** The server leaf's serial, Consul style (colon-hex). */
  readonly serial: string;
  readonly peer: PeerCertificate;
  /** What came back for `send`, until the server ended. */
  readonly received: string;
}

/**
 * A direct mTLS client to a public listener, as another sidecar would be: presents `certPem`
 * (leaf plus chain) and verifies the server against `rootsPem` (no hostname: identity is the
 * URI SAN). Sends `send`, half-closes, and collects the answer.
 */
export async function mtls(addr: string, certPem: string, keyPem: string, rootsPem: readonly string[], send = "ping\n", timeoutMs = 10_000): Promise<MtlsResult> {
  const { host, port } = hostPort(addr);
  const s: TLSSocket = tlsConnect({
    host,
    port,
    cert: certPem,
    key: keyPem,
    ca: [...rootsPem],
    rejectUnauthorized: true,
    checkServerIdentity: () => undefined,
  });
  return new Promise<MtlsResult>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let peer: PeerCertificate | null = null;
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`mTLS to ${addr} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    s.once("secureConnect", () => {
      peer = s.getPeerCertificate();
      s.end(send);
    });
    s.on("data", (d: Buffer) => chunks.push(d));
    s.once("error", (e: Error) => {
      clearTimeout(timer);
      reject(e);
    });
    s.once("close", () => {
      clearTimeout(timer);
      if (!peer) return reject(new Error(`mTLS to ${addr}: closed before the handshake completed`));
      resolve({ serial: colonHexSerial(peer.serialNumber), peer, received: Buffer.concat(chunks).toString("utf8") });
    });
  });
}

export interface Load {
  readonly ok: () => number;
  readonly failures: string[];
  stop(): Promise<void>;
}

/** `perSecond` new connections a second, each sending one line and reading its echo; stopped at teardown. */
export function connectionLoad(t: Teardown, addr: string, perSecond: number): Load {
  let ok = 0;
  let n = 0;
  let stopped = false;
  const failures: string[] = [];
  const inflight = new Set<Promise<void>>();
  const one = async (): Promise<void> => {
    const line = `conn ${++n}\n`;
    try {
      const got = (await roundTrip(addr, line, 10_000)).toString();
      if (got === line) ok++;
      else failures.push(`${line.trim()}: got ${JSON.stringify(got)}`);
    } catch (e) {
      failures.push(`${line.trim()}: ${(e as Error).message}`);
    }
  };
  const interval = 1000 / perSecond;
  let next = performance.now();
  let timer: NodeJS.Timeout | null = null;
  const tick = (): void => {
    if (stopped) return;
    const now = performance.now();
    while (next <= now) {
      const p = one();
      inflight.add(p);
      p.finally(() => inflight.delete(p)).catch(ignoreRejection("one() catches and records its own errors: it never rejects"));
      next += interval;
    }
    timer = setTimeout(tick, Math.max(0, next - performance.now()));
  };
  tick();
  const stop = async (): Promise<void> => {
    stopped = true;
    if (timer) clearTimeout(timer);
    await Promise.all([...inflight]);
  };
  t.teardown(stop);
  return { ok: () => ok, failures, stop };
}

/** Waits for `n` more successful connections: traffic is flowing. */
export async function moreTraffic(load: Load, n: number, timeoutMs = 15_000): Promise<void> {
  const target = load.ok() + n;
  await until(() => load.ok() >= target, timeoutMs, `${n} more successful connections`);
}
