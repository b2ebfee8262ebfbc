// A drained HTTP instance must not fail its callers' requests. Found by the soak harness
// (bench/soak, the drain fault): the draining sidecar closed idle keep-alive connections as soon as
// it had deregistered, while the callers, not yet told, were still sending requests on them; each
// request already on its way failed with 503 UF (its bytes had left, so it is not retried).
import t from "tap";
import { startSidecar, tempDir } from "../helpers/mesh.js";
import { configWrite, httpApp, load, until } from "../helpers/l7.js";

t.test("SIGTERM on one of two HTTP instances under keep-alive load fails no request", async (t) => {
  const dir = await tempDir(t);
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  const a1 = await httpApp(t, "a1");
  const a2 = await httpApp(t, "a2");
  const api1 = await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${a1.port}`, "-drain-timeout", "10s"]);
  await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${a2.port}`, "-drain-timeout", "10s"]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"]);
  const traffic = load(`http://${web.upstreams["api"]}/`, 300);
  let stopped = false;
  t.teardown(() => (stopped ? undefined : traffic.stop().then(() => undefined)));
  await until(() => a1.served > 50 && a2.served > 50, 15_000, "both instances serving");
  traffic.reset();

  api1.child.kill("SIGTERM");
  const exited = await api1.exited;
  t.equal(exited, 0, "the drained instance exits 0");
  // Past the drain: the callers have moved to the other instance. The tally checked below is only
  // of requests sent since reset(), so it is what must have grown: a backlog sent before reset()
  // (the generator catches up in bursts when this process was starved) can make up a2's 150.
  const afterDrain = a2.served;
  await until(() => a2.served > afterDrain + 150 && traffic.snapshot().sent > 150, 15_000, "requests after the drain");
  stopped = true;
  const r = await traffic.stop();
  t.ok(r.sent > 150, `load ran through the drain (${r.sent} requests)`);
  t.same(r.errors, [], `no request failed (${r.errors.length} did)`);
  t.equal(r.byStatus[200], r.sent, "every request was answered 200");
});
