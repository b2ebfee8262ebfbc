// Consul's way of asking a sidecar for a Prometheus listener: `envoy_prometheus_bind_addr` in the
// proxy registration's Proxy.Config (or in proxy-defaults, which the agent merges in). Envoy reads
// it once, at bootstrap; so do we, from the same agent endpoint the control plane watches.
import type { AgentClient } from "../controlplane/consul/client.js";
import type { HostPort } from "../config/snapshot.js";
import { parseHostPort, UsageError } from "./args.js";

export const PROMETHEUS_BIND_KEY = "envoy_prometheus_bind_addr";

function field(v: unknown, k: string): unknown {
  return typeof v === "object" && v !== null && !Array.isArray(v) ? (Object.entries(v).find(([key]) => key === k)?.[1] ?? null) : null;
}

/** The registration's own id: -proxy-id, or the one connect-proxy whose DestinationServiceID is -sidecar-for. */
async function proxyIdOf(client: AgentClient, proxyId: string | undefined, sidecarFor: string | undefined): Promise<string | null> {
  if (proxyId) return proxyId;
  if (!sidecarFor) return null;
  const res = await client.call("GET", "/v1/agent/services");
  const body = res.body;
  if (typeof body !== "object" || body === null) return null;
  const ids = Object.entries(body)
    .filter(([, svc]) => field(svc, "Kind") === "connect-proxy" && destinationOf(svc) === sidecarFor.toLowerCase())
    .map(([id]) => id);
  return ids.length === 1 ? ids[0]! : null;
}

/**
 * The address Proxy.Config.envoy_prometheus_bind_addr names, or null when the registration has
 * none (or the proxy runs in flags mode, with no registration to read). Throws when the value is
 * there but unusable, naming the key so the operator knows what to fix.
 */
export async function consulPrometheusBindAddr(client: AgentClient, proxyId: string | undefined, sidecarFor: string | undefined): Promise<HostPort | null> {
  const id = await proxyIdOf(client, proxyId, sidecarFor);
  if (id === null) return null;
  const res = await client.call("GET", `/v1/agent/service/${encodeURIComponent(id)}`);
  const v = field(field(field(res.body, "Proxy"), "Config"), PROMETHEUS_BIND_KEY);
  if (v === null || v === "") return null;
  const where = `Proxy.Config.${PROMETHEUS_BIND_KEY} of "${id}"`;
  if (typeof v !== "string") throw new Error(`${where}: want a "host:port" string, got ${JSON.stringify(v)}`);
  try {
    return parseHostPort(where, v, "0.0.0.0", true);
  } catch (e) {
    if (e instanceof UsageError) throw new Error(e.message, { cause: e });
    throw e;
  }
}

/** A registration's Proxy.DestinationServiceID, lower-cased; "" when it is absent or not a string. */
function destinationOf(svc: unknown): string {
  const id = field(field(svc, "Proxy"), "DestinationServiceID");
  return typeof id === "string" ? id.toLowerCase() : "";
}
