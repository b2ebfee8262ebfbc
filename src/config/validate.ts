// Snapshot validation. A control plane's output is untrusted input: a bad one is rejected
// with the field and the reason, and the proxy keeps serving on the last good one.
import { X509Certificate, createPrivateKey, type KeyObject } from "node:crypto";
import type { Snapshot, HostPort, Cluster, Protocol } from "./snapshot.js";

export class SnapshotError extends Error {
  constructor(
    readonly field: string,
    readonly reason: string,
  ) {
    super(`invalid snapshot: ${field}: ${reason}`);
    this.name = "SnapshotError";
  }
}

const SERVICE_NAME = /^[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,62}[a-zA-Z0-9])?$/;

export function isValidServiceName(name: string): boolean {
  return SERVICE_NAME.test(name);
}

function checkHostPort(field: string, hp: HostPort, allowZero: boolean): void {
  if (typeof hp.host !== "string" || hp.host.length === 0) throw new SnapshotError(`${field}.host`, "must be a non-empty host");
  if (!Number.isInteger(hp.port) || hp.port < (allowZero ? 0 : 1) || hp.port > 65535) {
    throw new SnapshotError(`${field}.port`, `${String(hp.port)} is not a port (${allowZero ? 0 : 1}..65535)`);
  }
}

/** Node's timers hold at most 2^31 - 1 ms (24.8 days); a longer one fires after 1 ms instead. */
export const MAX_TIMER_MS = 2_147_483_647;

function checkPositive(field: string, v: number): void {
  checkTimerMs(field, v);
}

/** A duration that arms a timer: positive, and within what node's timers can hold. */
export function checkTimerMs(field: string, v: number): void {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw new SnapshotError(field, `${String(v)} must be a positive number of milliseconds`);
  if (v > MAX_TIMER_MS) throw new SnapshotError(field, `${v} ms is longer than a timer can wait (${MAX_TIMER_MS} ms, 24.8 days)`);
}

/** A duration where 0 means "none" (a route without a timeout). */
export function checkOptionalTimerMs(field: string, v: number): void {
  if (v === 0) return;
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) throw new SnapshotError(field, `${String(v)} must be 0 (none) or a positive number of milliseconds`);
  checkTimerMs(field, v);
}

/** A count: an integer, at least `min` (Envoy's uint32 thresholds and counts). */
export function checkInteger(field: string, v: number, min: number): void {
  if (!Number.isSafeInteger(v) || v < min) throw new SnapshotError(field, `${String(v)} must be an integer >= ${min}`);
}

export function checkPercent(field: string, v: number): void {
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0 || v > 100) throw new SnapshotError(field, `${String(v)} must be a percentage (0..100)`);
}

const PROTOCOLS: ReadonlySet<string> = new Set<Protocol>(["tcp", "http", "http2", "grpc"]);

function checkProtocol(field: string, p: Protocol): void {
  if (!PROTOCOLS.has(p)) throw new SnapshotError(field, `"${String(p)}" is not a protocol (${[...PROTOCOLS].join(", ")})`);
}

function checkCluster(key: string, c: Cluster): void {
  const f = `clusters[${key}]`;
  if (c.name !== key) throw new SnapshotError(`${f}.name`, `"${c.name}" does not match its key`);
  if (!isValidServiceName(c.service)) throw new SnapshotError(`${f}.service`, `"${c.service}" is not a valid service name`);
  if (!c.expectedSpiffeId.startsWith("spiffe://")) throw new SnapshotError(`${f}.expectedSpiffeId`, "must be a spiffe:// URI");
  if (c.sni.length === 0) throw new SnapshotError(`${f}.sni`, "must not be empty");
  c.endpoints.forEach((e, i) => checkHostPort(`${f}.endpoints[${i}]`, e, false));
}

/** Throws SnapshotError naming the first bad field. */
export function validateSnapshot(s: Snapshot): void {
  const id = s.identity;
  if (!isValidServiceName(id.service)) throw new SnapshotError("identity.service", `"${id.service}" is not a valid service name`);
  if (id.privateKeyPem.length === 0) throw new SnapshotError("identity.privateKeyPem", "missing");
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(id.certChainPem);
  } catch (e) {
    throw new SnapshotError("identity.certChainPem", `not a PEM certificate (${(e as Error).message})`);
  }
  if (!leaf.checkPrivateKey(privateKeyOf(id.privateKeyPem))) {
    throw new SnapshotError("identity.privateKeyPem", "does not match the leaf certificate's public key");
  }
  if (s.trust.rootsPem.length === 0) throw new SnapshotError("trust.rootsPem", "no CA roots: nothing could be verified");
  s.trust.rootsPem.forEach((pem, i) => {
    try {
      new X509Certificate(pem);
    } catch (e) {
      throw new SnapshotError(`trust.rootsPem[${i}]`, `not a PEM certificate (${(e as Error).message})`);
    }
  });
  const pl = s.publicListener;
  if (pl) {
    checkProtocol("publicListener.protocol", pl.protocol);
    checkHostPort("publicListener.bind", pl.bind, true);
    checkHostPort("publicListener.localApp", pl.localApp, false);
    checkPositive("publicListener.handshakeTimeoutMs", pl.handshakeTimeoutMs);
    checkPositive("publicListener.localConnectTimeoutMs", pl.localConnectTimeoutMs);
    checkPositive("publicListener.idleTimeoutMs", pl.idleTimeoutMs);
  }
  const binds = new Set<string>();
  const names = new Set<string>();
  s.upstreams.forEach((u, i) => {
    // Upstreams are named by their destination (listeners, logs and metrics are keyed by it).
    if (typeof u.name !== "string" || u.name.length === 0) throw new SnapshotError(`upstreams[${i}].name`, "must be a non-empty name");
    const f = `upstreams[${u.name}]`;
    if (names.has(u.name)) throw new SnapshotError(`${f}.name`, `"${u.name}" names two upstreams`);
    names.add(u.name);
    checkProtocol(`${f}.protocol`, u.protocol);
    checkHostPort(`${f}.bind`, u.bind, true);
    const key = `${u.bind.host}:${u.bind.port}`;
    if (u.bind.port !== 0 && binds.has(key)) throw new SnapshotError(`${f}.bind`, `${key} is used by two upstreams`);
    binds.add(key);
    if (!s.clusters[u.cluster]) throw new SnapshotError(`${f}.cluster`, `"${u.cluster}" is not a known cluster`);
    checkPositive(`${f}.connectTimeoutMs`, u.connectTimeoutMs);
    checkPositive(`${f}.idleTimeoutMs`, u.idleTimeoutMs);
  });
  for (const [key, c] of Object.entries(s.clusters)) checkCluster(key, c);
  const da = s.intentions.defaultAction;
  if (da !== "allow" && da !== "deny") throw new SnapshotError("intentions.defaultAction", `"${String(da)}" must be allow or deny`);
  s.intentions.intentions.forEach((it, i) => {
    if (it.action !== "allow" && it.action !== "deny") {
      throw new SnapshotError(`intentions.intentions[${i}].action`, `"${String(it.action)}" must be allow or deny`);
    }
    for (const side of ["source", "destination"] as const) {
      const v = it[side];
      if (v !== "*" && !isValidServiceName(v)) throw new SnapshotError(`intentions.intentions[${i}].${side}`, `"${v}" is not a service name or *`);
    }
  });
}

function privateKeyOf(pem: string): KeyObject {
  try {
    return createPrivateKey(pem);
  } catch (e) {
    throw new SnapshotError("identity.privateKeyPem", `not a PEM private key (${(e as Error).message})`);
  }
}
