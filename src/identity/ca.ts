// The dev CA: an EC P-256 root and SPIFFE leaf certificates, as Consul's built-in CA makes them.
import { webcrypto, randomBytes } from "node:crypto";
import { trustDomainSpiffeId } from "./spiffe.js";
import { colonHexSerial } from "./serial.js";

export { colonHexSerial, serialOf } from "./serial.js";

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;
const crypto = webcrypto;

type X509 = typeof import("@peculiar/x509");
let loaded: Promise<X509> | null = null;

/**
 * @peculiar/x509 (and the reflect-metadata it needs) cost about 15 MB of resident memory; a
 * sidecar fed by Consul or a static file never issues a certificate, so it never loads them.
 */
function x509lib(): Promise<X509> {
  loaded ??= (async () => {
    await import("reflect-metadata");
    const lib = await import("@peculiar/x509");
    lib.cryptoProvider.set(crypto);
    return lib;
  })();
  return loaded;
}

const EC: webcrypto.EcKeyGenParams = { name: "ECDSA", namedCurve: "P-256" };
const SIGN: webcrypto.EcdsaParams = { name: "ECDSA", hash: "SHA-256" };

export interface CaMaterial {
  readonly certPem: string;
  /** PKCS#8 PEM. Written 0600, never logged. */
  readonly keyPem: string;
}

export interface IssuedLeaf {
  readonly certPem: string;
  readonly keyPem: string;
  /** Colon-hex, lowercase, leading zero bytes stripped (Consul's format). */
  readonly serial: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

export interface LeafRequest {
  /** The URI SAN, e.g. `spiffe://<td>/ns/default/dc/dc1/svc/web`. */
  readonly spiffeId: string;
  readonly commonName: string;
  readonly ttlMs: number;
  /** Defaults to a little before now (a minute at most), to absorb clock skew; the TTL counts from now. */
  readonly notBefore?: Date;
  /** Replaces the SAN list (`spiffeId` alone): tests make leafs with none or several URI SANs. */
  readonly sans?: ReadonlyArray<{ readonly type: "url" | "dns"; readonly value: string }>;
}

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString("base64").replace(/.{64}/g, "$&\n");
  return `-----BEGIN ${label}-----\n${b64.endsWith("\n") ? b64 : `${b64}\n`}-----END ${label}-----\n`;
}

function der(pemText: string): ArrayBuffer {
  const body = pemText.replace(/-----(BEGIN|END) [A-Z ]+-----/g, "").replace(/\s+/g, "");
  const buf = Buffer.from(body, "base64");
  return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
}

/** A positive 128-bit serial as hex. */
function newSerialHex(): string {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f;
  if (b[0] === 0) b[0] = 0x01;
  return b.toString("hex");
}


async function keyPair(): Promise<CryptoKeyPair> {
  return crypto.subtle.generateKey(EC, true, ["sign", "verify"]);
}

async function exportKey(key: CryptoKey): Promise<string> {
  return pem("PRIVATE KEY", await crypto.subtle.exportKey("pkcs8", key));
}

export async function createRootCa(trustDomain: string, opts: { ttlMs?: number; commonName?: string } = {}): Promise<CaMaterial> {
  const x509 = await x509lib();
  const keys = await keyPair();
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: newSerialHex(),
    name: `CN=${opts.commonName ?? "meshproxy dev CA"}`,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + (opts.ttlMs ?? 10 * 365 * 24 * 3600 * 1000)),
    signingAlgorithm: SIGN,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
      new x509.SubjectAlternativeNameExtension([{ type: "url", value: trustDomainSpiffeId(trustDomain) }]),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString("pem") + "\n", keyPem: await exportKey(keys.privateKey) };
}

/** Issues a leaf for any SPIFFE ID: tests use it to make the certificates the proxy must refuse. */
export async function issueLeaf(ca: CaMaterial, req: LeafRequest): Promise<IssuedLeaf> {
  const x509 = await x509lib();
  const caCert = new x509.X509Certificate(ca.certPem);
  const caKey = await crypto.subtle.importKey("pkcs8", der(ca.keyPem), EC, false, ["sign"]);
  const keys = await keyPair();
  // Back-dated to absorb clock skew between machines, but never by more than a quarter of the
  // lifetime: the TTL counts from now, so a short-lived leaf is not born expired.
  const now = Date.now();
  const notBefore = req.notBefore ?? new Date(now - Math.min(60_000, req.ttlMs / 4));
  const notAfter = new Date((req.notBefore ? notBefore.getTime() : now) + req.ttlMs);
  const serialHex = newSerialHex();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serialHex,
    subject: `CN=${req.commonName}`,
    issuer: caCert.subject,
    notBefore,
    notAfter,
    signingAlgorithm: SIGN,
    publicKey: keys.publicKey,
    signingKey: caKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension(req.sans ? req.sans.map((n) => ({ ...n })) : [{ type: "url", value: req.spiffeId }]),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  return {
    certPem: cert.toString("pem") + "\n",
    keyPem: await exportKey(keys.privateKey),
    serial: colonHexSerial(serialHex),
    notBefore,
    notAfter,
  };
}

/**
 * The new root's subject and key, signed by the old root: the intermediate Consul ships during a
 * root rotation (shared/reference/consul-connect.md §3.7) so peers that still trust only the old
 * root accept leafs from the new one. It keeps the new root's SubjectKeyIdentifier, so a leaf
 * chains through it exactly as it chains to the new root. The two roots need distinct subjects
 * (`commonName`), or the result would look self-issued.
 */
export async function crossSign(newRoot: CaMaterial, oldRoot: CaMaterial): Promise<string> {
  const x509 = await x509lib();
  const next = new x509.X509Certificate(newRoot.certPem);
  const prev = new x509.X509Certificate(oldRoot.certPem);
  const prevKey = await crypto.subtle.importKey("pkcs8", der(oldRoot.keyPem), EC, false, ["sign"]);
  const ski = next.getExtension(x509.SubjectKeyIdentifierExtension) ?? (await x509.SubjectKeyIdentifierExtension.create(next.publicKey));
  const san = next.getExtension(x509.SubjectAlternativeNameExtension);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: newSerialHex(),
    subject: next.subject,
    issuer: prev.subject,
    notBefore: next.notBefore,
    // An intermediate that outlives its issuer would be rejected for the difference anyway.
    notAfter: next.notAfter < prev.notAfter ? next.notAfter : prev.notAfter,
    signingAlgorithm: SIGN,
    publicKey: next.publicKey,
    signingKey: prevKey,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
      ...(san ? [san] : []),
      ski,
      await x509.AuthorityKeyIdentifierExtension.create(prev),
    ],
  });
  return cert.toString("pem") + "\n";
}

