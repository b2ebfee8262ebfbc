import t from "tap";
import { OutlierDetector, availableHosts } from "../../src/cluster/outlier.js";
import { DEFAULT_OUTLIER_DETECTION, type OutlierDetection } from "../../src/config/http.js";

/** A clock the test moves by hand. */
function clock(start = 1_000_000): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return { now: () => t, advance: (ms) => void (t += ms) };
}

function keys(n: number): string[] {
  return Array.from({ length: n }, (_, i) => `10.0.0.${i + 1}:8080`);
}

function detector(config: Partial<OutlierDetection> = {}, hosts = 10, c = clock(), random: () => number = () => 0.5): { d: OutlierDetector; c: ReturnType<typeof clock>; hosts: string[] } {
  const d = new OutlierDetector({ ...DEFAULT_OUTLIER_DETECTION, ...config }, c.now, random);
  const ks = keys(hosts);
  d.setHosts(ks);
  return { d, c, hosts: ks };
}

function fail(d: OutlierDetector, key: string, times: number, status = 500): void {
  for (let i = 0; i < times; i++) d.reportResult(key, { status });
}

t.test("five consecutive 5xx eject the host (10 hosts, default 10% cap)", async (t) => {
  const { d, hosts } = detector();
  const a = hosts[0]!;
  const ejected: string[] = [];
  d.onEject = (k) => ejected.push(k);
  fail(d, a, 4);
  t.notOk(d.isEjected(a), "four are not enough");
  d.reportResult(a, { status: 503 });
  t.ok(d.isEjected(a), "the fifth ejects");
  t.same(ejected, [a]);
  t.notOk(d.isEjected(hosts[1]!));
  t.match(d.stats, { ejectionsActive: 1, ejectionsTotal: 1, ejectionsDetectedConsecutive5xx: 1, ejectionsEnforcedConsecutive5xx: 1, ejectionsOverflow: 0 });
  t.equal(d.ejectionTimeMs(a), 30_000, "first ejection lasts the base time");
});

t.test("a success in between resets the count", async (t) => {
  const { d, hosts } = detector();
  const a = hosts[0]!;
  fail(d, a, 4);
  d.reportResult(a, { status: 200 });
  fail(d, a, 4);
  t.notOk(d.isEjected(a));
  d.reportResult(a, { status: 404 });
  fail(d, a, 4);
  t.notOk(d.isEjected(a), "a 4xx is a success for outlier detection");
  fail(d, a, 1);
  t.ok(d.isEjected(a), "five in a row after the last success");
});

t.test("local-origin failures (connect failure, reset, timeout) count as 5xx", async (t) => {
  const { d, hosts } = detector();
  const a = hosts[0]!;
  d.reportResult(a, { localOriginFailure: true });
  d.reportResult(a, { localOriginFailure: true });
  fail(d, a, 2);
  t.notOk(d.isEjected(a));
  d.reportResult(a, { localOriginFailure: true });
  t.ok(d.isEjected(a));
});

t.test("a result with neither status nor failure changes nothing; unknown hosts are ignored", async (t) => {
  const { d, hosts } = detector();
  const a = hosts[0]!;
  fail(d, a, 4);
  d.reportResult(a, {});
  fail(d, a, 1);
  t.ok(d.isEjected(a), "{} did not reset the run");
  d.reportResult("10.9.9.9:1", { status: 500 });
  t.notOk(d.isEjected("10.9.9.9:1"));
});

t.test("consecutive gateway failures", async (t) => {
  t.test("are not counted while enforcement is 0 (Envoy's default)", async (t) => {
    const { d, hosts } = detector({ consecutive5xx: 100 });
    fail(d, hosts[0]!, 10, 503);
    t.notOk(d.isEjected(hosts[0]!));
    t.equal(d.stats.ejectionsDetectedGatewayFailure, 0);
  });

  t.test("eject after 5 × 502/503/504 when enforcing", async (t) => {
    const { d, hosts } = detector({ consecutive5xx: 100, enforcingConsecutiveGatewayFailure: 100 });
    const a = hosts[0]!;
    d.reportResult(a, { status: 502 });
    d.reportResult(a, { status: 503 });
    d.reportResult(a, { localOriginFailure: true });
    d.reportResult(a, { status: 504 });
    t.notOk(d.isEjected(a));
    d.reportResult(a, { status: 503 });
    t.ok(d.isEjected(a));
    t.match(d.stats, { ejectionsDetectedGatewayFailure: 1, ejectionsEnforcedGatewayFailure: 1, ejectionsEnforcedConsecutive5xx: 0, ejectionsTotal: 1 });
  });

  t.test("another 5xx breaks the run", async (t) => {
    const { d, hosts } = detector({ consecutive5xx: 100, enforcingConsecutiveGatewayFailure: 100 });
    const a = hosts[0]!;
    fail(d, a, 4, 503);
    d.reportResult(a, { status: 500 });
    fail(d, a, 4, 503);
    t.notOk(d.isEjected(a));
    fail(d, a, 1, 503);
    t.ok(d.isEjected(a));
  });

  t.test("when both trip on the same response, the gateway detector ejects (as in Envoy)", async (t) => {
    const { d, hosts } = detector({ enforcingConsecutiveGatewayFailure: 100 });
    fail(d, hosts[0]!, 5, 503);
    t.match(d.stats, { ejectionsEnforcedGatewayFailure: 1, ejectionsDetectedConsecutive5xx: 0, ejectionsActive: 1 });
  });
});

