// -register: the proxy registers itself in the local agent as Consul's built-in proxy does
// (a connect-proxy service with a TTL check kept passing by a heartbeat), and deregisters on
// shutdown.
import type { HostPort } from "../../config/snapshot.js";
import type { UpstreamRequest } from "../controlplane.js";
import { logRejection, type Logger } from "../../telemetry/log.js";
import type { AgentClient } from "./client.js";

/** The TTL check's output while the health check is failed through the admin API. */
const FAILED_NOTE = "health check failed through the admin API (POST /healthcheck/fail); POST /healthcheck/ok passes it again";

export interface RegistrarOptions {
  readonly client: AgentClient;
  readonly logger: Logger;
  readonly service: string;
  readonly idSuffix: string | undefined;
  readonly address: string;
  readonly port: number;
  readonly localApp: HostPort;
  readonly upstreams: readonly UpstreamRequest[];
  readonly node: string;
  /** Service metadata (-meta); subset filters select on it. */
  readonly meta?: Readonly<Record<string, string>>;
  /** A Connect-native service (`Connect.Native`), registered under its own name, not a proxy. */
  readonly native?: boolean;
  /** Consul's: TTL 30 s, heartbeat every TTL/3. */
  readonly ttlMs?: number;
}

export class ProxyRegistrar {
  readonly id: string;
  readonly checkId: string;
  private heartbeat: NodeJS.Timeout | null = null;
  /** POST /healthcheck/fail: the heartbeat fails the TTL check instead of passing it. */
  private failed = false;

  constructor(private readonly o: RegistrarOptions) {
    this.id = `${o.service}${o.native ? "" : "-proxy"}${o.idSuffix ? `-${o.idSuffix}` : ""}`;
    this.checkId = `${this.id}-ttl`;
  }

  private get ttlMs(): number {
    return this.o.ttlMs ?? 30_000;
  }

  body(): unknown {
    const check = { CheckID: this.checkId, Name: this.o.native ? "native service heartbeat" : "proxy heartbeat", TTL: `${Math.round(this.ttlMs / 1000)}s`, Status: this.failed ? "critical" : "passing" };
    if (this.o.native) {
      // Consul's native apps: the service itself, found by /v1/health/connect/<name> like a sidecar.
      return { ID: this.id, Name: this.o.service, Address: this.o.address, Port: this.o.port, ...(this.o.meta ? { Meta: this.o.meta } : {}), Connect: { Native: true }, Check: check };
    }
    return {
      Kind: "connect-proxy",
      ID: this.id,
      Name: `${this.o.service}-proxy`,
      Address: this.o.address,
      Port: this.o.port,
      ...(this.o.meta ? { Meta: this.o.meta } : {}),
      Proxy: {
        DestinationServiceName: this.o.service,
        LocalServiceAddress: this.o.localApp.host,
        LocalServicePort: this.o.localApp.port,
        Upstreams: this.o.upstreams.map((u) => ({
          DestinationType: "service",
          DestinationName: u.name,
          LocalBindAddress: u.bind.host,
          LocalBindPort: u.bind.port,
          ...(u.datacenter ? { Datacenter: u.datacenter } : {}),
        })),
      },
      Check: check,
    };
  }

  async register(): Promise<void> {
    await this.o.client.call("PUT", "/v1/agent/service/register", { body: this.body() });
    this.o.logger.info("registered proxy in the Consul agent", { id: this.id, address: `${this.o.address === "" ? "(the node's address)" : this.o.address}:${this.o.port}` });
    this.heartbeat = setInterval(() => {
      this.beat().catch(logRejection(this.o.logger, "re-registering after a failed heartbeat", "warn"));
    }, Math.max(1000, this.ttlMs / 3));
    this.heartbeat.unref();
  }

  /**
   * Fails (true) or passes (false) the TTL check from now on: at once when registered, then at
   * every heartbeat, and in a re-registration after the agent lost it.
   */
  async setHealthCheckFailed(failed: boolean): Promise<void> {
    this.failed = failed;
    if (this.heartbeat) await this.beat();
  }

  private async beat(): Promise<void> {
    const check = encodeURIComponent(this.checkId);
    try {
      if (this.failed) await this.o.client.call("PUT", `/v1/agent/check/fail/${check}`, { query: { note: FAILED_NOTE } });
      else await this.o.client.call("PUT", `/v1/agent/check/pass/${check}`);
    } catch (e) {
      // The agent may have restarted and lost the registration: put it back.
      this.o.logger.warn("heartbeat failed; re-registering", { id: this.id, error: (e as Error).message });
      await this.o.client.call("PUT", "/v1/agent/service/register", { body: this.body() });
    }
  }

  async deregister(): Promise<void> {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
    for (let attempt = 1; attempt <= 3; attempt++) {
      try {
        await this.o.client.call("PUT", `/v1/agent/service/deregister/${encodeURIComponent(this.id)}`);
        this.o.logger.info("deregistered proxy from the Consul agent", { id: this.id });
        return;
      } catch (e) {
        if (attempt === 3) this.o.logger.warn("could not deregister from the Consul agent", { id: this.id, error: (e as Error).message });
        else await new Promise((r) => setTimeout(r, 500));
      }
    }
  }
}
