import t from "tap";
import { CircuitBreaker } from "../../src/cluster/limits.js";
import { DEFAULT_LIMITS, type Limits } from "../../src/config/http.js";

function breaker(over: Partial<Limits> = {}): CircuitBreaker {
  return new CircuitBreaker({ ...DEFAULT_LIMITS, ...over });
}

function times(n: number, f: () => boolean): number {
  let ok = 0;
  for (let i = 0; i < n; i++) if (f()) ok++;
  return ok;
}

t.test("requests: refused past maxRequests, overflow counted, a release makes room", async (t) => {
  const b = breaker({ maxRequests: 2 });
  t.equal(times(2, () => b.tryAcquireRequest()), 2);
  t.notOk(b.tryAcquireRequest());
  t.notOk(b.tryAcquireRequest());
  t.match(b.state, { activeRequests: 2, rqOverflow: 2 });
  b.releaseRequest();
  t.ok(b.tryAcquireRequest());
  t.match(b.state, { activeRequests: 2, rqOverflow: 2, pendingOverflow: 0, cxOverflow: 0, retryOverflow: 0 });
});

t.test("pending: refused past maxPendingRequests", async (t) => {
  const b = breaker({ maxPendingRequests: 3 });
  t.equal(times(5, () => b.tryAcquirePending()), 3);
  t.match(b.state, { pending: 3, pendingOverflow: 2, rqOverflow: 0 });
  b.releasePending();
  t.ok(b.tryAcquirePending());
});

t.test("connections: refused past maxConnections", async (t) => {
  const b = breaker({ maxConnections: 1 });
  t.ok(b.tryAcquireConnection());
  t.notOk(b.tryAcquireConnection());
  t.match(b.state, { connections: 1, cxOverflow: 1 });
  b.releaseConnection();
  t.ok(b.tryAcquireConnection());
});

t.test("retries without a budget: maxRetries concurrent", async (t) => {
  const b = breaker({ retryBudgetPercent: 0, maxRetries: 3 });
  for (let i = 0; i < 100; i++) b.tryAcquireRequest();
  t.equal(times(5, () => b.tryAcquireRetry()), 3, "active requests do not matter without a budget");
  t.match(b.state, { activeRetries: 3, retryOverflow: 2 });
  b.releaseRetry();
  t.ok(b.tryAcquireRetry());
});

t.test("retry budget", async (t) => {
  t.test("allows minRetryConcurrency even with few requests", async (t) => {
    const b = breaker({ retryBudgetPercent: 20, minRetryConcurrency: 3, maxRetries: 1 });
    t.equal(times(5, () => b.tryAcquireRetry()), 3, "nothing in flight: the floor of 3, not maxRetries");
    t.equal(b.state.retryOverflow, 2);
    for (let i = 0; i < 10; i++) b.tryAcquireRequest();
    t.notOk(b.tryAcquireRetry(), "20% of 10 is 2, below the floor");
  });

  t.test("allows 20% of active + pending above the floor", async (t) => {
    const b = breaker({ retryBudgetPercent: 20, minRetryConcurrency: 3 });
    for (let i = 0; i < 30; i++) b.tryAcquireRequest();
    for (let i = 0; i < 20; i++) b.tryAcquirePending();
    t.equal(b.maxRetriesNow(), 10);
    t.equal(times(12, () => b.tryAcquireRetry()), 10, "20% of 50");
    t.equal(b.state.retryOverflow, 2);
    for (let i = 0; i < 5; i++) b.releaseRequest();
    t.equal(b.maxRetriesNow(), 9, "the budget follows the load (45 × 20%)");
    t.notOk(b.tryAcquireRetry());
    b.releaseRetry();
    b.releaseRetry();
    t.ok(b.tryAcquireRetry(), "9 held after releasing two of ten, one more fits");
    t.notOk(b.tryAcquireRetry());
  });
});

t.test("a release with nothing held stays at 0 and is counted", async (t) => {
  const b = breaker();
  b.releaseRequest();
  b.releasePending();
  b.releaseConnection();
  b.releaseRetry();
  t.match(b.state, { activeRequests: 0, pending: 0, connections: 0, activeRetries: 0, releaseUnderflows: 4 });
  t.ok(b.tryAcquireRequest());
  b.releaseRequest();
  b.releaseRequest();
  t.match(b.state, { activeRequests: 0, releaseUnderflows: 5 }, "double release caught");
  t.equal(times(DEFAULT_LIMITS.maxRequests + 1, () => b.tryAcquireRequest()), DEFAULT_LIMITS.maxRequests, "the limit did not grow");
});

t.test("update applies new thresholds to later acquisitions; held slots stay held", async (t) => {
  const b = breaker({ maxRequests: 10 });
  t.equal(times(8, () => b.tryAcquireRequest()), 8);
  b.update({ ...DEFAULT_LIMITS, maxRequests: 5 });
  t.equal(b.state.activeRequests, 8);
  t.notOk(b.tryAcquireRequest(), "over the new limit until enough finish");
  for (let i = 0; i < 4; i++) b.releaseRequest();
  t.ok(b.tryAcquireRequest());
  t.notOk(b.tryAcquireRequest());
});
