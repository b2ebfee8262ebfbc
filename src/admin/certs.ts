// /certs: the identity in use and its certificates, with Envoy's field names (serial_number,
// valid_from, expiration_time, days_until_expiration) so existing expiry checks read it. Only
// certificate bodies are read here; the Snapshot's private key is never touched.
import { certsReport, type CertInfo } from "../identity/cert-info.js";
import type { Snapshot } from "../config/snapshot.js";

function cert(c: CertInfo): Record<string, unknown> {
  return {
    subject: c.subject,
    issuer: c.issuer,
    serial_number: c.serial,
    subject_alt_names: c.uriSans.map((uri) => ({ uri })),
    valid_from: c.notBefore,
    expiration_time: c.notAfter,
    days_until_expiration: c.daysUntilExpiry,
    sha256_fingerprint: c.sha256Fingerprint,
  };
}

export function certsJson(s: Snapshot, now = Date.now()): unknown {
  const r = certsReport(s, now);
  return {
    identity: { service: r.service, spiffe_id: r.spiffeId, trust_domain: r.trustDomain },
    leaf: { ...cert(r.leaf), spiffe_id: r.leaf.spiffeId },
    intermediates: r.intermediates.map(cert),
    roots: r.roots.map(cert),
  };
}
