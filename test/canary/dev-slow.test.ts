// `meshproxy canary` on the dev control plane with real sidecars at a steady 200 req/s: a v2
// whose p99 is over -max-p99 is rolled back.
import t from "tap";
import { load } from "../helpers/l7.js";
import { canary, canaryMesh, splitter, weightOf } from "./mesh.js";

const FLAGS = ["-from", "v1", "-to", "v2", "-steps", "5,25,50,100", "-interval", "1s", "-max-error-rate", "0.01", "-max-p99", "250ms", "-min-requests", "20"];

t.test("a slow v2 (p99 over the limit) is rolled back", async (t) => {
  const { dir, url, v2 } = await canaryMesh(t);
  v2.delayMs = 600;
  const gen = load(url, 200);
  const c = canary(t, dir, FLAGS);
  const code = await c.exited;
  const result = await gen.stop();
  t.equal(code, 1, "exit 1");
  const failed = c.logs.find((l) => l["@message"] === "canary decision" && l["decision"] === "fail");
  t.ok(Number(failed?.["p99_ms"]) > 250, `p99 ${String(failed?.["p99_ms"])} ms over the limit`);
  t.match(String(failed?.["reason"]), /p99/);
  const s = await splitter(dir);
  t.equal(weightOf(s, "v1"), 100);
  t.equal(s?.Meta["meshproxy-canary-status"], "rolled-back");
  t.same(result.errors, [], "slow is not failed: the client saw no error");
});
