// What an operator may know about the certificates in use: who, which serial, valid when.
// Built from the certificate bodies only; key material never comes near this file.
import { X509Certificate } from "node:crypto";
import { colonHexSerial } from "./serial.js";
import type { Snapshot } from "../config/snapshot.js";

export interface CertInfo {
  readonly subject: string;
  readonly issuer: string;
  /** Colon-hex, Consul style. */
  readonly serial: string;
  readonly uriSans: readonly string[];
  readonly notBefore: string;
  readonly notAfter: string;
  readonly daysUntilExpiry: number;
  readonly sha256Fingerprint: string;
}

export interface CertsReport {
  readonly service: string;
  readonly spiffeId: string;
  readonly trustDomain: string;
  readonly leaf: CertInfo & { readonly spiffeId: string };
  readonly intermediates: readonly CertInfo[];
  readonly roots: readonly CertInfo[];
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** Each certificate in a PEM bundle; anything else in it (such as a key) is skipped. */
export function pemCertificates(pem: string): string[] {
  return pem.match(PEM_CERT) ?? [];
}

export function certInfo(pem: string, now = Date.now()): CertInfo {
  const c = new X509Certificate(pem);
  const notAfter = new Date(c.validTo);
  return {
    subject: c.subject.replace(/\n/g, ", "),
    issuer: c.issuer.replace(/\n/g, ", "),
    serial: colonHexSerial(c.serialNumber),
    uriSans: (c.subjectAltName ?? "")
      .split(", ")
      .filter((s) => s.startsWith("URI:"))
      .map((s) => s.slice(4)),
    notBefore: new Date(c.validFrom).toISOString(),
    notAfter: notAfter.toISOString(),
    daysUntilExpiry: Math.floor(((notAfter.getTime() - now) / 86_400_000) * 100) / 100,
    sha256Fingerprint: c.fingerprint256,
  };
}

/** The leaf, its intermediates and the trusted roots of a Snapshot, for /certs. */
export function certsReport(s: Snapshot, now = Date.now()): CertsReport {
  const [leafPem, ...intermediates] = pemCertificates(s.identity.certChainPem);
  if (leafPem === undefined) throw new Error(`snapshot ${s.version}: the identity has no certificate; the control plane sent an empty chain`);
  return {
    service: s.identity.service,
    spiffeId: s.identity.spiffeId,
    trustDomain: s.trust.trustDomain,
    leaf: { ...certInfo(leafPem, now), spiffeId: s.identity.spiffeId },
    intermediates: intermediates.map((p) => certInfo(p, now)),
    roots: s.trust.rootsPem.flatMap(pemCertificates).map((p) => certInfo(p, now)),
  };
}
