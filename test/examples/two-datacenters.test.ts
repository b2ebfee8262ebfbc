// The examples run as a user would run them, one file per long-running example: each gets tap's
// whole per-file limit (180 s) for itself rather than sharing it with the others (together they
// took ~70 s of it in CI, and the canary example alone is allowed 150 s).
// This file: the two-datacenters example.
import t from "tap";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { join } from "node:path";
import { ROOT } from "../helpers/mesh.js";

const run = promisify(execFile);

t.test("the two-datacenters example carries TCP and HTTP across mesh gateways in modes local and remote, then stops everything", async (t) => {
  const { stdout } = await run(process.execPath, [join(ROOT, "examples", "two-datacenters", "run.mjs")], { timeout: 90_000 });
  t.match(stdout, /mode local: web → gateway dc1 → gateway dc2/);
  t.match(stdout, /mode remote: web → gateway dc2/);
  t.equal((stdout.match(/ ok$/gm) ?? []).length, 4, "TCP and HTTP in both modes");
  t.match(stdout, /meshproxy_gateway_forwarded_total\{envoy_cluster_name="dc2\.internal\.[^"]+"\} 2/, "gateway dc1 passed the two local-mode connections to dc2");
  t.match(stdout, /4 of 4 crossed\nstopped everything/);
});
