// bench/native.mjs runs both paths (native, and through two sidecars) and reports each.
import t from "tap";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { join } from "node:path";
import { ROOT } from "./helpers/mesh.js";

const run = promisify(execFile);

t.test("the native-vs-sidecar bench measures both paths without errors", async (t) => {
  const { stdout } = await run(process.execPath, [join(ROOT, "bench", "native.mjs"), "--seconds", "1", "--rounds", "1", "--connections", "4"], { timeout: 120_000 });
  const row = (label: string) => new RegExp(`\\| ${label} \\| ([\\d,]+) \\| ([\\d,]+) \\| [\\d.]+ \\| [\\d.]+ \\| (\\d+) \\|`).exec(stdout);
  for (const label of ["\\(a\\) native client → native server \\(2 processes\\)", "\\(b\\) app → sidecar → sidecar → app \\(4 processes\\)"]) {
    const m = row(label);
    t.ok(m, `a row for ${label}`);
    t.ok(Number(m?.[1]?.replace(/,/g, "")) > 0, "requests were answered");
    t.equal(m?.[3], "0", "without errors");
  }
  t.match(stdout, /Native does [\d.]+× the requests per CPU-second of the sidecar path/);
});
