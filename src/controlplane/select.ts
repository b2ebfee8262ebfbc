// Which control plane serves a process, chosen the same way for the CLI and for a Connect-native
// app: a static file when one is named, else a Consul agent when its address is given (by option
// or CONSUL_HTTP_ADDR), else the dev control plane's state directory. Only the selected
// implementation is loaded (the dev CA's certificate library is not small).
import { ControlPlaneError, type ControlPlane, type ProxyRequest } from "./controlplane.js";
import type { AgentClient, AgentClientOptions, AgentTlsOptions } from "./consul/client.js";
import { sslVerifyFromEnv, tokenSource } from "./consul/env.js";
import { defaultDataDir } from "./dev/state.js";
import type { Logger } from "../telemetry/log.js";
import { readFileSync } from "node:fs";

export type ControlPlaneChoice =
  | { readonly kind: "static"; readonly file: string }
  | {
      readonly kind: "consul";
      readonly agent: AgentClientOptions;
      readonly proxyId?: string;
      readonly sidecarFor?: string;
      readonly register?: { readonly idSuffix?: string };
      readonly native?: boolean;
    }
  | { readonly kind: "dev"; readonly dataDir: string; readonly datacenter?: string };

/**
 * The Consul agent the environment names, as Consul's CLI reads it (CONSUL_HTTP_ADDR, the token
 * and TLS variables), or null when CONSUL_HTTP_ADDR is unset or empty.
 */
export function consulAgentFromEnv(env: NodeJS.ProcessEnv = process.env): AgentClientOptions | null {
  const httpAddr = env["CONSUL_HTTP_ADDR"];
  if (!httpAddr) return null;
  const tokenFile = env["CONSUL_HTTP_TOKEN_FILE"];
  let token = env["CONSUL_HTTP_TOKEN"];
  if (tokenFile) {
    try {
      token = readFileSync(tokenFile, "utf8").trim();
    } catch (e) {
      throw new ControlPlaneError("consul", `CONSUL_HTTP_TOKEN_FILE ${tokenFile}: ${e instanceof Error ? e.message : String(e)}; fix the path or unset it`, true);
    }
  }
  const tls: AgentTlsOptions = {
    ...(env["CONSUL_CACERT"] ? { caFile: env["CONSUL_CACERT"] } : {}),
    ...(env["CONSUL_CAPATH"] ? { caPath: env["CONSUL_CAPATH"] } : {}),
    ...(env["CONSUL_CLIENT_CERT"] ? { clientCert: env["CONSUL_CLIENT_CERT"] } : {}),
    ...(env["CONSUL_CLIENT_KEY"] ? { clientKey: env["CONSUL_CLIENT_KEY"] } : {}),
    ...(env["CONSUL_TLS_SERVER_NAME"] ? { serverName: env["CONSUL_TLS_SERVER_NAME"] } : {}),
    verify: sslVerifyFromEnv(env),
  };
  const source = tokenSource({ token, tokenFile }, env);
  return { httpAddr, ...(token ? { token } : {}), ...(source ? { tokenSource: source } : {}), tls };
}

/** The dev default: MESHPROXY_DATA_DIR, else `./.meshproxy`. */
export function devChoice(dataDir = defaultDataDir(), datacenter?: string): ControlPlaneChoice {
  return { kind: "dev", dataDir, ...(datacenter ? { datacenter } : {}) };
}

/** A client for the agent a Consul choice names; a bad address is a fatal control-plane error. */
export async function agentClient(o: AgentClientOptions): Promise<AgentClient> {
  const { AgentClient } = await import("./consul/client.js");
  try {
    return new AgentClient(o);
  } catch (e) {
    throw new ControlPlaneError("consul", e instanceof Error ? e.message : String(e), true);
  }
}

/** Builds the chosen control plane for `request`. `client` reuses an agent client the caller already made. */
export async function createControlPlane(choice: ControlPlaneChoice, request: ProxyRequest, logger: Logger, client?: AgentClient): Promise<ControlPlane> {
  switch (choice.kind) {
    case "static": {
      const { StaticControlPlane } = await import("./static/static.js");
      return new StaticControlPlane({ file: choice.file, logger });
    }
    case "consul": {
      const { ConsulControlPlane } = await import("./consul/consul.js");
      return new ConsulControlPlane({
        client: client ?? (await agentClient(choice.agent)),
        logger,
        request,
        // As Consul's CLI: -proxy-id (or CONNECT_PROXY_ID) selects agent mode even next to -service.
        ...(choice.proxyId ? { proxyId: choice.proxyId } : {}),
        ...(choice.sidecarFor ? { sidecarFor: choice.sidecarFor } : {}),
        ...(choice.register ? { register: choice.register } : {}),
        ...(choice.native ? { native: true } : {}),
      });
    }
    case "dev": {
      const { DevControlPlane } = await import("./dev/dev.js");
      return new DevControlPlane({ dataDir: choice.dataDir, request, logger, ...(choice.datacenter ? { datacenter: choice.datacenter } : {}) });
    }
  }
}
