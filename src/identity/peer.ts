// Deciding who a TLS peer is, after OpenSSL has verified its chain against our roots.
import { firstUriSan, parseServiceSpiffeId, type ServiceId } from "./spiffe.js";

export type PeerRejection =
  | { readonly reason: "no_uri_san"; readonly detail: string }
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
  if (uri.toLowerCase() !== expectedSpiffeId.toLowerCase()) {
    return new Error(`peer certificate mismatch: got ${uri}, want ${expectedSpiffeId}`);
  }
  return undefined;
}
