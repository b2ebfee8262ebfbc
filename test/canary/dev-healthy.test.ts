// `meshproxy canary` on the dev control plane with real sidecars at a steady 200 req/s: a
// healthy v2 reaches 100 % with no failed request.
import t from "tap";
import { load } from "../helpers/l7.js";
import { canary, canaryMesh, splitter, weightOf } from "./mesh.js";

// The machine running the suite is shared and loaded (p99 of a healthy hop can reach a second),
// so the healthy and error-rate runs give p99 room (-max-p99 5s): they test the error rate and
// the steps. The slow run keeps 250ms against a v2 that takes 600ms for every request.
const FLAGS = ["-from", "v1", "-to", "v2", "-steps", "5,25,50,100", "-interval", "1s", "-max-error-rate", "0.01", "-max-p99", "5s", "-min-requests", "20"];

t.test("a healthy v2 reaches 100% with zero failed requests at 200 req/s", async (t) => {
  const { dir, url, v2 } = await canaryMesh(t);
  const gen = load(url, 200);
  const c = canary(t, dir, FLAGS);
  const code = await c.exited;
  const result = await gen.stop();
  t.equal(code, 0, `exit 0; stderr: ${c.stderrText()}`);
  t.same(result.errors, [], `not one of ${result.sent} requests failed`);
  const s = await splitter(dir);
  t.equal(weightOf(s, "v2"), 100, "v2 takes 100%");
  t.equal(s?.Meta["meshproxy-canary-status"], "done");
  const decisions = c.logs.filter((l) => l["@message"] === "canary decision");
  t.same([...new Set(decisions.filter((d) => d["decision"] === "pass").map((d) => d["weight"]))], [5, 25, 50, 100], "every step passed, in order");
  for (const d of decisions) t.ok(typeof d["requests"] === "number" && "error_rate" in d && "p99_ms" in d, "each decision carries its figures");
  t.match(c.stdoutText(), /result: done/, "the summary table ends with the result");
  t.ok(v2.served > 100, `v2 served ${v2.served} requests`);
});
