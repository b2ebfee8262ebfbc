// A Proxy in this process, fed Snapshots by a scripted control plane: for tests of how Snapshots
// are compiled and committed, where a child process would only hide the runtime state.
import { createRootCa, issueLeaf, serviceSpiffeId } from "../../src/index.js";
import { Proxy } from "../../src/proxy.js";
import type { ControlPlane, ControlPlaneHandlers } from "../../src/controlplane/controlplane.js";
import type { Cluster, Endpoint, Identity, Snapshot, TrustBundle, UpstreamListener } from "../../src/config/snapshot.js";
import { Metrics } from "../../src/telemetry/metrics.js";
import { createLogger, type Logger } from "../../src/telemetry/log.js";
import type { Teardown } from "./mesh.js";

export const TD = "33333333-4444-5555-6666-777777777777.consul";

/** Delivers the Snapshots a test pushes; announce/withdraw do nothing. */
export class ScriptedControlPlane implements ControlPlane {
  readonly kind = "test";
  private handlers: ControlPlaneHandlers | null = null;

  constructor(private readonly first: Snapshot) {}

  start(h: ControlPlaneHandlers): Promise<void> {
    this.handlers = h;
    h.snapshot(this.first);
    return Promise.resolve();
  }

  push(s: Snapshot): void {
    if (this.handlers === null) throw new Error("push before start");
    this.handlers.snapshot(s);
  }

  announce(): Promise<void> {
    return Promise.resolve();
  }

  withdraw(): Promise<void> {
    return Promise.resolve();
  }

  stop(): Promise<void> {
    return Promise.resolve();
  }
}

/** web's identity and trust: one leaf from a fresh root. */
export async function webIdentity(): Promise<{ identity: Identity; trust: TrustBundle }> {
  const ca = await createRootCa(TD);
  const spiffeId = serviceSpiffeId({ trustDomain: TD, namespace: "default", datacenter: "dc1", service: "web" });
  const leaf = await issueLeaf(ca, { spiffeId, commonName: "web", ttlMs: 3_600_000 });
  return {
    identity: { service: "web", namespace: "default", datacenter: "dc1", trustDomain: TD, spiffeId, certChainPem: leaf.certPem, privateKeyPem: leaf.keyPem, serial: leaf.serial, notBefore: leaf.notBefore, notAfter: leaf.notAfter },
    trust: { trustDomain: TD, rootsPem: [ca.certPem] },
  };
}

export function endpoint(port: number): Endpoint {
  return { host: "127.0.0.1", port, healthy: true, id: `i-${port}`, meta: {} };
}

export function cluster(name: string, ports: readonly number[], over: Partial<Cluster> = {}): Cluster {
  return {
    name,
    service: name,
    namespace: "default",
    datacenter: "dc1",
    sni: `${name}.default.dc1.internal.${TD}`,
    expectedSpiffeId: serviceSpiffeId({ trustDomain: TD, namespace: "default", datacenter: "dc1", service: name }),
    endpoints: ports.map(endpoint),
    ...over,
  };
}

/** A tcp upstream on a port the OS picks (the same bind across Snapshots keeps the listener). */
export function tcpUpstream(name: string, over: Partial<UpstreamListener> = {}): UpstreamListener {
  return { name, bind: { host: "127.0.0.1", port: 0 }, cluster: name, protocol: "tcp", connectTimeoutMs: 5000, idleTimeoutMs: 60_000, ...over };
}

export interface InProcess {
  readonly proxy: Proxy;
  readonly cp: ScriptedControlPlane;
  /** JSON log lines so far, parsed. */
  readonly logs: Array<Record<string, unknown>>;
  /** Pushes `s` and waits until the proxy applied it ("snapshot") or refused it (a rejection log line). */
  deliver(s: Snapshot): Promise<"applied" | "rejected">;
}

/** Starts a proxy on `first`; stopped at teardown. */
export async function startInProcess(t: Teardown, first: Snapshot): Promise<InProcess> {
  const logs: Array<Record<string, unknown>> = [];
  const waiting: Array<(l: Record<string, unknown>) => void> = [];
  const logger: Logger = createLogger({
    level: "info",
    json: true,
    write: (line) => {
      const l = JSON.parse(line) as Record<string, unknown>;
      logs.push(l);
      for (const w of [...waiting]) w(l);
    },
  });
  const cp = new ScriptedControlPlane(first);
  const proxy = new Proxy({ controlPlane: cp, logger, metrics: new Metrics(), drainTimeoutMs: 100, limits: { maxConnections: 64, maxTlsHandshakes: 16 } });
  t.teardown(() => proxy.stop());
  await proxy.start();
  const deliver = (s: Snapshot): Promise<"applied" | "rejected"> =>
    new Promise((resolve) => {
      const onApplied = (applied: Snapshot) => {
        if (applied !== s) return;
        done("applied");
      };
      const onLog = (l: Record<string, unknown>) => {
        if (l["version"] === s.version && String(l["@message"]).startsWith("snapshot rejected")) done("rejected");
        // The old code's catch-all for a commit that threw halfway.
        if (l["version"] === s.version && String(l["@message"]).startsWith("applying a snapshot failed")) done("rejected");
      };
      const done = (r: "applied" | "rejected") => {
        proxy.off("snapshot", onApplied);
        waiting.splice(waiting.indexOf(onLog), 1);
        resolve(r);
      };
      proxy.on("snapshot", onApplied);
      waiting.push(onLog);
      cp.push(s);
    });
  return { proxy, cp, logs, deliver };
}
