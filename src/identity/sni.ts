// The SNI names Consul gives mesh traffic (agent/connect/sni.go; shared/reference/consul-connect.md
// §3.2, §5), read back into what they name: the names a mesh gateway routes on. Every form is
// anchored on the gateway's own trust domain; anything else is refused with the reason, so a
// name that merely looks close never reaches a cluster.
//
//   [<subset>.]<service>.<namespace>.<datacenter>.internal.<td>               service, default partition
//   [<subset>.]<service>.<namespace>.<partition>.<datacenter>.internal-v1.<td> service, other partition
//   <datacenter>.internal.<td> | <partition>.<datacenter>.internal-v1.<td>     a datacenter's gateways
//   <query>.default.<datacenter>.query.<td>                                    prepared query
//   <service>.<namespace>.<partition>.<peer>.external.<td>                     service exported to a peer

export type MeshSni =
  | {
      readonly kind: "service";
      readonly subset: string | null;
      readonly service: string;
      readonly namespace: string;
      readonly partition: string;
      readonly datacenter: string;
      readonly trustDomain: string;
    }
  | { readonly kind: "datacenter"; readonly partition: string; readonly datacenter: string; readonly trustDomain: string }
  | { readonly kind: "query"; readonly query: string; readonly datacenter: string; readonly trustDomain: string }
  | { readonly kind: "peered"; readonly service: string; readonly namespace: string; readonly partition: string; readonly peer: string; readonly trustDomain: string };

export type SniRefusalReason = "wrong_trust_domain" | "empty_label" | "invalid_label" | "label_count" | "unknown_form";

export interface SniRefusal {
  readonly kind: "refused";
  readonly reason: SniRefusalReason;
  readonly message: string;
}

const DEFAULT_PARTITION = "default";
const LABEL = /^[a-z0-9_-]{1,63}$/;

function refuse(reason: SniRefusalReason, message: string): SniRefusal {
  return { kind: "refused", reason, message };
}

/**
 * Reads `name` (any case: DNS names are case-insensitive) as one of Consul's mesh SNI forms under
 * `trustDomain`. Returns what it names, or a refusal saying what is wrong with it.
 */
export function parseMeshSni(name: string, trustDomain: string): MeshSni | SniRefusal {
  const td = trustDomain.toLowerCase();
  const lower = name.toLowerCase();
  const shown = JSON.stringify(name.length > 300 ? `${name.slice(0, 300)}…` : name);
  if (!lower.endsWith(`.${td}`) || td.length === 0) return refuse("wrong_trust_domain", `SNI ${shown} is not under this mesh's trust domain ${td}`);
  const labels = lower.slice(0, lower.length - td.length - 1).split(".");
  for (const label of labels) {
    if (label.length === 0) return refuse("empty_label", `SNI ${shown} has an empty label`);
    if (!LABEL.test(label)) return refuse("invalid_label", `SNI ${shown}: label ${JSON.stringify(label.slice(0, 80))} is not 1-63 of a-z, 0-9, '-', '_'`);
  }
  const marker = labels.pop()!;
  const n = labels.length;
  const count = (forms: string) => refuse("label_count", `SNI ${shown}: ${n} labels before ".${marker}.${td}", expected ${forms}`);
  switch (marker) {
    case "internal":
      if (n === 1) return { kind: "datacenter", partition: DEFAULT_PARTITION, datacenter: labels[0]!, trustDomain: td };
      if (n === 3 || n === 4) {
        const at = n - 3;
        return { kind: "service", subset: n === 4 ? labels[0]! : null, service: labels[at]!, namespace: labels[at + 1]!, partition: DEFAULT_PARTITION, datacenter: labels[at + 2]!, trustDomain: td };
      }
      return count("<datacenter>, <service>.<namespace>.<datacenter> or <subset>.<service>.<namespace>.<datacenter>");
    case "internal-v1":
      // Consul only writes the -v1 form for partitions other than the default one; reading it
      // for "default" too would give one service two names (and routes two ways to match).
      if ((n === 2 && labels[0] === DEFAULT_PARTITION) || ((n === 4 || n === 5) && labels[n - 2] === DEFAULT_PARTITION)) {
        return refuse("unknown_form", `SNI ${shown}: the default partition is named without a partition label, under ".internal.${td}"`);
      }
      if (n === 2) return { kind: "datacenter", partition: labels[0]!, datacenter: labels[1]!, trustDomain: td };
      if (n === 4 || n === 5) {
        const at = n - 4;
        return { kind: "service", subset: n === 5 ? labels[0]! : null, service: labels[at]!, namespace: labels[at + 1]!, partition: labels[at + 2]!, datacenter: labels[at + 3]!, trustDomain: td };
      }
      return count("<partition>.<datacenter>, <service>.<namespace>.<partition>.<datacenter> or <subset>.<service>.<namespace>.<partition>.<datacenter>");
    case "query":
      if (n !== 3) return count("<query>.default.<datacenter>");
      if (labels[1] !== "default") return refuse("unknown_form", `SNI ${shown}: a prepared query's second label is always "default", not ${JSON.stringify(labels[1])}`);
      return { kind: "query", query: labels[0]!, datacenter: labels[2]!, trustDomain: td };
    case "external":
      if (n !== 4) return count("<service>.<namespace>.<partition>.<peer>");
      return { kind: "peered", service: labels[0]!, namespace: labels[1]!, partition: labels[2]!, peer: labels[3]!, trustDomain: td };
    default:
      return refuse("unknown_form", `SNI ${shown}: ".${marker}.${td}" is not a Consul mesh form (internal, internal-v1, query, external)`);
  }
}

/** The SNI Consul gives `sni`: the inverse of parseMeshSni. */
export function formatMeshSni(sni: MeshSni): string {
  switch (sni.kind) {
    case "service": {
      const subset = sni.subset === null ? "" : `${sni.subset}.`;
      return sni.partition === DEFAULT_PARTITION
        ? `${subset}${sni.service}.${sni.namespace}.${sni.datacenter}.internal.${sni.trustDomain}`
        : `${subset}${sni.service}.${sni.namespace}.${sni.partition}.${sni.datacenter}.internal-v1.${sni.trustDomain}`;
    }
    case "datacenter":
      return sni.partition === DEFAULT_PARTITION ? `${sni.datacenter}.internal.${sni.trustDomain}` : `${sni.partition}.${sni.datacenter}.internal-v1.${sni.trustDomain}`;
    case "query":
      return `${sni.query}.default.${sni.datacenter}.query.${sni.trustDomain}`;
    case "peered":
      return `${sni.service}.${sni.namespace}.${sni.partition}.${sni.peer}.external.${sni.trustDomain}`;
  }
}

/**
 * Envoy's `server_names` match: an exact name, or `*.<suffix>` for any name with one or more
 * labels before `.<suffix>` (a mesh gateway's `*.<dc>.internal.<td>` chain for a remote
 * datacenter). Case-insensitive; a bare `*` or a partial wildcard (`*w.example.com`) matches
 * nothing, as Envoy refuses them.
 */
export function serverNameMatches(pattern: string, name: string): boolean {
  const p = pattern.toLowerCase();
  const n = name.toLowerCase();
  if (!p.startsWith("*")) return p === n && !p.includes("*");
  if (!p.startsWith("*.") || p.length < 3 || p.indexOf("*", 1) !== -1) return false;
  const suffix = p.slice(1);
  if (n.length <= suffix.length || !n.endsWith(suffix)) return false;
  return !n.slice(0, n.length - suffix.length).split(".").includes("");
}
