// The names a native client uses for mesh services: Consul's DNS form, as Consul's Go library
// takes them in its HTTPClient (`https://db.service.consul/path`).
import { isValidServiceName } from "../config/validate.js";

import { MeshNameError } from "./errors.js";

const SUFFIX = ".service.consul";

/** The service a URL origin names; throws MeshNameError with what to write instead. */
export function serviceOfOrigin(origin: string | URL | undefined): string {
  if (origin === undefined) throw new MeshNameError("a mesh request needs an absolute URL: https://<service>.service.consul/<path>");
  let u: URL;
  try {
    u = typeof origin === "string" ? new URL(origin) : origin;
  } catch {
    throw new MeshNameError(`"${String(origin)}" is not a URL; want https://<service>.service.consul/<path>`);
  }
  if (u.protocol !== "https:") throw new MeshNameError(`${u.origin}: mesh requests are mTLS; use https://${u.host}`);
  if (u.port !== "") throw new MeshNameError(`${u.origin}: a mesh service name takes no port (the control plane knows where its instances listen)`);
  return serviceOfHost(u.hostname);
}

/** `<service>.service.consul` → `<service>`. */
export function serviceOfHost(hostname: string): string {
  const h = hostname.toLowerCase();
  if (!h.endsWith(SUFFIX)) throw new MeshNameError(`"${hostname}" is not a mesh service name; want <service>${SUFFIX}`);
  const service = h.slice(0, -SUFFIX.length);
  if (service.includes(".")) throw new MeshNameError(`"${hostname}": other datacenters (<service>.service.<dc>.consul) are not supported yet; want <service>${SUFFIX}`);
  if (!isValidServiceName(service)) throw new MeshNameError(`"${hostname}": "${service}" is not a valid service name (letters, digits, - _)`);
  return service;
}

/** A bare service name, or a host in the `.service.consul` form. */
export function serviceOfName(name: string): string {
  if (name.endsWith(SUFFIX)) return serviceOfHost(name);
  if (!isValidServiceName(name)) throw new MeshNameError(`"${name}" is not a valid service name (letters, digits, - _)`);
  return name;
}
