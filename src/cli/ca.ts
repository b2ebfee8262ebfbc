// `meshproxy ca rotate|roots`: the dev control plane's CA roots, as `consul connect ca` and
// /v1/agent/connect/ca/roots show Consul's. Running proxies on the state directory notice a
// rotation within about a second (src/controlplane/dev/dev.ts).
import { X509Certificate } from "node:crypto";
import { rotateCa } from "../controlplane/dev/ca-rotation.js";
import { openStateDir, readCaRoots } from "../controlplane/dev/state.js";
import { stateRefusal } from "./state-command.js";
import { serialOf } from "../identity/serial.js";

export async function runCa(action: "rotate" | "roots", o: { dataDir: string }, out = (s: string) => void process.stdout.write(s)): Promise<number> {
  try {
    await openStateDir(o.dataDir);
    if (action === "rotate") rotate(await rotateCa(o.dataDir), out);
    else await roots(o.dataDir, out);
    return 0;
  } catch (e) {
    return stateRefusal(e);
  }
}

function rotate(r: Awaited<ReturnType<typeof rotateCa>>, out: (s: string) => void): void {
  out(`Rotated the dev CA root.\n`);
  out(`  Active root:   ${r.rootId} (${r.subject}), cross-signed by the previous root\n`);
  out(`  Previous root: ${r.previousId}, still trusted until the next rotation\n`);
  if (r.retiredIds.length > 0) out(`  Retired:       ${r.retiredIds.join(", ")}, no longer trusted\n`);
  out(
    "Running proxies on this -data-dir trust both roots within about a second, then each re-issues its\n" +
      "leaf certificate from the new root within a few seconds (sent with the cross-signed intermediate,\n" +
      "so peers that still trust only the previous root accept it). Rotate again only once every proxy's\n" +
      `/certs shows a leaf issued by the new root: the next rotation stops trusting ${r.previousId}.\n`,
  );
}

async function roots(dataDir: string, out: (s: string) => void): Promise<void> {
  const ca = await readCaRoots(dataDir, { rotated: false });
  const rows = ca.rootsPem.map((pem, i) => {
    const c = new X509Certificate(pem);
    return [serialOf(pem), i === 0 ? "active" : "trusted", c.subject.replace(/\n/g, ", "), new Date(c.validTo).toISOString()];
  });
  const table = [["ID", "State", "Subject", "Not after"], ...rows];
  const widths = table[0]!.map((_, c) => Math.max(...table.map((r) => r[c]!.length)));
  for (const r of table) out(r.map((v, c) => v.padEnd(widths[c]!)).join("  ").trimEnd() + "\n");
}