t.test("max ejection percent gate", async (t) => {
  t.test("2 hosts at 10%: nothing is ejected, the refusal is counted", async (t) => {
    const { d, hosts } = detector({ maxEjectionPercent: 10 }, 2);
    fail(d, hosts[0]!, 5);
    t.notOk(d.isEjected(hosts[0]!));
    t.match(d.stats, { ejectionsOverflow: 1, ejectionsDetectedConsecutive5xx: 1, ejectionsEnforcedConsecutive5xx: 0, ejectionsActive: 0 });
    fail(d, hosts[0]!, 4);
    t.equal(d.stats.ejectionsOverflow, 1, "the run restarts after a refused detection");
  });

  t.test("2 hosts at 100%: one is ejected, then the other too", async (t) => {
    const { d, hosts } = detector({ maxEjectionPercent: 100 }, 2);
    fail(d, hosts[0]!, 5);
    t.ok(d.isEjected(hosts[0]!));
    fail(d, hosts[1]!, 5);
    t.ok(d.isEjected(hosts[1]!));
  });

  t.test("2 hosts at 50%: the first fits, the second would make 100%", async (t) => {
    const { d, hosts } = detector({ maxEjectionPercent: 50 }, 2);
    fail(d, hosts[0]!, 5);
    fail(d, hosts[1]!, 5);
    t.ok(d.isEjected(hosts[0]!));
    t.notOk(d.isEjected(hosts[1]!));
    t.equal(d.stats.ejectionsOverflow, 1);
  });
});

t.test("enforcement percentage is a roll", async (t) => {
  const draws = [0.6, 0.4];
  let i = 0;
  const { d, hosts } = detector({ enforcingConsecutive5xx: 50 }, 10, clock(), () => draws[i++] ?? 0);
  fail(d, hosts[0]!, 5);
  t.notOk(d.isEjected(hosts[0]!), "roll 60 ≥ 50: detected, not enforced");
  t.match(d.stats, { ejectionsDetectedConsecutive5xx: 1, ejectionsEnforcedConsecutive5xx: 0 });
  fail(d, hosts[0]!, 5);
  t.ok(d.isEjected(hosts[0]!), "roll 40 < 50: enforced");
  t.match(d.stats, { ejectionsDetectedConsecutive5xx: 2, ejectionsEnforcedConsecutive5xx: 1 });
});

t.test("sweep un-ejects after the ejection time; repeat ejections last longer, up to max", async (t) => {
  const { d, c, hosts } = detector({ baseEjectionTimeMs: 1000, maxEjectionTimeMs: 2500, intervalMs: 100 });
  const a = hosts[0]!;
  const unejected: string[] = [];
  d.onUneject = (k) => unejected.push(k);

  /** Sweeps every interval until the host is back; returns how long that took. */
  const timeToReturn = (): number => {
    let waited = 0;
    while (d.isEjected(a)) {
      if (waited > 10_000) throw new Error(`${a} still ejected after ${waited} ms`);
      c.advance(100);
      waited += 100;
      d.sweep();
    }
    return waited;
  };

  fail(d, a, 5);
  t.equal(d.ejectionTimeMs(a), 1000);
  c.advance(900);
  d.sweep();
  t.ok(d.isEjected(a), "not before base");
  c.advance(100);
  d.sweep();
  t.notOk(d.isEjected(a), "back at base");
  t.same(unejected, [a]);
  t.equal(d.stats.ejectionsActive, 0);

  fail(d, a, 5);
  t.equal(d.ejectionTimeMs(a), 2000, "second ejection in a row: base × 2");
  t.equal(timeToReturn(), 2000);
  fail(d, a, 5);
  t.equal(d.ejectionTimeMs(a), 2500, "third: base × 3 capped at max");
  t.equal(timeToReturn(), 2500);
  fail(d, a, 5);
  t.equal(d.ejectionTimeMs(a), 2500, "stays at max");
  t.equal(timeToReturn(), 2500);
  t.equal(d.stats.ejectionsTotal, 4);
});

