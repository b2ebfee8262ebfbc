// In-process mesh TLS for tests that drive the proxy's parts directly: a root, the TLS material
// of a "web" sidecar, and leaves for the services it talks to.
import { createRootCa, issueLeaf, serviceSpiffeId, type IssuedLeaf } from "../../src/index.js";
import { buildTlsMaterial, type TlsMaterial } from "../../src/tls/contexts.js";

export const TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul";

export function spiffe(service: string): string {
  return serviceSpiffeId({ trustDomain: TRUST_DOMAIN, namespace: "default", datacenter: "dc1", service });
}

export function sni(service: string): string {
  return `${service}.default.dc1.internal.${TRUST_DOMAIN}`;
}

export interface MeshTls {
  /** web's client material, as the proxy builds it from a Snapshot. */
  readonly tls: TlsMaterial;
  readonly leaf: (service: string) => Promise<IssuedLeaf>;
}

export async function meshTls(): Promise<MeshTls> {
  const ca = await createRootCa(TRUST_DOMAIN);
  const leaf = (service: string) => issueLeaf(ca, { spiffeId: spiffe(service), commonName: service, ttlMs: 3_600_000 });
  const web = await leaf("web");
  const tls = buildTlsMaterial(
    { service: "web", namespace: "default", datacenter: "dc1", trustDomain: TRUST_DOMAIN, spiffeId: spiffe("web"), certChainPem: web.certPem, privateKeyPem: web.keyPem, serial: web.serial, notBefore: web.notBefore, notAfter: web.notAfter },
    { trustDomain: TRUST_DOMAIN, rootsPem: [ca.certPem] },
  );
  return { tls, leaf };
}
