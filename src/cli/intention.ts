// `meshproxy intention create|delete|list|check`, mirroring `consul intention`, against the dev
// control plane's intentions.json. Running proxies pick changes up within about a second.
// Edits are read-modify-write under a lock file, so concurrent commands never lose one.
import { editIntentions, openStateDir, readIntentions, paths } from "../controlplane/dev/state.js";
import { authorize, hasPermissions, precedence, sortByPrecedence } from "../authz/intentions.js";
import { isValidServiceName } from "../config/validate.js";
import type { Intention, IntentionPolicy } from "../config/snapshot.js";
import { UsageError } from "./args.js";
import { stateRefusal } from "./state-command.js";

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
  if (action === "create" && o.allow && o.deny) throw new UsageError("intention create: give -allow or -deny, not both");
  try {
    await openStateDir(o.dataDir);
    return await act(action, src, dst, o, out);
  } catch (e) {
    return stateRefusal(e);
  }
}

async function act(
  action: "create" | "delete" | "list" | "check",
  src: string,
  dst: string,
  o: { dataDir: string; allow: boolean; deny: boolean; replace: boolean; description?: string },
  out: (s: string) => void,
): Promise<number> {
  const file = paths(o.dataDir).intentions;
  const find = (p: IntentionPolicy) => p.intentions.find((it) => it.source === src && it.destination === dst);
  switch (action) {
    case "create": {
      const it: Intention = { source: src, destination: dst, action: o.deny ? "deny" : "allow", ...(o.description ? { description: o.description } : {}) };
      const existing = await editIntentions(o.dataDir, (policy) => {
        const found = find(policy);
        if (found && !o.replace) return { policy: null, result: found };
        return { policy: { ...policy, intentions: [...policy.intentions.filter((x) => x !== found), it] }, result: null };
      });
      if (existing) {
        process.stderr.write(`meshproxy: an intention ${src} => ${dst} (${existing.action}) already exists; use -replace to change it\n`);
        return 1;
      }
      out(`Created: ${src} => ${dst} (${it.action})\n`);
      return 0;
    }
    case "delete": {
      const deleted = await editIntentions(o.dataDir, (policy) => {
        const found = find(policy);
        return found ? { policy: { ...policy, intentions: policy.intentions.filter((x) => x !== found) }, result: true } : { policy: null, result: false };
      });
      if (!deleted) {
        process.stderr.write(`meshproxy: no intention ${src} => ${dst} in ${file}\n`);
        return 1;
      }
      out(`Intention deleted: ${src} => ${dst}\n`);
      return 0;
    }
    case "list": {
      const policy = await readIntentions(o.dataDir);
      // An L7 intention has no action of its own: its permissions decide, request by request.
      const rows = sortByPrecedence(policy.intentions).map((it) => [it.source, "=>", it.destination, hasPermissions(it) ? "L7" : it.action, String(precedence(it)), it.description ?? ""]);
      const table = [["Source", "", "Destination", "Action", "Precedence", "Description"], ...rows];
      const widths = table[0]!.map((_, c) => Math.max(...table.map((r) => r[c]!.length)));
      for (const r of table) out(r.map((v, c) => v.padEnd(widths[c]!)).join("  ").trimEnd() + "\n");
      out(`Default: ${policy.defaultAction} (set "default_action" in ${file})\n`);
      return 0;
    }
    case "check": {
      const d = authorize(await readIntentions(o.dataDir), src, dst);
      out(`${d.allowed ? "Allowed" : "Denied"}: ${d.reason}\n`);
      return d.allowed ? 0 : 2;
    }
  }
}
