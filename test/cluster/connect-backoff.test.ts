// The back-off arithmetic: doubling from 100 ms to a 10 s cap with ±10 % jitter, one step per
// incident (failures of connects already under way do not escalate it), over at the first success.
import t from "tap";
import { BackingOff, CONNECT_BACKOFF_MAX_MS, backoffMs, recordConnectFailure, recordConnectSuccess, type ConnectBackoffState } from "../../src/cluster/connect-backoff.js";

t.test("doubles from 100 ms and stops at 10 s", async (t) => {
  t.same([1, 2, 3, 4, 5, 6, 7, 8].map(backoffMs), [100, 200, 400, 800, 1600, 3200, 6400, 10_000]);
  t.equal(backoffMs(1000), CONNECT_BACKOFF_MAX_MS, "a host refusing for a long time is tried every 10 s, no overflow");
});

t.test("jitter stays within ±10 %", async (t) => {
  for (const r of [0, 0.5, 0.999]) {
    const h: ConnectBackoffState = { connectFailures: 0, connectRetryAt: 0 };
    recordConnectFailure(h, 1000, () => r);
    t.ok(h.connectRetryAt >= 1000 + 90 && h.connectRetryAt <= 1000 + 110, `random ${r}: until ${h.connectRetryAt}`);
  }
});

t.test("failures during a back-off are the same incident; the next one after it escalates; a success ends it", async (t) => {
  const h: ConnectBackoffState = { connectFailures: 0, connectRetryAt: 0 };
  const mid = () => 0.5;
  recordConnectFailure(h, 0, mid);
  for (let i = 0; i < 20; i++) recordConnectFailure(h, 5, mid);
  t.equal(h.connectFailures, 1, "twenty waiters refused at once count once");
  t.equal(h.connectRetryAt, 100, "and leave the back-off as it was");
  recordConnectFailure(h, 150, mid);
  t.equal(h.connectFailures, 2, "refused again after the back-off: the second in a row");
  t.equal(h.connectRetryAt, 350, "backs off 200 ms");
  recordConnectSuccess(h);
  t.same(h, { connectFailures: 0, connectRetryAt: 0 }, "a success ends the back-off");
});

t.test("BackingOff lists the hosts backing off, and reads the clock only when the set may change", async (t) => {
  const hosts = [
    { key: "a", connectFailures: 1, connectRetryAt: 200 },
    { key: "b", connectFailures: 0, connectRetryAt: 0 },
    { key: "c", connectFailures: 2, connectRetryAt: 50 },
  ];
  const off = new BackingOff();
  let reads = 0;
  const at = (ms: number) => () => (reads++, ms);
  t.equal(off.of(hosts, at(100)), null, "nothing failed yet: none, and no clock read");
  t.equal(reads, 0);
  off.invalidate();
  t.same([...(off.of(hosts, at(100)) ?? [])], ["a"], "a backs off, c's is over");
  t.same([...(off.of(hosts, at(150)) ?? [])], ["a"], "the same set until a's back-off ends");
  t.equal(off.of(hosts, at(300)), null, "none backing off: null");
  reads = 0;
  t.equal(off.of(hosts, at(400)), null, "and it stays null without reading the clock");
  t.equal(reads, 0);
});
