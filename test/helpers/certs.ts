// Certificate helpers: the dev CA in a sidecar's data directory, leaves made from it (or from
// another CA) for the clients a test plays, and a TLS client that reports what it got.
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import { createRootCa, issueLeaf, serviceSpiffeId, type CaMaterial, type IssuedLeaf } from "../../src/index.js";
import { hostPort } from "./mesh.js";

export interface DevCa extends CaMaterial {
  readonly trustDomain: string;
  readonly datacenter: string;
}

/** The dev CA a sidecar created in `dataDir` (so it exists once a sidecar is ready). */
export async function readDevCa(dataDir: string): Promise<DevCa> {
  const [certPem, keyPem, cfgText] = await Promise.all([
    readFile(join(dataDir, "ca", "root.pem"), "utf8"),
    readFile(join(dataDir, "ca", "root.key"), "utf8"),
    readFile(join(dataDir, "ca", "config.json"), "utf8"),
  ]);
  const cfg: unknown = JSON.parse(cfgText);
  if (typeof cfg !== "object" || cfg === null) throw new Error(`${dataDir}/ca/config.json is not an object`);
  const td = "trust_domain" in cfg ? cfg.trust_domain : undefined;
  const dc = "datacenter" in cfg ? cfg.datacenter : undefined;
  if (typeof td !== "string") throw new Error(`${dataDir}/ca/config.json has no trust_domain`);
  return { certPem, keyPem, trustDomain: td, datacenter: typeof dc === "string" ? dc : "dc1" };
}

export function spiffeFor(trustDomain: string, service: string, datacenter = "dc1"): string {
  return serviceSpiffeId({ trustDomain, namespace: "default", datacenter, service });
}

/** A leaf for `service` signed by `ca`, in the CA's own trust domain unless told otherwise. */
export async function leafFor(
  ca: DevCa,
  service: string,
  opts: { trustDomain?: string; notBefore?: Date; ttlMs?: number } = {},
): Promise<IssuedLeaf> {
  return issueLeaf(ca, {
    spiffeId: spiffeFor(opts.trustDomain ?? ca.trustDomain, service, ca.datacenter),
    commonName: service,
    ttlMs: opts.ttlMs ?? 3_600_000,
    ...(opts.notBefore ? { notBefore: opts.notBefore } : {}),
  });
}

/** A root that has nothing to do with the dev CA, and a leaf from it with a mesh-looking ID. */
export async function foreignLeaf(trustDomain: string, service: string): Promise<IssuedLeaf> {
  const other = await createRootCa(trustDomain, { commonName: "not the dev CA" });
  return issueLeaf(other, { spiffeId: spiffeFor(trustDomain, service), commonName: service, ttlMs: 3_600_000 });
}

/** Writes `<name>.pem` and `<name>.key`; returns their paths. */
export async function writeLeaf(dir: string, name: string, leaf: IssuedLeaf): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${name}.pem`);
  const key = join(dir, `${name}.key`);
  await writeFile(cert, leaf.certPem);
  await writeFile(key, leaf.keyPem, { mode: 0o600 });
  return { cert, key };
}

export interface TlsExchange {
  /** The client finished its side of the handshake. */
  readonly handshake: boolean;
  /** Everything received until the connection closed. */
  readonly data: Buffer;
  /** The first socket error, if any (a reset is how a refusal often looks). */
  readonly error: string | null;
}

/**
 * Connects with TLS (optionally presenting `leaf`), sends `payload` once the handshake is done,
 * and collects what comes back until the server closes. The server's certificate is not
 * checked: these tests are about what the server accepts.
 */
export function tlsExchange(addr: string, payload: string, leaf?: Pick<IssuedLeaf, "certPem" | "keyPem">, timeoutMs = 10_000): Promise<TlsExchange> {
  const { host, port } = hostPort(addr);
  return new Promise((resolve, reject) => {
    const s = tlsConnect({
      host,
      port,
      rejectUnauthorized: false,
      ...(leaf ? { cert: leaf.certPem, key: leaf.keyPem } : {}),
    });
    const chunks: Buffer[] = [];
    let handshake = false;
    let error: string | null = null;
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`TLS exchange with ${addr} did not finish in ${timeoutMs} ms (handshake ${handshake}, ${Buffer.concat(chunks).length} bytes)`));
    }, timeoutMs);
    s.on("secureConnect", () => {
      handshake = true;
      s.write(payload);
    });
    s.on("data", (d: Buffer) => {
      chunks.push(d);
      // An echo of the whole payload is all we wait for; then close from our side.
      if (Buffer.concat(chunks).length >= Buffer.byteLength(payload)) s.end();
    });
    s.on("error", (e: Error) => (error ??= e.message));
    s.on("close", () => {
      clearTimeout(timer);
      resolve({ handshake, data: Buffer.concat(chunks), error });
    });
  });
}