t.test("a host that stays in service forgets earlier ejections, one per sweep", async (t) => {
  const { d, c, hosts } = detector({ baseEjectionTimeMs: 1000, maxEjectionTimeMs: 10_000 });
  const a = hosts[0]!;
  fail(d, a, 5);
  c.advance(1000);
  d.sweep();
  fail(d, a, 5);
  t.equal(d.ejectionTimeMs(a), 2000, "multiplier 2");
  c.advance(2000);
  d.sweep();
  t.notOk(d.isEjected(a));
  d.sweep();
  fail(d, a, 5);
  t.equal(d.ejectionTimeMs(a), 2000, "one healthy sweep took it from 2 to 1, this ejection makes 2 again");
  c.advance(2000);
  d.sweep();
  d.sweep();
  d.sweep();
  d.sweep();
  fail(d, a, 5);
  t.equal(d.ejectionTimeMs(a), 1000, "floor 0, so the next ejection is back to base");
});

t.test("counters reset when a host returns", async (t) => {
  const { d, c, hosts } = detector({ baseEjectionTimeMs: 1000 });
  const a = hosts[0]!;
  fail(d, a, 5);
  // Errors while ejected (traffic still reaches it in panic mode) must not carry over.
  fail(d, a, 4);
  c.advance(1000);
  d.sweep();
  t.notOk(d.isEjected(a));
  fail(d, a, 1);
  t.notOk(d.isEjected(a), "one new error does not re-eject");
  fail(d, a, 4);
  t.ok(d.isEjected(a), "a full new run does");
});

t.test("setHosts keeps the state of hosts that remain and drops the others", async (t) => {
  const { d, hosts } = detector({ maxEjectionPercent: 100 }, 3);
  const [a, b, c] = [hosts[0]!, hosts[1]!, hosts[2]!];
  fail(d, a, 5);
  fail(d, b, 5);
  fail(d, c, 3);
  t.equal(d.stats.ejectionsActive, 2);
  const gen = d.generation;
  d.setHosts([a, c, "10.0.0.9:8080"]);
  t.ok(d.isEjected(a), "remaining host stays ejected");
  t.notOk(d.isEjected(b), "dropped host is forgotten");
  t.equal(d.stats.ejectionsActive, 1);
  t.not(d.generation, gen, "the ejected set changed");
  fail(d, c, 2);
  t.ok(d.isEjected(c), "remaining host kept its error count (3 + 2)");
  fail(d, "10.0.0.9:8080", 4);
  t.notOk(d.isEjected("10.0.0.9:8080"), "new host starts clean");
});

t.test("availableHosts", async (t) => {
  interface H {
    key: string;
    healthy: boolean;
  }
  const hosts: H[] = keys(4).map((key) => ({ key, healthy: true }));
  const healthy = (h: H): boolean => h.healthy;
  const { d } = detector({ maxEjectionPercent: 100 }, 0);
  d.setHosts(hosts.map((h) => h.key));

  const all = availableHosts(hosts, d, healthy, 50);
  t.equal(all.hosts, hosts, "nothing filtered: the same array, no copy");
  t.equal(all.panic, false);
  t.equal(availableHosts(hosts, null, healthy, 50).hosts, hosts, "no detector");

  hosts[0]!.healthy = false;
  fail(d, hosts[1]!.key, 5);
  const half = availableHosts(hosts, d, healthy, 50);
  t.same(half.hosts.map((h) => h.key), [hosts[2]!.key, hosts[3]!.key], "unhealthy and ejected hosts left out");
  t.equal(half.panic, false, "50% available is not below a 50% threshold");

  const panic = availableHosts(hosts, d, healthy, 51);
  t.equal(panic.panic, true, "below the threshold: panic");
  t.equal(panic.hosts, hosts, "panic uses every host, ejected and unhealthy included");

  hosts[2]!.healthy = false;
  hosts[3]!.healthy = false;
  const none = availableHosts(hosts, d, healthy, 0);
  t.same(none, { hosts: [], panic: false }, "threshold 0: never panic, may be empty");
  t.same(availableHosts([], d, healthy, 50), { hosts: [], panic: false }, "no hosts at all");
});
