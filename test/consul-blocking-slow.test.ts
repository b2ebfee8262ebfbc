// A first call the agent never answers (a hung agent, or -http-addr naming something that
// accepts and says nothing) is said after 10 s, not only at the blocking call's deadline (over
// five minutes) with the proxy silent and not ready meanwhile. A blocking call that holds is the
// agent's normal wait and is not reported.
import t from "tap";
import { ConsulAgentDouble } from "./helpers/consul-agent.js";
import { AgentClient } from "../src/controlplane/consul/client.js";
import { BlockingQuery } from "../src/controlplane/consul/blocking.js";
import { until } from "./helpers/l7.js";

t.test("a first call with no answer is reported as slow, once, while it goes on; a blocking call that holds is not", async (t) => {
  const d = await ConsulAgentDouble.start();
  t.teardown(() => d.stop());
  d.fault("/v1/agent/connect/ca/roots", "stall");
  const client = new AgentClient({ httpAddr: d.url });
  t.teardown(() => client.close());
  const slow: number[] = [];
  const values: unknown[] = [];
  const q = new BlockingQuery<unknown>({
    client,
    path: "/v1/agent/connect/ca/roots",
    mode: "index",
    parse: (b) => b,
    onValue: (v) => values.push(v),
    onError: () => {},
    onSlow: (ms) => slow.push(ms),
    slowMs: 300,
    waitMs: 5000,
  });
  q.start();
  t.teardown(() => q.stop());
  await until(() => slow.length > 0, 5000, "the slow report");
  t.same(slow, [300], "said once, with how long it waited");
  t.equal(values.length, 0, "no answer yet");
  d.fault("/v1/agent/connect/ca/roots", "none");
  await until(() => values.length === 1, 5000, "the answer once the agent gives it");
  // Now a blocking call holds (up to waitMs): the agent's normal wait, not slowness.
  await new Promise((r) => setTimeout(r, 1000));
  t.same(slow, [300], "a blocking call that holds is not reported");
});
