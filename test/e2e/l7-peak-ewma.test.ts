// peak_ewma (linkerd2-proxy's latency-aware balancer): one request at a time, so least_request
// sees nothing in flight and cannot tell the hosts apart, while peak-EWMA learns that one answers
// slowly and sends it almost nothing. Round robin on the same pair is the control.
import t from "tap";
import { request } from "undici";
import { startSidecar, tempDir } from "../helpers/mesh.js";
import { configDump, configWrite, httpApp, until } from "../helpers/l7.js";

t.test("peak_ewma keeps sequential traffic off a slow instance; round robin does not", async (t) => {
  const dir = await tempDir(t);
  const fast = await httpApp(t, "fast");
  const slow = await httpApp(t, "slow");
  slow.delayMs = 80;
  await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
  await configWrite(t, dir, { Kind: "service-resolver", Name: "api", LoadBalancer: { Policy: "round_robin" } });
  await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${fast.port}`]);
  await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${slow.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"]);
  const url = `http://${web.upstreams["api"]}/`;
  const policy = async () => {
    const d = (await configDump(web.adminAddr)) as { clusters?: Record<string, { endpoints: unknown[]; lb?: { policy: string } }> };
    return Object.values(d.clusters ?? {}).find((c) => c.endpoints.length === 2)?.lb?.policy;
  };
  await until(async () => (await policy()) === "round_robin", 10_000, "both instances behind a round-robin cluster");

  const run = async (n: number) => {
    const s0 = slow.served;
    for (let i = 0; i < n; i++) await (await request(url)).body.text();
    return slow.served - s0;
  };
  const rr = await run(20);
  t.equal(rr, 10, "round robin: the slow instance gets half of 20 sequential requests");

  await configWrite(t, dir, { Kind: "service-resolver", Name: "api", LoadBalancer: { Policy: "peak_ewma" } });
  await until(async () => (await policy()) === "peak_ewma", 10_000, "the peak_ewma policy to apply");
  const ewma = await run(40);
  t.ok(ewma <= 6, `peak_ewma: the slow instance gets ${ewma} of 40 sequential requests (it learned 80 ms vs ~1 ms)`);
});
