// Deciding who a TLS peer is, after OpenSSL has verified its chain against our roots.
import type { TLSSocket } from "node:tls";
import type { X509Certificate } from "node:crypto";
import { firstUriSan, parseServiceSpiffeId, uriSanCount, type ServiceId } from "./spiffe.js";

export type PeerRejection =
  | { readonly reason: "no_uri_san"; readonly detail: string }
  | { readonly reason: "multiple_uri_sans"; readonly detail: string }
  | { readonly reason: "not_a_service_id"; readonly detail: string }
  | { readonly reason: "wrong_trust_domain"; readonly detail: string };

export type PeerResult = { readonly ok: true; readonly id: ServiceId; readonly uri: string } | ({ readonly ok: false } & PeerRejection);

/**
 * Reads the peer's service identity from its verified leaf. The trust domain is pinned to
 * ours (as newer Envoy RBAC does), so a certificate for another trust domain that a shared
 * or misconfigured root happened to sign is still refused.
 */
export function identifyPeer(subjectAltName: string | undefined, trustDomain: string): PeerResult {
  const uri = firstUriSan(subjectAltName);
  if (!uri) return { ok: false, reason: "no_uri_san", detail: "peer certificate has no URI SAN (not a mesh identity)" };
  // An X.509-SVID has exactly one URI SAN (SPIFFE X509-SVID §2); with several, which identity
  // the caller has would depend on which one a verifier reads (Envoy's RBAC matches any of them).
  const uris = uriSanCount(subjectAltName);
  if (uris > 1) return { ok: false, reason: "multiple_uri_sans", detail: `peer certificate has ${uris} URI SANs; a SPIFFE identity has exactly one` };
  const id = parseServiceSpiffeId(uri);
  if (!id) return { ok: false, reason: "not_a_service_id", detail: `peer URI SAN ${uri} is not a SPIFFE service ID` };
  if (id.trustDomain !== trustDomain.toLowerCase()) {
    return { ok: false, reason: "wrong_trust_domain", detail: `peer ${uri} is in trust domain ${id.trustDomain}, want ${trustDomain}` };
  }
  return { ok: true, id, uri };
}

/**
 * The server-side check made by an outbound connection: the server must be the service we
 * meant to reach. Compared case-insensitively, as Consul does.
 */
export function checkServerIdentity(subjectAltName: string | undefined, expectedSpiffeId: string): Error | undefined {
  const uri = firstUriSan(subjectAltName);
  if (!uri) return new Error(`peer certificate has no URI SAN, want ${expectedSpiffeId}`);
  const uris = uriSanCount(subjectAltName);
  if (uris > 1) return new Error(`peer certificate has ${uris} URI SANs, want exactly one: ${expectedSpiffeId}`);
  if (uri.toLowerCase() !== expectedSpiffeId.toLowerCase()) {
    return new Error(`peer certificate mismatch: got ${uri}, want ${expectedSpiffeId}`);
  }
  return undefined;
}

export type ClientCertRejection =
  | { readonly reason: "no_client_cert"; readonly detail: string }
  | { readonly reason: "expired_certificate" | "untrusted_certificate" | "bad_certificate"; readonly detail: string };

const UNTRUSTED = new Set([
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "CERT_SIGNATURE_FAILURE",
]);

function chainRejection(code: string): ClientCertRejection["reason"] {
  if (code === "CERT_HAS_EXPIRED" || code === "CERT_NOT_YET_VALID") return "expired_certificate";
  if (UNTRUSTED.has(code)) return "untrusted_certificate";
  return "bad_certificate";
}

/**
 * Whether the peer's leaf is within its validity now, for a resumed session: OpenSSL restores the
 * peer certificate and the verification result of the full handshake the session came from and
 * checks neither again, so a leaf that expired since (the mesh's way of taking an identity away:
 * a service that can no longer renew) would be accepted for as long as the server keeps the
 * session. A full handshake has this checked by OpenSSL already.
 */
function resumedLeafValid(s: TLSSocket, cert: X509Certificate | undefined, now = Date.now()): boolean {
  if (!s.isSessionReused()) return true;
  if (!cert) return false;
  return Date.parse(cert.validFrom) <= now && now <= Date.parse(cert.validTo);
}

/**
 * The caller of a mesh TLS server (requestCert on, rejectUnauthorized off so each refusal gets
 * its own reason): a certificate, a chain OpenSSL verified against our roots, then its SPIFFE ID
 * in our trust domain. The sidecar's public listener and the native library's servers both ask
 * this one question, the same way.
 */
export function verifyClient(s: TLSSocket, trustDomain: string): PeerResult | ({ readonly ok: false } & ClientCertRejection) {
  // Only the SAN is needed: getPeerX509Certificate() skips building the full certificate object.
  const cert = s.getPeerX509Certificate();
  if (!cert) return { ok: false, reason: "no_client_cert", detail: "client presented no certificate" };
  if (!s.authorized) {
    const code = String(s.authorizationError);
    return { ok: false, reason: chainRejection(code), detail: `client certificate not trusted: ${code}` };
  }
  if (!resumedLeafValid(s, cert)) {
    return { ok: false, reason: "expired_certificate", detail: `client certificate not trusted: outside its validity (${cert.validFrom} to ${cert.validTo}) on a resumed session` };
  }
  return identifyPeer(cert.subjectAltName, trustDomain);
}
