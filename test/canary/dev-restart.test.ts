// A canary killed mid-rollout on the dev control plane resumes from the splitter when run again;
// every sidecar, with or without a public listener, lists its admin address for it until it exits.
import t from "tap";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { load } from "../helpers/l7.js";
import { canary, canaryMesh, splitter, weightOf } from "./mesh.js";

const FLAGS = ["-from", "v1", "-to", "v2", "-steps", "5,25,50,100", "-interval", "1s", "-max-error-rate", "0.01", "-max-p99", "5s", "-min-requests", "20"];

t.test("a canary killed mid-rollout resumes from the splitter when run again", async (t) => {
  const { dir, url, web } = await canaryMesh(t);
  // Records are written to a temporary name and renamed: only *.json are records.
  const sidecars = (await readdir(join(dir, "sidecars"))).filter((f) => f.endsWith(".json"));
  t.equal(sidecars.length, 3, "three sidecars list their admin address, web (no public listener) included");
  const webRecord = (await Promise.all(sidecars.map(async (f) => JSON.parse(await readFile(join(dir, "sidecars", f), "utf8")) as { service: string; admin: string }))).find((r) => r.service === "web");
  t.equal(webRecord?.admin, web.adminAddr, "web's admin address");
  const gen = load(url, 100);
  const first = canary(t, dir, FLAGS);
  await first.waitForLog((l) => l["@message"] === "canary step" && l["weight"] === 25, 30_000);
  first.child.kill("SIGKILL");
  await first.exited;
  const s = await splitter(dir);
  t.equal(weightOf(s, "v2"), 25, "the split stays at 25%");
  t.equal(s?.Meta["meshproxy-canary-status"], "running", "recorded as running");
  const second = canary(t, dir, FLAGS);
  const resumed = await second.waitForLog((l) => l["@message"] === "resuming the rollout recorded in the splitter");
  t.equal(resumed["weight"], 25, "resumed at 25%");
  t.equal(await second.exited, 0, "and finished");
  t.notOk(second.logs.some((l) => l["@message"] === "canary decision" && l["weight"] === 5), "step 1 was not run again");
  t.equal(weightOf(await splitter(dir), "v2"), 100);
  const result = await gen.stop();
  t.same(result.errors, [], "no request failed across the restart");
  await web.stop();
  t.notOk((await readdir(join(dir, "sidecars"))).some((f) => f.startsWith("web-")), "web's listing is removed when it exits");
});
