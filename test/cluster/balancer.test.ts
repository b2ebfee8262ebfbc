import t from "tap";
import {
  MAGLEV_TABLE_SIZE,
  PeakEwmaBalancer,
  createBalancer,
  hostKey,
  murmur3,
  requestHash,
  ringPointsPerHost,
  type Balancer,
  type HashableRequest,
  type HostState,
} from "../../src/cluster/balancer.js";
import { DEFAULT_LB, type HashPolicy, type LbPolicy, type LoadBalancer } from "../../src/config/http.js";

/** mulberry32: a seeded PRNG so statistical tests give the same numbers every run. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/** Returns the given values in turn, for picks whose every random draw is chosen by the test. */
function scripted(values: readonly number[]): () => number {
  let i = 0;
  return () => {
    const v = values[i % values.length];
    i++;
    if (v === undefined) throw new Error("scripted random source has no values");
    return v;
  };
}

function makeHosts(n: number, from = 1): HostState[] {
  return Array.from({ length: n }, (_, i) => {
    const endpoint = { host: `10.0.0.${from + i}`, port: 8080, healthy: true, id: `i-${from + i}`, meta: {} };
    return { endpoint, key: hostKey(endpoint), activeRequests: 0 };
  });
}

function lb(policy: LbPolicy, extra: Partial<LoadBalancer> = {}): LoadBalancer {
  return { ...DEFAULT_LB, policy, ...extra };
}

function mustPick(b: Balancer, hosts: readonly HostState[], ctx: Parameters<Balancer["pick"]>[1] = {}): HostState {
  const h = b.pick(hosts, ctx);
  if (h === null) throw new Error(`pick returned null from ${hosts.length} hosts`);
  return h;
}

function tally(keys: readonly string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const k of keys) m.set(k, (m.get(k) ?? 0) + 1);
  return m;
}

