// A Consul control plane on the agent double, recording every Snapshot and error it reports:
// for tests that change the double's answers and watch what the control plane makes of them.
import { AgentClient } from "../../src/controlplane/consul/client.js";
import { ConsulControlPlane } from "../../src/controlplane/consul/consul.js";
import type { ControlPlaneError, ProxyRequest } from "../../src/controlplane/controlplane.js";
import type { Snapshot } from "../../src/config/snapshot.js";
import { silentLogger } from "../../src/telemetry/log.js";
import type { ConsulAgentDouble } from "./consul-agent.js";
import type { Teardown } from "./mesh.js";
import { ignoreRejection } from "./ignore.js";

export interface Recorded {
  readonly snapshots: Snapshot[];
  readonly errors: ControlPlaneError[];
}

/** Starts it (short waits and backoff unless given) and records from then on; `started` resolves with the first Snapshot; stopped at teardown. */
export function recordingControlPlane(t: Teardown, d: ConsulAgentDouble, request: ProxyRequest, backoff = { baseMs: 50, maxMs: 500 }): Recorded & { readonly started: Promise<void> } {
  const cp = new ConsulControlPlane({ client: new AgentClient({ httpAddr: d.url }), logger: silentLogger, request, waitMs: 2000, backoff });
  const snapshots: Snapshot[] = [];
  const errors: ControlPlaneError[] = [];
  const started = cp.start({ snapshot: (s) => snapshots.push(s), error: (e) => errors.push(e) });
  t.teardown(async () => {
    await cp.stop();
    await started.catch(ignoreRejection("stopped at teardown"));
  });
  return { snapshots, errors, started };
}

/** recordingControlPlane, resolved after the first Snapshot. */
export async function recordedControlPlane(t: Teardown, d: ConsulAgentDouble, request: ProxyRequest, backoff?: { baseMs: number; maxMs: number }): Promise<Recorded> {
  const { snapshots, errors, started } = recordingControlPlane(t, d, request, backoff);
  await started;
  return { snapshots, errors };
}
