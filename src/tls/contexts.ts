// Secure contexts built once per identity/trust change, never per connection.
import { createSecureContext, type SecureContext, type SecureContextOptions } from "node:tls";
import { constants, createHash } from "node:crypto";
import type { Identity, TrustBundle } from "../config/snapshot.js";

/** TLS 1.2 suites as Consul's proxy limits them (ECDHE with AEAD only); TLS 1.3 suites as OpenSSL ships them. */
export const CIPHERS = [
  "TLS_AES_128_GCM_SHA256",
  "TLS_AES_256_GCM_SHA384",
  "TLS_CHACHA20_POLY1305_SHA256",
  "ECDHE-ECDSA-AES128-GCM-SHA256",
  "ECDHE-RSA-AES128-GCM-SHA256",
  "ECDHE-ECDSA-AES256-GCM-SHA384",
  "ECDHE-RSA-AES256-GCM-SHA384",
  "ECDHE-ECDSA-CHACHA20-POLY1305",
  "ECDHE-RSA-CHACHA20-POLY1305",
].join(":");

export function secureContextOptions(identity: Identity, trust: TrustBundle): SecureContextOptions {
  return {
    cert: identity.certChainPem,
    key: identity.privateKeyPem,
    ca: [...trust.rootsPem],
    minVersion: "TLSv1.2",
    ciphers: CIPHERS,
    honorCipherOrder: true,
    // TLS 1.2 renegotiation, either side asking: refused, as BoringSSL (Envoy) refuses it. Node
    // only rate-limits a client's (3 in 10 minutes); each one is a full handshake for nothing a
    // new connection would not give, and renegotiation is where its attacks live.
    secureOptions: constants.SSL_OP_NO_RENEGOTIATION,
  };
}

/**
 * A key that changes whenever the leaf or any root changes: the proxy rebuilds contexts and
 * drops cached TLS sessions only then.
 */
export function materialKey(identity: Identity, trust: TrustBundle): string {
  const h = createHash("sha256");
  h.update(identity.serial);
  h.update(identity.certChainPem);
  for (const r of trust.rootsPem) h.update(r);
  return h.digest("hex");
}

/**
 * A key that changes only when what a connection is authenticated with changes: our SPIFFE ID
 * (what the peer authorizes us as) or the roots we verify the peer with. Pooled connections to
 * upstreams are kept per this key, not per leaf: a renewed leaf (same identity, the old one still
 * valid) is used for new connections while the open ones go on, as Envoy does on an SDS update.
 * Replacing the pools at every renewal made every caller re-handshake all of its concurrency at
 * once. A connection made as another identity, or verified under roots since dropped, is never
 * reused.
 */
export function identityKey(identity: Identity, trust: TrustBundle): string {
  const h = createHash("sha256");
  h.update(identity.spiffeId);
  h.update("\n");
  for (const r of trust.rootsPem) h.update(r);
  return h.digest("hex");
}

export interface TlsMaterial {
  readonly key: string;
  /** identityKey of our identity and roots: what upstream connection pools are keyed by. */
  readonly identityKey: string;
  readonly options: SecureContextOptions;
  /** For outbound (client) connections. */
  readonly clientContext: SecureContext;
}

export function buildTlsMaterial(identity: Identity, trust: TrustBundle): TlsMaterial {
  const options = secureContextOptions(identity, trust);
  return { key: materialKey(identity, trust), identityKey: identityKey(identity, trust), options, clientContext: createSecureContext(options) };
}
