// The names a native client uses for mesh services: Consul's DNS forms, as Consul's Go library
// takes them in its HTTPClient (`https://db.service.consul/path`), with a datacenter for a
// service elsewhere (`db.service.dc2.consul`, or Consul's canonical `db.service.dc2.dc.consul`).
// `<service>.connect.consul` (Consul's lookup of a service's mesh-capable instances) names the
// same thing here: a native client only ever reaches mesh instances.
import { isValidServiceName } from "../config/validate.js";

import { MeshNameError } from "./errors.js";

/** A destination a native app names: a service, in this datacenter (undefined) or another. */
export interface MeshTarget {
  readonly service: string;
  readonly datacenter: string | undefined;
}

const ACCEPTED = "<service>.service.consul or <service>.service.<datacenter>.consul";

/** Why other Consul DNS lookups are not mesh destinations here, for the error. */
const UNSUPPORTED: Readonly<Record<string, string>> = {
  virtual: "virtual IP lookups (.virtual) belong to transparent proxying, which meshproxy does not do",
  query: "prepared queries (.query) are for -upstream with a Consul agent, not for native names",
  ingress: "ingress gateway lookups (.ingress) name a gateway, not a mesh service",
  node: "node lookups (.node) name a machine, not a mesh service",
  addr: "address lookups (.addr) name an address, not a mesh service",
};

const URL_FORM = "https://<service>.service.consul/<path> (or https://<service>.service.<datacenter>.consul/<path>)";

/** The destination a URL origin names, and its host as written; throws MeshNameError with what to write instead. */
export function targetOfOrigin(origin: string | URL | undefined): MeshTarget & { readonly host: string } {
  if (origin === undefined) throw new MeshNameError(`a mesh request needs an absolute URL: ${URL_FORM}`);
  let u: URL;
  try {
    u = typeof origin === "string" ? new URL(origin) : origin;
  } catch {
    throw new MeshNameError(`"${String(origin)}" is not a URL; want ${URL_FORM}`);
  }
  if (u.protocol !== "https:") throw new MeshNameError(`${u.origin}: mesh requests are mTLS; use https://${u.host}`);
  if (u.port !== "") throw new MeshNameError(`${u.origin}: a mesh service name takes no port (the control plane knows where its instances listen)`);
  return { ...targetOfHost(u.hostname), host: u.hostname };
}

/**
 * `<service>.service[.<dc>[.dc]].consul` (or `.connect`) → the service and its datacenter.
 * A tag label before the service (`v1.db.service.consul`) is refused: subsets do that in a mesh.
 */
export function targetOfHost(hostname: string): MeshTarget {
  const labels = hostname.toLowerCase().split(".");
  if (labels.at(-1) === "") labels.pop(); // a fully qualified name's root dot
  if (labels.length < 3 || labels.at(-1) !== "consul") throw new MeshNameError(`"${hostname}" is not a mesh service name; want ${ACCEPTED}`);
  const kind = labels.findIndex((l, i) => i > 0 && (l === "service" || l === "connect" || l in UNSUPPORTED));
  if (kind < 0) throw new MeshNameError(`"${hostname}" is not a mesh service name; want ${ACCEPTED}`);
  const why = UNSUPPORTED[labels[kind]!];
  if (why !== undefined) throw new MeshNameError(`"${hostname}": ${why}; want ${ACCEPTED}`);
  if (kind > 1) throw new MeshNameError(`"${hostname}": tag lookups (<tag>.<service>.service.consul) are not supported; select instances with a service-resolver subset instead, and want ${ACCEPTED}`);
  const service = labels[0]!;
  if (!isValidServiceName(service)) throw new MeshNameError(`"${hostname}": "${service}" is not a valid service name (letters, digits, - _)`);
  // What is left between the kind and the domain: nothing, `<dc>`, or Consul's canonical `<dc>.dc`.
  const rest = labels.slice(kind + 1, -1);
  if (rest.length === 2 && rest[1] === "dc") rest.pop();
  if (rest.length === 0) return { service, datacenter: undefined };
  const dc = rest[0]!;
  if (rest.length > 1) throw new MeshNameError(`"${hostname}": namespaces, partitions and peers (.ns, .ap, .peer) are not supported; want ${ACCEPTED}`);
  if (!isValidServiceName(dc)) throw new MeshNameError(`"${hostname}": "${dc}" is not a datacenter name (letters, digits, - _)`);
  return { service, datacenter: dc };
}

/** A bare service name, or a host in one of the DNS forms above. */
export function targetOfName(name: string): MeshTarget {
  if (name.includes(".")) return targetOfHost(name);
  if (!isValidServiceName(name)) throw new MeshNameError(`"${name}" is not a valid service name (letters, digits, - _); want a name or ${ACCEPTED}`);
  return { service: name, datacenter: undefined };
}

/** The one key of a destination among a Service's upstreams: `db`, or `db.service.dc2` (as `-upstream` writes it). */
export function upstreamKey(service: string, datacenter: string | undefined): string {
  return datacenter === undefined ? service : `${service}.service.${datacenter}`;
}
