// The public package API. Importing it has no side effects: no flags parsed, no process
// handlers, no timers; each module loads what it needs when it is used.
//
// The library: a Connect-native service in a Node app (README "Use it as a library").
export { Service, type ServiceOptions, type DialOptions, type Peer, type GrpcChannel, type GrpcModule, type GrpcServer } from "./native/service.js";
export { DialError, MeshNameError, NoHealthyUpstreamError } from "./native/errors.js";
export type { AccessLogTarget } from "./telemetry/access-log.js";
export type { MeshGatewayMode } from "./controlplane/chain/entries.js";
export type { AgentClientOptions, AgentTlsOptions } from "./controlplane/consul/client.js";

// The proxy and its parts, for embedding a sidecar or writing a control plane.
export { Proxy, ListenerBindError, type ProxyOptions, type ProxyAddresses } from "./proxy.js";
export {
  ControlPlaneError,
  type ControlPlane,
  type ControlPlaneHandlers,
  type ProxyRequest,
  type UpstreamRequest,
  type Announcement,
} from "./controlplane/controlplane.js";
export { DevControlPlane, type DevControlPlaneOptions } from "./controlplane/dev/dev.js";
export { SplitChangeError, type SplitChangeRefusal, type SubsetWeight } from "./config/split-weights.js";
export type * from "./config/snapshot.js";
export { DEFAULTS } from "./config/snapshot.js";
export { validateSnapshot, SnapshotError } from "./config/validate.js";
export { createRootCa, issueLeaf, serialOf, type CaMaterial, type IssuedLeaf, type LeafRequest } from "./identity/ca.js";
export { serviceSpiffeId, parseServiceSpiffeId, serviceSni, type ServiceId } from "./identity/spiffe.js";
export { authorize, precedence, CompiledIntentions, type Decision } from "./authz/intentions.js";
export { Metrics } from "./telemetry/metrics.js";
export { createLogger, type Logger, type Level } from "./telemetry/log.js";
export { AdminServer, type AdminTarget, type AdminOptions } from "./admin/server.js";
export { MetricsExposition, type AppMetricsOptions } from "./telemetry/merge.js";
export { MetricsServer } from "./telemetry/metrics-server.js";
