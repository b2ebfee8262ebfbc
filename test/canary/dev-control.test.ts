// What an operator does to a running rollout on the dev control plane: pause, resume and abort it
// from another command, and edit the split by hand (the canary stops and never writes over it).
import t from "tap";
import { configWrite } from "../helpers/l7.js";
import { runMeshproxy } from "../helpers/mesh.js";
import { canary, canaryMesh, splitter, weightOf } from "./mesh.js";

const FLAGS = ["-from", "v1", "-to", "v2", "-steps", "5,25,50,100", "-interval", "1s", "-max-error-rate", "0.01", "-max-p99", "5s", "-min-requests", "20"];

t.test("-pause holds the step, -resume continues, -abort rolls back at once", async (t) => {
  const { dir } = await canaryMesh(t);
  // No traffic: step 1 never gets a verdict, so each command lands on a canary that is watching.
  const c = canary(t, dir, FLAGS);
  await c.waitForLog((l) => l["@message"] === "canary decision" && l["decision"] === "wait", 30_000);
  const pause = runMeshproxy(t, ["canary", "-service", "api", "-pause", "-data-dir", dir]);
  t.equal(await pause.exited, 0, `-pause: ${pause.stdoutText()}${pause.stderrText()}`);
  await c.waitForLog((l) => l["@message"] === "rollout paused; holding the split until -resume (or -abort)");
  const held = weightOf(await splitter(dir), "v2");
  await new Promise((r) => setTimeout(r, 2000));
  t.equal(weightOf(await splitter(dir), "v2"), held, `the split holds at ${held}% while paused`);
  t.equal(held, 5, "at step 1");
  t.equal((await splitter(dir))?.Meta["meshproxy-canary-status"], "paused");
  const status = runMeshproxy(t, ["canary", "-service", "api", "-status", "-data-dir", dir]);
  t.equal(await status.exited, 0);
  t.match(status.stdoutText(), /v1 → v2 paused/);
  const resume = runMeshproxy(t, ["canary", "-service", "api", "-resume", "-data-dir", dir]);
  t.equal(await resume.exited, 0);
  await c.waitForLog((l) => l["@message"] === "rollout resumed; this step's window starts over");
  const abort = runMeshproxy(t, ["canary", "-service", "api", "-abort", "-data-dir", dir]);
  t.equal(await abort.exited, 0, `-abort: ${abort.stderrText()}`);
  t.equal(await c.exited, 1, "the running canary stops with 1");
  t.match(c.stdoutText(), /result: aborted/);
  const s = await splitter(dir);
  t.equal(weightOf(s, "v1"), 100, "100% v1");
  t.equal(s?.Meta["meshproxy-canary-status"], "aborted");
  const again = canary(t, dir, FLAGS);
  t.equal(await again.exited, 1, "the same command does not silently retry an aborted rollout");
  t.match(again.stderrText() + again.stdoutText(), /-restart/);
  const restarted = canary(t, dir, [...FLAGS, "-restart"]);
  await restarted.waitForLog((l) => l["@message"] === "canary decision" && l["decision"] === "wait", 30_000);
  t.equal((await splitter(dir))?.Meta["meshproxy-canary-status"], "running", "-restart starts it over");
  t.equal(await restarted.stop(), 1, "SIGTERM stops it with 1");
  t.match(restarted.stdoutText(), /result: interrupted: stopped by a signal; the rollout stays recorded/);
  const left = await splitter(dir);
  t.equal(left?.Meta["meshproxy-canary-status"], "running", "left recorded as running, for the same command to resume");
  t.equal(weightOf(left, "v2"), 5);
});

t.test("a hand edit of the split during the rollout stops the canary without overwriting it", async (t) => {
  const { dir } = await canaryMesh(t);
  // No traffic: the step never gets a verdict, so the canary is waiting when the edit lands.
  const c = canary(t, dir, FLAGS);
  await c.waitForLog((l) => l["@message"] === "canary decision" && l["decision"] === "wait", 30_000);
  await configWrite(t, dir, { Kind: "service-splitter", Name: "api", Splits: [{ Weight: 90, ServiceSubset: "v1" }, { Weight: 10, ServiceSubset: "v2" }] });
  t.equal(await c.exited, 1);
  t.match(c.stdoutText(), /result: conflict: service-splitter "api" was edited by someone else/);
  const s = await splitter(dir);
  t.equal(weightOf(s, "v2"), 10, "the human's 10% stays");
  t.equal(s?.Meta, undefined, "and nothing of the canary's was written over it");
});
