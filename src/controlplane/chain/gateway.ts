// A mesh gateway's local services, as Consul's gateway builds them (agent/xds/endpoints.go,
// endpointsFromServicesAndResolvers): every service is a cluster of all its instances, and
// every subset of its service-resolver a cluster of the instances the subset's filter selects,
// keyed by `[<subset>.]<service>.default.<dc>.internal.<td>`. A resolver's DefaultSubset makes
// the plain name carry that subset's instances. Shared by the dev and Consul gateway sources.
import type { GatewayService } from "../../config/gateway.js";
import { DEFAULTS } from "../../config/snapshot.js";
import { parseMeshSni } from "../../identity/sni.js";
import { serviceSni } from "../../identity/spiffe.js";
import { FilterError } from "./bexpr.js";
import type { EntryLookup } from "./compile.js";
import { EntryError } from "./entries.js";
import { endpointsOf, type ServiceInstance } from "./upstream.js";

export interface GatewayServicesInput {
  readonly trustDomain: string;
  readonly datacenter: string;
  /** The local services of the mesh and their instances (healthy or not), by service name. */
  readonly instances: ReadonlyMap<string, readonly ServiceInstance[]>;
  /** The config entries (only service-resolvers are read). */
  readonly entries: EntryLookup;
}

/**
 * The gateway's local services by SNI. A name that cannot be an SNI label is left out and
 * reported through `problem` (its clients could not name it anyway); a subset filter that does
 * not compile throws (the entries do not fit together: the previous table stays).
 */
export function gatewayServices(input: GatewayServicesInput, problem: (message: string) => void): Map<string, GatewayService> {
  const td = input.trustDomain.toLowerCase();
  const dc = input.datacenter.toLowerCase();
  const out = new Map<string, GatewayService>();
  const add = (sni: string, what: string, service: GatewayService): void => {
    const check = parseMeshSni(sni, td);
    if (check.kind !== "service") {
      problem(`${what} is not routed: its name cannot be an SNI label (${check.kind === "refused" ? check.message : check.kind})`);
      return;
    }
    out.set(sni, service);
  };
  for (const [name, instances] of input.instances) {
    const entry = input.entries.get("service-resolver", name);
    const resolver = entry?.kind === "service-resolver" ? entry : undefined;
    const timeout = resolver?.connectTimeoutMs !== undefined ? { connectTimeoutMs: resolver.connectTimeoutMs } : {};
    const sni = (subset?: string): string => serviceSni(name.toLowerCase(), DEFAULTS.namespace, dc, td, subset?.toLowerCase());
    let plain: GatewayService = { endpoints: endpointsOf({ filter: "", onlyPassing: false }, instances), ...timeout };
    for (const [subset, def] of Object.entries(resolver?.subsets ?? {})) {
      let endpoints: GatewayService["endpoints"];
      try {
        endpoints = endpointsOf(def, instances);
      } catch (e) {
        if (e instanceof FilterError) throw new EntryError(`service-resolver "${name}" subset "${subset}"`, `Filter: ${e.message}`);
        throw e;
      }
      const service = { endpoints, ...timeout };
      add(sni(subset), `subset ${JSON.stringify(subset)} of service ${JSON.stringify(name)}`, service);
      if (subset === resolver?.defaultSubset) plain = service;
    }
    add(sni(), `service ${JSON.stringify(name)}`, plain);
  }
  return out;
}
