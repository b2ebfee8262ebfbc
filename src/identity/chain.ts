// Whether a leaf reaches a trusted root through the intermediates sent with it: the question a
// peer's OpenSSL asks of our chain at every handshake, asked once when the pieces arrive so the
// piece at fault can be named.
import type { X509Certificate } from "node:crypto";

function signedBy(child: X509Certificate, parent: X509Certificate): boolean {
  return child.checkIssued(parent) && child.verify(parent.publicKey);
}

/**
 * True when `leaf` is signed by one of `roots`, directly or through `intermediates` (the rest of
 * the presented chain, in any order, as OpenSSL builds a path from the untrusted certificates a
 * peer sends). During a CA root rotation a leaf from the new root reaches the old one through
 * the cross-signed certificate sent after it. Each certificate is tried once: a bundle of
 * certificates that sign each other cannot make this more than quadratic.
 */
export function chainsToRoot(leaf: X509Certificate, intermediates: readonly X509Certificate[], roots: readonly X509Certificate[]): boolean {
  const pending = [leaf];
  const unused = new Set(intermediates);
  for (let cert = pending.pop(); cert !== undefined; cert = pending.pop()) {
    if (roots.some((r) => signedBy(cert, r))) return true;
    for (const next of unused) {
      if (!signedBy(cert, next)) continue;
      unused.delete(next);
      pending.push(next);
    }
  }
  return false;
}
