// `meshproxy intention create|delete|list|check`, mirroring `consul intention`, against the dev
// control plane's intentions.json. Running proxies pick changes up within about a second.
import { readIntentions, writeIntentions, StateError, paths } from "../controlplane/dev/state.js";
import { authorize, hasPermissions, precedence, sortByPrecedence } from "../authz/intentions.js";
import { isValidServiceName } from "../config/validate.js";
import type { Intention } from "../config/snapshot.js";
import { UsageError } from "./args.js";

function checkName(what: string, v: string): void {
  if (v !== "*" && !isValidServiceName(v)) throw new UsageError(`${what} "${v}": want a service name or *`);
}

export async function runIntention(
  action: "create" | "delete" | "list" | "check",
  args: string[],
  o: { dataDir: string; allow: boolean; deny: boolean; replace: boolean; description?: string },
  out = (s: string) => void process.stdout.write(s),
): Promise<number> {
  const [src = "", dst = ""] = args;
  if (action !== "list") {
    checkName("source", src);
    checkName("destination", dst);
  }
  let policy;
  try {
    policy = await readIntentions(o.dataDir);
  } catch (e) {
    if (e instanceof StateError) {
      process.stderr.write(`meshproxy: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
  const file = paths(o.dataDir).intentions;
  const existing = policy.intentions.find((it) => it.source === src && it.destination === dst);
  switch (action) {
    case "create": {
      if (o.allow && o.deny) throw new UsageError("intention create: give -allow or -deny, not both");
      if (existing && !o.replace) {
        process.stderr.write(`meshproxy: an intention ${src} => ${dst} (${existing.action}) already exists; use -replace to change it\n`);
        return 1;
      }
      const it: Intention = { source: src, destination: dst, action: o.deny ? "deny" : "allow", ...(o.description ? { description: o.description } : {}) };
      const rest = policy.intentions.filter((x) => x !== existing);
      await writeIntentions(o.dataDir, { ...policy, intentions: [...rest, it] });
      out(`Created: ${src} => ${dst} (${it.action})\n`);
      return 0;
    }
    case "delete": {
      if (!existing) {
        process.stderr.write(`meshproxy: no intention ${src} => ${dst} in ${file}\n`);
        return 1;
      }
      await writeIntentions(o.dataDir, { ...policy, intentions: policy.intentions.filter((x) => x !== existing) });
      out(`Intention deleted: ${src} => ${dst}\n`);
      return 0;
    }
    case "list": {
      // An L7 intention has no action of its own: its permissions decide, request by request.
      const rows = sortByPrecedence(policy.intentions).map((it) => [it.source, "=>", it.destination, hasPermissions(it) ? "L7" : it.action, String(precedence(it)), it.description ?? ""]);
      const table = [["Source", "", "Destination", "Action", "Precedence", "Description"], ...rows];
      const widths = table[0]!.map((_, c) => Math.max(...table.map((r) => r[c]!.length)));
      for (const r of table) out(r.map((v, c) => v.padEnd(widths[c]!)).join("  ").trimEnd() + "\n");
      out(`Default: ${policy.defaultAction} (set "default_action" in ${file})\n`);
      return 0;
    }
    case "check": {
      const d = authorize(policy, src, dst);
      out(`${d.allowed ? "Allowed" : "Denied"}: ${d.reason}\n`);
      return d.allowed ? 0 : 2;
    }
  }
}
