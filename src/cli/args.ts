// Parsing of flag values shared by the subcommands. Each failure is a UsageError: one line,
// naming the flag and what a good value looks like; the CLI exits 2 on it.
import type { HostPort } from "../config/snapshot.js";
import type { UpstreamRequest } from "../controlplane/controlplane.js";
import { isValidServiceName } from "../config/validate.js";

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * Go's flag package takes `-service web`; commander wants `--service web`. Rewrite every
 * multi-letter single-dash flag before a bare `--`, leaving `-h` and negative numbers alone.
 */
export function goStyleArgv(argv: readonly string[]): string[] {
  const out: string[] = [];
  let rest = false;
  for (const a of argv) {
    if (a === "--") rest = true;
    out.push(!rest && /^-[a-zA-Z][a-zA-Z0-9-]+(=.*)?$/.test(a) ? `-${a}` : a);
  }
  return out;
}

export function parsePort(flag: string, raw: string, s: string, allowZero = false): number {
  if (!/^\d+$/.test(s)) throw new UsageError(`${flag} "${raw}": port "${s}" is not a number`);
  const n = Number(s);
  if (n > 65535 || n < (allowZero ? 0 : 1)) throw new UsageError(`${flag} "${raw}": port ${n} is out of range (${allowZero ? 0 : 1}-65535)`);
  return n;
}

/** `host:port`, `[v6]:port` or `:port` (all interfaces, as Go's net.Listen reads it). */
export function parseHostPort(flag: string, raw: string, defaultHost: string, allowZero = false): HostPort {
  const i = raw.lastIndexOf(":");
  if (i < 0) throw new UsageError(`${flag} "${raw}": want host:port, e.g. 127.0.0.1:8080`);
  let host = raw.slice(0, i);
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  if (host === "") host = defaultHost;
  if (/\s/.test(host)) throw new UsageError(`${flag} "${raw}": "${host}" is not a host`);
  return { host, port: parsePort(flag, raw, raw.slice(i + 1), allowZero) };
}

/** What `-upstream` accepts before the port, for the error that rejects anything else. */
const UPSTREAM_FORMS = "<name>, <name>.service or <name>.service.<dc>";

/**
 * `-upstream name:port` or `name:host:port`, as Consul's built-in proxy takes it
 * (flag_upstreams.go): the destination is split at its first dot, and what follows must be
 * nothing or `service` (the default type); any other suffix is an error, so `db.foo:8181` is not
 * a service named `db.foo`. `query` (a prepared query, which Consul's built-in proxy executes) is
 * refused: meshproxy does not resolve prepared queries, and reading the name as a service would
 * route to whatever service has it. One extension: `.service.<dc>`, Consul's DNS form, for a
 * destination in another datacenter.
 */
export function parseUpstream(raw: string): UpstreamRequest {
  const parts = raw.split(":");
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => p === "" && parts.length === 2)) {
    throw new UsageError(`-upstream "${raw}": want name:port or name:host:port, e.g. db:8181`);
  }
  const dest = parts[0]!;
  const dot = dest.indexOf(".");
  const name = dot < 0 ? dest : dest.slice(0, dot);
  const suffix = dot < 0 ? "" : dest.slice(dot + 1);
  const typed = /^(service|query)(?:\.([^.]*))?$/.exec(suffix);
  if (suffix !== "" && !typed) {
    throw new UsageError(`-upstream "${raw}": "${dest}" is not a destination Consul accepts (type ".${suffix}"); want ${UPSTREAM_FORMS}, e.g. db.service:8181`);
  }
  const datacenter = typed?.[2];
  if (datacenter !== undefined && !isValidServiceName(datacenter)) throw new UsageError(`-upstream "${raw}": "${datacenter}" is not a datacenter name (letters, digits, - _), e.g. db.service.dc2:8181`);
  if (typed?.[1] === "query") {
    throw new UsageError(`-upstream "${raw}": prepared queries (.query) are not resolved by meshproxy (Consul's built-in proxy executes them with /v1/query/<name>/execute); name the service instead, e.g. ${name}${datacenter !== undefined ? `.service.${datacenter}` : ""}:${parts.slice(1).join(":")}`);
  }
  if (!isValidServiceName(name)) throw new UsageError(`-upstream "${raw}": "${name}" is not a valid service name`);
  const bind = parts.length === 2 ? { host: "127.0.0.1", port: parsePort("-upstream", raw, parts[1]!, true) } : parseHostPort("-upstream", `${parts[1]}:${parts[2]}`, "127.0.0.1", true);
  return { name, bind, ...(datacenter !== undefined ? { datacenter } : {}) };
}

/** Go-style booleans: `-flag`, `-flag=true`, `-flag=false`. Commander passes the preset as a boolean. */
export function parseBool(flag: string): (v: string | boolean) => boolean {
  return (v: string | boolean) => {
    if (typeof v === "boolean") return v;
    const l = v.toLowerCase();
    if (["1", "t", "true", "yes"].includes(l)) return true;
    if (["0", "f", "false", "no"].includes(l)) return false;
    throw new UsageError(`${flag}: "${v}" is not a boolean (true or false)`);
  };
}
