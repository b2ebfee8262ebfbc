// The shutdown signals shared by the sidecar and the gateway commands: the first drains, a
// second exits 1 without draining, and the handlers are gone once the command ends.
import t from "tap";
import { createLogger } from "../src/telemetry/log.js";
import { handleShutdownSignals } from "../src/cli/signals.js";

t.test("first signal drains, second exits 1, dispose removes the handlers", async (t) => {
  const lines: string[] = [];
  const log = createLogger({ level: "info", json: true, write: (l) => lines.push(l) });
  const before = { int: process.listenerCount("SIGINT"), term: process.listenerCount("SIGTERM") };
  const drains: NodeJS.Signals[] = [];
  const exits: number[] = [];
  const signals = handleShutdownSignals(log, (s) => drains.push(s), (code) => exits.push(code));
  t.teardown(() => signals.dispose());
  t.equal(process.listenerCount("SIGTERM"), before.term + 1);
  t.equal(process.listenerCount("SIGINT"), before.int + 1);

  process.emit("SIGTERM", "SIGTERM");
  t.equal(await signals.requested, "SIGTERM", "the first signal is what `requested` resolves with");
  t.same(drains, ["SIGTERM"], "the first signal starts the drain");
  t.same(exits, [], "and does not exit");
  t.equal(signals.received, 1);

  process.emit("SIGINT", "SIGINT");
  t.same(exits, [1], "a second signal (either one) exits 1");
  t.same(drains, ["SIGTERM"], "without draining again");
  t.equal(signals.received, 2);
  t.match(lines.join(""), /shutting down[\s\S]*second signal; exiting without draining/);

  signals.dispose();
  t.equal(process.listenerCount("SIGTERM"), before.term, "SIGTERM handler removed");
  t.equal(process.listenerCount("SIGINT"), before.int, "SIGINT handler removed");
});
