// `meshproxy canary` on the dev control plane with real sidecars at a steady 200 req/s: a v2
// that starts failing 5 % of its requests at the 25 % step is rolled back within one interval to
// 100 % v1, and the client saw only the errors of about that window.
import t from "tap";
import { load, until, configDump, splitWeights } from "../helpers/l7.js";
import { canary, canaryMesh, splitter, weightOf } from "./mesh.js";

// The machine running the suite is shared and loaded (p99 of a healthy hop can reach a second),
// so the healthy and error-rate runs give p99 room (-max-p99 5s): they test the error rate and
// the steps. The slow run keeps 250ms against a v2 that takes 600ms for every request.
const FLAGS = ["-from", "v1", "-to", "v2", "-steps", "5,25,50,100", "-interval", "1s", "-max-error-rate", "0.01", "-max-p99", "5s", "-min-requests", "20"];

t.test("v2 returning 5% 500s from the 25% step is rolled back within one interval", async (t) => {
  const { dir, url, v2, web } = await canaryMesh(t);
  const gen = load(url, 200);
  const c = canary(t, dir, FLAGS);
  const step = await c.waitForLog((l) => l["@message"] === "canary step" && l["weight"] === 25, 30_000);
  v2.failEvery = 20;
  const stepAt = Date.parse(String(step["@timestamp"]));
  const code = await c.exited;
  t.equal(code, 1, "exit 1: rolled back");
  const rolled = c.logs.find((l) => l["@message"] === "rolled back");
  t.ok(rolled, "a rolled back line");
  const failed = c.logs.find((l) => l["@message"] === "canary decision" && l["decision"] === "fail");
  t.equal(failed?.["weight"], 25, "the 25% step failed");
  t.ok(Number(failed?.["error_rate"]) > 0.01, `error rate ${String(failed?.["error_rate"])} over the limit`);
  const at25 = c.logs.filter((l) => l["@message"] === "canary decision" && l["weight"] === 25).map((l) => l["decision"]);
  // A window that had not yet reached -min-requests (the sidecars still applying the 25 % split on a
  // loaded machine) says "wait" and judges nothing; the first window that judged must fail.
  t.same(at25.filter((d) => d !== "wait"), ["fail"], "the first judged window of the 25% step failed: rolled back within one interval");
  const elapsed = Date.parse(String(rolled?.["@timestamp"])) - stepAt;
  // One 1 s window per decision at 25% (the failing one and any "wait" before it), plus the reads
  // of the sidecars and the splitter on a loaded machine.
  t.ok(elapsed < 1000 * at25.length + 4000, `rolled back ${elapsed} ms after the 25% step began (${at25.length} window(s) at 25%)`);
  const s = await splitter(dir);
  t.ok(s, "the splitter is still there (never deleted)");
  t.equal(weightOf(s, "v1"), 100, "100% v1");
  t.equal(weightOf(s, "v2"), 0, "0% v2");
  t.equal(s?.Meta["meshproxy-canary-status"], "rolled-back");
  await until(async () => (splitWeights(await configDump(web.adminAddr), "api")["v2"] ?? 0) === 0, 10_000, "web's sidecar to apply the rollback");
  // From here requests go in a tally of their own (one keeps the tally it was sent in, so one sent
  // to v2 before the rollback and answered later is not counted): the next 100 must all be v1's.
  const beforeApplied = gen.snapshot();
  gen.reset();
  await until(() => (gen.snapshot().byBody["v1"] ?? 0) + (gen.snapshot().byBody["v2"] ?? 0) >= 100, 30_000, "100 answers after the rollback was applied");
  const result = await gen.stop();
  t.equal(result.byBody["v2"] ?? 0, 0, `v2 gets nothing once the rollback is applied (${result.byBody["v1"] ?? 0} requests since, all to v1)`);
  const clientErrors = beforeApplied.errors.length + result.errors.length;
  const windowErrors = Number(failed?.["errors"]);
  // What the client saw is the failing window's errors plus those of the second it took web's
  // sidecar to apply the rollback: at 5% of ~50 req/s, a handful.
  t.ok(clientErrors > 0 && clientErrors <= windowErrors * 2 + 3, `the client saw ${clientErrors} errors; the failing window had ${windowErrors}`);
  t.match(c.stdoutText(), /fail/, "the report shows the failing step");
  t.match(c.stdoutText(), /result: rolled-back/);
});
