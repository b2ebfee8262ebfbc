// The examples run as a user would run them, one file per long-running example: each gets tap's
// whole per-file limit (180 s) for itself rather than sharing it with the others (together they
// took ~70 s of it in CI, and the canary example alone is allowed 150 s).
// This file: the canary example's rollouts.
import t from "tap";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { join } from "node:path";
import { ROOT } from "../helpers/mesh.js";

const run = promisify(execFile);

t.test("the canary example rolls a good v2 out to 100% and rolls a bad one back", async (t) => {
  const { stdout } = await run(process.execPath, [join(ROOT, "examples", "canary", "run.mjs")], { timeout: 150_000 });
  t.match(stdout, /1\. a good v2[\s\S]*result: done: v2 takes 100% of api[\s\S]*exit 0; the client saw \{"200":\d+\}, 0 failed/);
  t.match(stdout, /2\. a bad v2[\s\S]*rolling back: step \d \(\d+%\): error rate[\s\S]*result: rolled-back[\s\S]*exit 1/);
  t.match(stdout, /the split now: v1 100%, v2 0% \(rolled-back\)/);
  t.match(stdout, /good rollout done, bad rollout rolled back; stopped everything/);
});