/** The reference murmur3 over explicit bytes, to check the streaming UTF-8 version against. */
function murmur3Bytes(bytes: Uint8Array, seed: number): number {
  let h = seed | 0;
  const nblocks = bytes.length >> 2;
  for (let i = 0; i < nblocks; i++) {
    let k = (bytes[4 * i] ?? 0) | ((bytes[4 * i + 1] ?? 0) << 8) | ((bytes[4 * i + 2] ?? 0) << 16) | ((bytes[4 * i + 3] ?? 0) << 24);
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  let k = 0;
  const tail = nblocks * 4;
  const rem = bytes.length & 3;
  if (rem === 3) k ^= (bytes[tail + 2] ?? 0) << 16;
  if (rem >= 2) k ^= (bytes[tail + 1] ?? 0) << 8;
  if (rem >= 1) {
    k ^= bytes[tail] ?? 0;
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
  }
  h ^= bytes.length;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

t.test("murmur3 matches the published vectors and hashes the UTF-8 bytes", async (t) => {
  t.equal(murmur3(""), 0);
  t.equal(murmur3("", 1), 0x514e28b7);
  t.equal(murmur3("hello"), 0x248bfa47);
  t.equal(murmur3("The quick brown fox jumps over the lazy dog"), 0x2e4ff723);
  for (const s of ["a", "ab", "abc", "abcd", "abcde", "héllo wörld", "日本語のキー", "emoji 😀 key", "lone \ud800 surrogate", "\udc00", "x\ud83d"]) {
    t.equal(murmur3(s, 42), murmur3Bytes(new TextEncoder().encode(s), 42), JSON.stringify(s));
  }
});

t.test("hostKey brackets IPv6 literals", async (t) => {
  t.equal(hostKey({ host: "10.0.0.1", port: 80 }), "10.0.0.1:80");
  t.equal(hostKey({ host: "::1", port: 80 }), "[::1]:80");
});

t.test("every policy returns null for no hosts", async (t) => {
  for (const policy of ["round_robin", "random", "least_request", "ring_hash", "maglev"] as const) {
    const b = createBalancer(lb(policy), []);
    t.equal(b.pick([], {}), null, policy);
    t.equal(b.pick([], { hash: 7 }), null, policy);
  }
});

t.test("round_robin", async (t) => {
  t.test("visits every host in turn, evenly", async (t) => {
    const hosts = makeHosts(4);
    const b = createBalancer(lb("round_robin"), hosts, seeded(1));
    const picks = Array.from({ length: 400 }, () => mustPick(b, hosts).key);
    for (const [key, n] of tally(picks)) t.equal(n, 100, key);
    for (let i = 0; i + 4 <= picks.length; i += 4) {
      if (new Set(picks.slice(i, i + 4)).size !== 4) t.fail(`picks ${i}..${i + 3} repeat a host: ${picks.slice(i, i + 4).join(" ")}`);
    }
  });

  t.test("skips hosts the request already tried", async (t) => {
    const hosts = makeHosts(3);
    const b = createBalancer(lb("round_robin"), hosts, seeded(2));
    const exclude = new Set([hosts[0]!.key, hosts[1]!.key]);
    for (let i = 0; i < 10; i++) t.equal(mustPick(b, hosts, { exclude }).key, hosts[2]!.key);
  });

  t.test("when every host was tried, still answers (Envoy uses the selected host)", async (t) => {
    const hosts = makeHosts(2);
    const b = createBalancer(lb("round_robin"), hosts, seeded(3));
    t.ok(mustPick(b, hosts, { exclude: new Set(hosts.map((h) => h.key)) }));
  });

  t.test("works over a subset of the hosts it was built for", async (t) => {
    const hosts = makeHosts(4);
    const b = createBalancer(lb("round_robin"), hosts, seeded(4));
    const sub = hosts.slice(1);
    const counts = tally(Array.from({ length: 300 }, () => mustPick(b, sub).key));
    t.same([...counts.values()], [100, 100, 100]);
    t.notOk(counts.has(hosts[0]!.key));
  });
});

t.test("random is roughly uniform and honours exclusion", async (t) => {
  const hosts = makeHosts(4);
  const b = createBalancer(lb("random"), hosts, seeded(5));
  const counts = tally(Array.from({ length: 40_000 }, () => mustPick(b, hosts).key));
  t.equal(counts.size, 4);
  for (const [key, n] of counts) t.ok(Math.abs(n - 10_000) < 500, `${key}: ${n} of 40000, expected about 10000`);
  const exclude = new Set([hosts[3]!.key]);
  const ex = tally(Array.from({ length: 3000 }, () => mustPick(b, hosts, { exclude }).key));
  t.notOk(ex.has(hosts[3]!.key), "the tried host is never picked again");
  t.equal(ex.size, 3);
  for (const [key, n] of ex) t.ok(Math.abs(n - 1000) < 150, `${key}: ${n} of 3000 with one host excluded`);
});

t.test("least_request", async (t) => {
  t.test("of the sampled hosts, the one with fewer active requests wins (injected draws)", async (t) => {
    const hosts = makeHosts(4);
    hosts[0]!.activeRequests = 5;
    hosts[2]!.activeRequests = 1;
    // Draws 0.1 → hosts[0], 0.6 → hosts[2].
    const b = createBalancer(lb("least_request", { choiceCount: 2 }), hosts, scripted([0.1, 0.6]));
    t.equal(mustPick(b, hosts).key, hosts[2]!.key);
    hosts[2]!.activeRequests = 9;
    t.equal(mustPick(b, hosts).key, hosts[0]!.key);
  });

  t.test("P2C: the busy one of two hosts is chosen only when both samples hit it (1/n²)", async (t) => {
    const hosts = makeHosts(2);
    hosts[1]!.activeRequests = 10;
    const b = createBalancer(lb("least_request"), hosts, seeded(6));
    const idle = tally(Array.from({ length: 20_000 }, () => mustPick(b, hosts).key)).get(hosts[0]!.key) ?? 0;
    const share = idle / 20_000;
    t.ok(share > 0.73 && share < 0.77, `idle host share ${share.toFixed(3)}, expected 1 - 1/4`);
  });

  t.test("more choices favour the idle host more strongly", async (t) => {
    const hosts = makeHosts(2);
    hosts[1]!.activeRequests = 10;
    const b = createBalancer(lb("least_request", { choiceCount: 3 }), hosts, seeded(7));
    const share = (tally(Array.from({ length: 20_000 }, () => mustPick(b, hosts).key)).get(hosts[0]!.key) ?? 0) / 20_000;
    t.ok(share > 0.86 && share < 0.89, `idle host share ${share.toFixed(3)}, expected 1 - 1/8`);
  });

  t.test("samples only hosts not yet tried", async (t) => {
    const hosts = makeHosts(3);
    hosts[1]!.activeRequests = 100;
    const b = createBalancer(lb("least_request"), hosts, seeded(8));
    const exclude = new Set([hosts[0]!.key, hosts[2]!.key]);
    for (let i = 0; i < 20; i++) t.equal(mustPick(b, hosts, { exclude }).key, hosts[1]!.key);
  });

  t.test("rejects a choiceCount below 1", async (t) => {
    t.throws(() => createBalancer(lb("least_request", { choiceCount: 0 }), makeHosts(2)), /choiceCount 0/);
  });
});

t.test("ring points per host", async (t) => {
  t.equal(ringPointsPerHost(5, 1024, 8_388_608), 256, "ceil(1024/5)=205, rounded up to a power of two");
  t.equal(ringPointsPerHost(4, 1024, 8_388_608), 256);
  t.equal(ringPointsPerHost(3, 1024, 8_388_608), 512);
  t.equal(ringPointsPerHost(4, 1024, 100), 25, "the max bound wins");
  t.equal(ringPointsPerHost(500, 16, 100), 1, "every host keeps at least one point");
  t.throws(() => createBalancer(lb("ring_hash", { ringSize: { min: 10, max: 5 } }), makeHosts(2)), /ringSize \{min: 10, max: 5\}/);
});

const keyHashes = Array.from({ length: 10_000 }, (_, i) => murmur3(`user-${i}`));

function hashPolicyTests(policy: "ring_hash" | "maglev", tolerance: number, rebuildChurn: number): void {
  t.test(policy, async (t) => {
    t.test("the same hash always maps to the same host, whatever the endpoint order", async (t) => {
      const hosts = makeHosts(5);
      const a = createBalancer(lb(policy), hosts, seeded(9));
      const reversed = [...hosts].reverse();
      const b = createBalancer(lb(policy), reversed, seeded(10));
      for (const h of keyHashes.slice(0, 2000)) {
        const first = mustPick(a, hosts, { hash: h }).key;
        if (mustPick(a, hosts, { hash: h }).key !== first) t.fail(`hash ${h} moved between picks`);
        if (mustPick(b, reversed, { hash: h }).key !== first) t.fail(`hash ${h} maps elsewhere when endpoints arrive reversed`);
      }
      t.pass("2000 hashes stable");
    });

    t.test("different hashes spread across hosts fairly", async (t) => {
      const hosts = makeHosts(5);
      const b = createBalancer(lb(policy), hosts, seeded(11));
      const counts = tally(keyHashes.map((hash) => mustPick(b, hosts, { hash }).key));
      t.equal(counts.size, 5);
      for (const [key, n] of counts) t.ok(Math.abs(n - 2000) / 2000 <= tolerance, `${key}: ${n} of 10000, expected 2000 ± ${tolerance * 100}%`);
    });

    t.test("rebuilding without one host moves a bounded share of keys", async (t) => {
      const hosts = makeHosts(5);
      const before = createBalancer(lb(policy), hosts, seeded(12));
      const gone = hosts[2]!;
      const rest = hosts.filter((h) => h !== gone);
      const after = createBalancer(lb(policy), rest, seeded(13));
      let moved = 0;
      let movedBetweenSurvivors = 0;
      for (const hash of keyHashes) {
        const was = mustPick(before, hosts, { hash }).key;
        const now = mustPick(after, rest, { hash }).key;
        if (was !== now) {
          moved++;
          if (was !== gone.key) movedBetweenSurvivors++;
        }
      }
      t.ok(moved / keyHashes.length <= 0.2 + rebuildChurn + 0.03, `moved ${moved} of 10000 (1/n = 2000)`);
      t.ok(movedBetweenSurvivors / keyHashes.length <= rebuildChurn, `${movedBetweenSurvivors} keys moved between hosts that stayed`);
    });

    t.test("a host missing from the available set (ejected) moves only its own keys", async (t) => {
      const hosts = makeHosts(5);
      const b = createBalancer(lb(policy), hosts, seeded(14));
      const gone = hosts[3]!;
      const available = hosts.filter((h) => h !== gone);
      for (const hash of keyHashes) {
        const was = mustPick(b, hosts, { hash }).key;
        const now = mustPick(b, available, { hash }).key;
        if (now === gone.key) t.fail("picked a host outside the available set");
        if (was !== gone.key && was !== now) t.fail(`hash ${hash} moved from ${was} to ${now}`);
      }
      t.pass("only the missing host's keys moved");
    });

    t.test("a retry skips the tried host, deterministically, to where the key would go without it", async (t) => {
      const hosts = makeHosts(5);
      const b = createBalancer(lb(policy), hosts, seeded(15));
      for (const hash of keyHashes.slice(0, 500)) {
        const first = mustPick(b, hosts, { hash });
        const exclude = new Set([first.key]);
        const retry = mustPick(b, hosts, { hash, exclude });
        if (retry.key === first.key) t.fail(`hash ${hash}: retry went back to ${first.key}`);
        if (mustPick(b, hosts, { hash, exclude }).key !== retry.key) t.fail(`hash ${hash}: retry target not stable`);
        const without = hosts.filter((h) => h !== first);
        if (mustPick(b, without, { hash }).key !== retry.key) t.fail(`hash ${hash}: retry differs from the no-${first.key} choice`);
      }
      const all = new Set(hosts.map((h) => h.key));
      t.ok(mustPick(b, hosts, { hash: 1, exclude: all }), "everything tried: still answers");
      t.pass("retries moved to the next host");
    });

    t.test("without a hash, picks at random", async (t) => {
      const hosts = makeHosts(4);
      const b = createBalancer(lb(policy), hosts, seeded(16));
      const counts = tally(Array.from({ length: 8000 }, () => mustPick(b, hosts).key));
      t.equal(counts.size, 4);
      for (const [key, n] of counts) t.ok(Math.abs(n - 2000) < 200, `${key}: ${n} of 8000`);
    });

    t.test("hosts it was not built for are still served (at random), never dropped", async (t) => {
      const b = createBalancer(lb(policy), makeHosts(3), seeded(17));
      const others = makeHosts(2, 50);
      const picked = mustPick(b, others, { hash: 12345 });
      t.ok(others.includes(picked));
    });
  });
}

hashPolicyTests("ring_hash", 0.25, 0);
hashPolicyTests("maglev", 0.05, 0.01);

t.test("maglev table gives each host an equal share of entries", async (t) => {
  // With hash = slot index, picking every slot once reads the whole table.
  const hosts = makeHosts(7);
  const b = createBalancer(lb("maglev"), hosts, seeded(18));
  const counts = tally(Array.from({ length: MAGLEV_TABLE_SIZE }, (_, i) => mustPick(b, hosts, { hash: i }).key));
  const fair = MAGLEV_TABLE_SIZE / 7;
  for (const [key, n] of counts) t.ok(Math.abs(n - fair) <= 1, `${key}: ${n} entries, fair share ${fair.toFixed(1)}`);
});

function request(parts: { headers?: Record<string, string>; cookies?: Record<string, string>; query?: Record<string, string>; sourceIp?: string }): HashableRequest {
  return {
    header: (name) => parts.headers?.[name],
    cookie: (name) => parts.cookies?.[name],
    query: (name) => parts.query?.[name],
    sourceIp: parts.sourceIp ?? "",
  };
}

t.test("requestHash", async (t) => {
  const header: HashPolicy = { field: "header", name: "x-user", terminal: false };
  const cookie: HashPolicy = { field: "cookie", name: "session", terminal: false };
  const query: HashPolicy = { field: "query_parameter", name: "shard", terminal: false };
  const source: HashPolicy = { field: "source_ip", terminal: false };
  const req = request({ headers: { "x-user": "alice" }, cookies: { session: "s1" }, query: { shard: "7" }, sourceIp: "10.1.2.3" });

  t.equal(requestHash([header], req), murmur3("alice"), "header value");
  t.equal(requestHash([cookie], req), murmur3("s1"), "cookie value");
  t.equal(requestHash([query], req), murmur3("7"), "query parameter value");
  t.equal(requestHash([source], req), murmur3("10.1.2.3"), "source IP");
  t.equal(requestHash([header], request({ headers: { "x-user": "bob" } })), murmur3("bob"), "depends on the value");

  t.equal(requestHash([], req), undefined, "no policies");
  t.equal(requestHash([header, cookie, query, source], request({})), undefined, "no policy produced a value");
  t.equal(requestHash([cookie], request({ cookies: { session: "" } })), undefined, "an empty cookie counts as absent");
  t.equal(requestHash([header], request({ headers: { "x-user": "" } })), murmur3(""), "a present, empty header hashes");

  const both = requestHash([header, cookie], req);
  t.not(both, murmur3("alice"));
  t.not(both, murmur3("s1"));
  t.not(both, requestHash([cookie, header], req), "order matters (rotate, then xor)");
  t.equal(requestHash([header, cookie], request({ cookies: { session: "s1" } })), murmur3("s1"), "a policy without a value is skipped");
  const twice = requestHash([header, { field: "header", name: "x-user", terminal: false }], req);
  t.not(twice, 0, "the same value twice does not cancel out");

  const terminalHeader: HashPolicy = { ...header, terminal: true };
  t.equal(requestHash([terminalHeader, cookie, source], req), murmur3("alice"), "a terminal policy that produced a value stops the list");
  t.equal(requestHash([terminalHeader, cookie], request({ cookies: { session: "s1" } })), murmur3("s1"), "a terminal policy without a value does not");
  t.equal(
    requestHash([cookie, { field: "query_parameter", name: "absent", terminal: true }, source], req),
    murmur3("s1"),
    "Envoy: a terminal policy stops once any hash exists, even one made by an earlier policy",
  );

  for (const r of [req, request({ sourceIp: "::1" })]) {
    const h = requestHash([header, cookie, query, source], r);
    t.ok(h !== undefined && Number.isInteger(h) && h >= 0 && h <= 0xffffffff, `unsigned 32-bit: ${String(h)}`);
  }
});

t.test("hash tables serve alternating available sets correctly (subset cache)", async (t) => {
  for (const policy of ["ring_hash", "maglev"] as const) {
    const hosts = makeHosts(5);
    const b = createBalancer(lb(policy), hosts, seeded(19));
    const a = hosts.filter((_, i) => i !== 1);
    const c = hosts.filter((_, i) => i !== 3);
    const first = keyHashes.slice(0, 300).map((hash) => [mustPick(b, a, { hash }).key, mustPick(b, c, { hash }).key]);
    for (let i = 0; i < first.length; i++) {
      const hash = keyHashes[i]!;
      const [ka, kc] = [mustPick(b, a, { hash }).key, mustPick(b, c, { hash }).key];
      if (ka === hosts[1]!.key || kc === hosts[3]!.key) t.fail(`${policy}: picked a host outside the available set`);
      if (ka !== first[i]![0] || kc !== first[i]![1]) t.fail(`${policy}: hash ${hash} answered differently on the second pass`);
    }
    t.pass(`${policy}: stable across alternating subsets`);
  }
});

t.test("peak-EWMA (bonus policy, outside LbPolicy)", async (t) => {
  t.test("a higher sample replaces the estimate; lower ones pull it down over time", async (t) => {
    let now = 0;
    const b = new PeakEwmaBalancer(seeded(20), { now: () => now, decayMs: 10_000, defaultRttMs: 30 });
    const [h] = makeHosts(1);
    t.equal(b.cost(h!), 30, "no sample yet: the default RTT");
    b.observe(h!.key, 10);
    t.equal(b.cost(h!), 10);
    b.observe(h!.key, 80);
    t.equal(b.cost(h!), 80, "peak taken at once");
    now = 10_000;
    b.observe(h!.key, 10);
    const w = Math.exp(-1);
    t.ok(Math.abs(b.cost(h!) - (80 * w + 10 * (1 - w))) < 1e-9, "EWMA toward the lower sample");
    h!.activeRequests = 2;
    t.ok(Math.abs(b.cost(h!) - 3 * (80 * w + 10 * (1 - w))) < 1e-9, "cost scales with requests in flight + 1");
    now = 110_000;
    t.ok(b.cost(h!) < 0.01, "an idle estimate decays toward 0, so a once-slow host is retried");
    b.retain([]);
    t.equal(b.cost(h!), 90, "forgotten: back to the default (× 3 in flight)");
  });

  t.test("of two hosts, the cheaper wins; exclusion honoured", async (t) => {
    const hosts = makeHosts(2);
    const b = new PeakEwmaBalancer(seeded(21), { now: () => 0 });
    b.observe(hosts[0]!.key, 50);
    b.observe(hosts[1]!.key, 5);
    for (let i = 0; i < 20; i++) t.equal(mustPick(b, hosts).key, hosts[1]!.key);
    hosts[1]!.activeRequests = 20;
    t.equal(mustPick(b, hosts).key, hosts[0]!.key, "5 ms × 21 in flight costs more than 50 ms × 1");
    t.equal(mustPick(b, hosts, { exclude: new Set([hosts[0]!.key]) }).key, hosts[1]!.key);
  });

  /**
   * A discrete-event run: Poisson arrivals, exponential service times that grow with the host's
   * concurrency, one host ten times slower than the others. Measures mean and p99 latency.
   */
  function simulate(pick: Balancer, observe: (key: string, ms: number) => void, hosts: HostState[], means: readonly number[], clock: { now: number }): { mean: number; p99: number; slowShare: number } {
    const rnd = seeded(22);
    const pending: { at: number; host: HostState; ms: number }[] = [];
    const lat: number[] = [];
    let slow = 0;
    let t0 = 0;
    const n = 10_000;
    for (let i = 0; i < n; i++) {
      t0 += -Math.log(1 - rnd()) / 0.05; // one request per 20 ms on average
      while (pending.length > 0 && pending[0]!.at <= t0) {
        const done = pending.shift()!;
        clock.now = done.at;
        done.host.activeRequests--;
        observe(done.host.key, done.ms);
      }
      clock.now = t0;
      const h = mustPick(pick, hosts);
      const mean = means[hosts.indexOf(h)] ?? 0;
      const ms = -Math.log(1 - rnd()) * mean * (1 + 0.5 * h.activeRequests);
      h.activeRequests++;
      const ev = { at: t0 + ms, host: h, ms };
      let k = pending.length;
      pending.push(ev);
      while (k > 0 && pending[k - 1]!.at > ev.at) {
        pending[k] = pending[k - 1]!;
        k--;
      }
      pending[k] = ev;
      lat.push(ms);
      if (h === hosts[hosts.length - 1]) slow++;
    }
    lat.sort((a, b) => a - b);
    return { mean: lat.reduce((s, x) => s + x, 0) / n, p99: lat[Math.floor(n * 0.99)] ?? 0, slowShare: slow / n };
  }

  t.test("measured: with one slow host it beats least_request on mean and tail latency", async (t) => {
    const means = [5, 5, 5, 5, 50];
    const lrHosts = makeHosts(5);
    const lr = simulate(createBalancer(lb("least_request"), lrHosts, seeded(23)), () => {}, lrHosts, means, { now: 0 });
    const clock = { now: 0 };
    const ewma = new PeakEwmaBalancer(seeded(23), { now: () => clock.now });
    const ewmaHosts = makeHosts(5);
    const pe = simulate(ewma, (k, ms) => ewma.observe(k, ms), ewmaHosts, means, clock);
    t.comment(`least_request: mean ${lr.mean.toFixed(1)} ms, p99 ${lr.p99.toFixed(1)} ms, ${(lr.slowShare * 100).toFixed(1)}% to the slow host`);
    t.comment(`peak_ewma:     mean ${pe.mean.toFixed(1)} ms, p99 ${pe.p99.toFixed(1)} ms, ${(pe.slowShare * 100).toFixed(1)}% to the slow host`);
    t.ok(pe.mean < lr.mean * 0.6, "mean latency at least 40% lower");
    t.ok(pe.p99 < lr.p99 * 0.5, "p99 at least halved");
    t.ok(pe.slowShare < 0.03, "the slow host gets almost nothing");
  });

  t.test("measured: with equal hosts it is no worse than least_request", async (t) => {
    const means = [5, 5, 5, 5, 5];
    const lrHosts = makeHosts(5);
    const lr = simulate(createBalancer(lb("least_request"), lrHosts, seeded(24)), () => {}, lrHosts, means, { now: 0 });
    const clock = { now: 0 };
    const ewma = new PeakEwmaBalancer(seeded(24), { now: () => clock.now });
    const ewmaHosts = makeHosts(5);
    const pe = simulate(ewma, (k, ms) => ewma.observe(k, ms), ewmaHosts, means, clock);
    t.comment(`equal hosts: least_request mean ${lr.mean.toFixed(2)} ms, peak_ewma mean ${pe.mean.toFixed(2)} ms`);
    t.ok(pe.mean < lr.mean * 1.05);
  });
});
