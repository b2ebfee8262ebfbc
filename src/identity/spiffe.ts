// SPIFFE IDs and SNI names in Consul's formats (shared/reference/consul-connect.md §3.1, §3.2).
import { formatMeshSni } from "./sni.js";

export interface ServiceId {
  readonly trustDomain: string;
  readonly partition: string;
  readonly namespace: string;
  readonly datacenter: string;
  readonly service: string;
}

const SERVICE_PATH = /^(?:\/ap\/([^/]+))?\/ns\/([^/]+)\/dc\/([^/]+)\/svc\/([^/]+)$/;

export function serviceSpiffeId(id: Omit<ServiceId, "partition"> & { partition?: string }): string {
  const ap = id.partition && id.partition !== "default" ? `/ap/${enc(id.partition)}` : "";
  return `spiffe://${id.trustDomain.toLowerCase()}${ap}/ns/${enc(id.namespace)}/dc/${enc(id.datacenter)}/svc/${enc(id.service)}`;
}

export function trustDomainSpiffeId(trustDomain: string): string {
  return `spiffe://${trustDomain.toLowerCase()}`;
}

/** Parses a service SPIFFE ID; returns null for anything else (agents, gateways, garbage). */
export function parseServiceSpiffeId(uri: string): ServiceId | null {
  if (!uri.toLowerCase().startsWith("spiffe://")) return null;
  const rest = uri.slice("spiffe://".length);
  const slash = rest.indexOf("/");
  if (slash <= 0) return null;
  const m = SERVICE_PATH.exec(rest.slice(slash));
  if (!m) return null;
  try {
    return {
      trustDomain: rest.slice(0, slash).toLowerCase(),
      partition: m[1] ? decodeURIComponent(m[1]) : "default",
      namespace: decodeURIComponent(m[2]!),
      datacenter: decodeURIComponent(m[3]!),
      service: decodeURIComponent(m[4]!),
    };
  } catch {
    return null;
  }
}

/**
 * `[<subset>.]<service>.<namespace>.<datacenter>.internal.<trust-domain>`: a service in the default
 * admin partition. formatMeshSni names one in any partition.
 */
export function serviceSni(service: string, namespace: string, datacenter: string, trustDomain: string, subset?: string): string {
  return formatMeshSni({ kind: "service", subset: subset || null, service, namespace, partition: "default", datacenter, trustDomain });
}

function enc(s: string): string {
  return encodeURIComponent(s);
}

/**
 * The first `URI:` entry of a Node `subjectaltname` string. Consul identifies a peer by its
 * first URI SAN only; the CN is never used.
 */
export function firstUriSan(subjectAltName: string | undefined): string | null {
  if (!subjectAltName) return null;
  for (const part of subjectAltName.split(", ")) {
    if (part.startsWith("URI:")) return part.slice(4);
  }
  return null;
}

/** How many `URI:` entries a Node `subjectaltname` string has. */
export function uriSanCount(subjectAltName: string | undefined): number {
  if (!subjectAltName) return 0;
  let n = 0;
  for (const part of subjectAltName.split(", ")) if (part.startsWith("URI:")) n++;
  return n;
}
