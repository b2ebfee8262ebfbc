// -concurrency values: a count, 0 or auto for one worker per CPU (Envoy's default), nothing else.
import t from "tap";
import { availableParallelism } from "node:os";
import { MAX_CONCURRENCY, parseConcurrency } from "../../src/cli/program.js";
import { UsageError } from "../../src/cli/args.js";
import { runMeshproxy, tempDir } from "../helpers/mesh.js";

t.test("counts, 0 and auto", async (t) => {
  t.equal(parseConcurrency("1"), 1, "1: one process, no workers");
  t.equal(parseConcurrency("4"), 4);
  t.equal(parseConcurrency(String(MAX_CONCURRENCY)), MAX_CONCURRENCY, "the most is allowed");
  t.equal(parseConcurrency("0"), availableParallelism(), "0: one per CPU");
  t.equal(parseConcurrency("00"), availableParallelism(), "00 is 0, not zero workers");
  t.equal(parseConcurrency("auto"), availableParallelism(), "auto: one per CPU");
});

t.test("anything else is a usage error naming the flag", async (t) => {
  for (const bad of ["", "two", "-1", "1.5", " 2", "0x2", String(MAX_CONCURRENCY + 1), "1e3", "Auto"]) {
    t.throws(() => parseConcurrency(bad), new UsageError(`-concurrency "${bad}": want a whole number of workers from 1 to ${MAX_CONCURRENCY}, or 0 or auto for one per CPU`), JSON.stringify(bad));
  }
});

t.test("a mesh gateway refuses -concurrency above 1 (it runs on one event loop for now)", async (t) => {
  const p = runMeshproxy(t, ["-gateway", "mesh", "-listen", "127.0.0.1:0", "-concurrency", "2", "-data-dir", await tempDir(t), "-admin-addr", "127.0.0.1:0"]);
  t.equal(await p.exited, 2, "exit 2, a usage error");
  t.equal(p.stderrText(), "meshproxy: -concurrency 2 with -gateway mesh: a mesh gateway runs on one event loop for now; leave -concurrency at 1\n", "one line saying why and what to do");
});
