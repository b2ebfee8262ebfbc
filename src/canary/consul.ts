// The Consul side of a rollout: the splitter through the agent's config-entry API with
// `?cas=<ModifyIndex>` (as `consul config write -cas -modify-index`), and the sidecars to read
// from the catalog: every connect-proxy instance, at the metrics address its registration gives
// in `Proxy.Config.envoy_prometheus_bind_addr` (the key `consul connect envoy` and meshproxy
// read to open their Prometheus listener; a wildcard host means the instance's address).
import { AgentError, type AgentClient } from "../controlplane/consul/client.js";
import { ControlPlaneUnavailable, SplitterError, type SplitterRecord, type SplitterStore } from "./store.js";
import type { MetricsTarget, TargetDirectory, TargetList } from "./observe.js";

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * Down, timing out, or a 5xx about the servers (no leader, an RPC failing): wait for it. A 4xx
 * (a bad token) is the answer. So is a 500 to a write that says something else: Consul refuses an
 * entry its discovery chain cannot compile (a subset the resolver no longer defines) with 500, and
 * retrying that would wait forever.
 */
function classify(e: unknown, what: string, write = false): Error {
  if (e instanceof AgentError) {
    const transient = e.status >= 500 && (!write || e.status !== 500 || /leader|rpc|timeout|timed out|connection|unavailable|EOF/i.test(e.message));
    if (!transient) return new SplitterError(`${what}: ${e.message}`);
  }
  return new ControlPlaneUnavailable(`${what}: ${e instanceof Error ? e.message : String(e)}`);
}

/** Fields the agent adds on read and sets itself on write. */
const SERVER_FIELDS = ["CreateIndex", "ModifyIndex", "Hash"];

export class ConsulSplitterStore implements SplitterStore {
  readonly where: string;

  constructor(
    private readonly client: AgentClient,
    private readonly service: string,
  ) {
    this.where = `the Consul agent at ${client.address}`;
  }

  async read(): Promise<SplitterRecord | null> {
    const path = `/v1/config/service-splitter/${encodeURIComponent(this.service)}`;
    let body: unknown;
    try {
      body = (await this.client.call("GET", path)).body;
    } catch (e) {
      if (e instanceof AgentError && e.status === 404) return null;
      throw classify(e, `reading service-splitter "${this.service}"`);
    }
    if (!isRecord(body)) throw new SplitterError(`GET ${path}: want a config entry object, got ${JSON.stringify(body)?.slice(0, 80)}`);
    const idx = body["ModifyIndex"];
    if (typeof idx !== "number" || !Number.isSafeInteger(idx) || idx < 1) throw new SplitterError(`GET ${path}: ModifyIndex ${JSON.stringify(idx)} is not a positive whole number; cannot write it back safely`);
    const raw: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(body)) if (!SERVER_FIELDS.includes(k)) raw[k] = v;
    return { raw, version: String(idx) };
  }

  async subsets(): Promise<readonly string[] | null> {
    const path = `/v1/config/service-resolver/${encodeURIComponent(this.service)}`;
    let body: unknown;
    try {
      body = (await this.client.call("GET", path)).body;
    } catch (e) {
      if (e instanceof AgentError && e.status === 404) return null;
      throw classify(e, `reading service-resolver "${this.service}"`);
    }
    const subsets = isRecord(body) ? body["Subsets"] : undefined;
    return isRecord(subsets) ? Object.keys(subsets) : [];
  }

  async write(raw: Record<string, unknown>, version: string | null): Promise<boolean> {
    let body: unknown;
    try {
      // cas=0 writes only if the entry does not exist yet.
      body = (await this.client.call("PUT", "/v1/config", { query: { cas: version ?? "0" }, body: raw })).body;
    } catch (e) {
      throw classify(e, `writing service-splitter "${this.service}"`, true);
    }
    if (typeof body !== "boolean") throw new SplitterError(`PUT /v1/config: want true or false, got ${JSON.stringify(body)?.slice(0, 80)}`);
    return body;
  }
}

function str(v: unknown): string | undefined {
  return typeof v === "string" && v !== "" ? v : undefined;
}

export class ConsulTargets implements TargetDirectory {
  constructor(private readonly client: AgentClient) {}

  async list(): Promise<TargetList> {
    const problems: string[] = [];
    const targets: MetricsTarget[] = [];
    let names: string[];
    try {
      const r = await this.client.call("GET", "/v1/catalog/services", { query: { filter: 'ServiceKind == "connect-proxy"' } });
      names = isRecord(r.body) ? Object.keys(r.body) : [];
    } catch (e) {
      return { targets, problems: [`listing connect proxies in the catalog: ${e instanceof Error ? e.message : String(e)}`] };
    }
    for (const name of names.sort()) {
      let nodes: unknown;
      try {
        nodes = (await this.client.call("GET", `/v1/catalog/service/${encodeURIComponent(name)}`)).body;
      } catch (e) {
        problems.push(`reading the instances of ${name}: ${e instanceof Error ? e.message : String(e)}`);
        continue;
      }
      if (!Array.isArray(nodes)) continue;
      for (const n of nodes) {
        if (!isRecord(n)) continue;
        const id = str(n["ServiceID"]) ?? name;
        const proxy = isRecord(n["ServiceProxy"]) ? n["ServiceProxy"] : {};
        const config = isRecord(proxy["Config"]) ? proxy["Config"] : {};
        const bind = str(config["envoy_prometheus_bind_addr"]);
        if (bind === undefined) {
          problems.push(`${id}: its registration has no Proxy.Config.envoy_prometheus_bind_addr, so its figures cannot be read; register it with one`);
          continue;
        }
        const i = bind.lastIndexOf(":");
        let host = i > 0 ? bind.slice(0, i).replace(/^\[|\]$/g, "") : "";
        const port = bind.slice(i + 1);
        if (!/^\d{1,5}$/.test(port)) {
          problems.push(`${id}: envoy_prometheus_bind_addr ${JSON.stringify(bind)} is not host:port`);
          continue;
        }
        if (host === "" || host === "0.0.0.0" || host === "::") host = str(n["ServiceAddress"]) ?? str(n["Address"]) ?? "127.0.0.1";
        targets.push({ id, url: `http://${host.includes(":") ? `[${host}]` : host}:${port}/metrics` });
      }
    }
    return { targets, problems };
  }
}
