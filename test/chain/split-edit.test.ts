// The splitter a weight change from the traffic page stores: subsets checked against the resolver,
// legs replaced whole, a leg's header mutations carried to the new leg of its subset, and what the
// control cannot express (a leg to another service) refused rather than silently dropped.
import t from "tap";
import { splitterWithWeights, storedResolver, storedSplitter } from "../../src/controlplane/chain/split-edit.js";
import { SplitChangeError } from "../../src/config/split-weights.js";

const resolver = storedResolver({ Kind: "service-resolver", Name: "api", DefaultSubset: "v1", Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2" }, v3: {} } }, "api", "test");
const stored = (raw: Record<string, unknown>) => ({ raw, parsed: storedSplitter(raw, "api", "test") });
const refusal = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    if (e instanceof SplitChangeError) return `${e.refusal}: ${e.message}`;
    throw e;
  }
  return "no error";
};

t.test("replaces the legs, carries header mutations and other fields, drops Consul's indexes", async (t) => {
  const current = stored({
    Kind: "service-splitter",
    Name: "api",
    Meta: { owner: "team-a" },
    CreateIndex: 10,
    ModifyIndex: 12,
    splits: [{ weight: 90, service_subset: "v1", request_headers: { Set: { "x-v": "1" } } }, { Weight: 10, ServiceSubset: "v2", ResponseHeaders: { Add: { "x-canary": "yes" } } }],
  });
  const next = splitterWithWeights("api", current, resolver, [{ subset: "v1", weight: 2500 }, { subset: "v3", weight: 7500 }]);
  t.same(next, {
    Kind: "service-splitter",
    Name: "api",
    Meta: { owner: "team-a" },
    Splits: [{ request_headers: { Set: { "x-v": "1" } }, Weight: 25, ServiceSubset: "v1" }, { Weight: 75, ServiceSubset: "v3" }],
  });
});

t.test("a leg without ServiceSubset is the resolver's default subset", async (t) => {
  const current = stored({ Kind: "service-splitter", Name: "api", Splits: [{ Weight: 100, RequestHeaders: { Set: { "x-d": "1" } } }] });
  const next = splitterWithWeights("api", current, resolver, [{ subset: "v1", weight: 5000 }, { subset: "v2", weight: 5000 }]);
  t.same(next["Splits"], [{ RequestHeaders: { Set: { "x-d": "1" } }, Weight: 50, ServiceSubset: "v1" }, { Weight: 50, ServiceSubset: "v2" }]);
});

t.test("creates a splitter when there is none", async (t) => {
  t.same(splitterWithWeights("api", null, resolver, [{ subset: "v2", weight: 10_000 }]), { Kind: "service-splitter", Name: "api", Splits: [{ Weight: 100, ServiceSubset: "v2" }] });
});

t.test("refuses what it cannot do, saying why", async (t) => {
  const w = [{ subset: "v1", weight: 10_000 }];
  t.match(refusal(() => splitterWithWeights("api", null, resolver, [{ subset: "v9", weight: 10_000 }])), /^invalid: subset "v9" is not defined by service-resolver "api" \(it defines v1, v2, v3\)/);
  t.match(refusal(() => splitterWithWeights("api", null, null, w)), /^conflict: "api" has no service-resolver with Subsets/);
  const redirect = storedResolver({ Kind: "service-resolver", Name: "api", Redirect: { Service: "api2" }, Subsets: { v1: {} } }, "api", "test");
  t.match(refusal(() => splitterWithWeights("api", null, redirect, w)), /^conflict: service-resolver "api" redirects/);
  const other = stored({ Kind: "service-splitter", Name: "api", Splits: [{ Weight: 50, ServiceSubset: "v1" }, { Weight: 50, Service: "api-next" }] });
  t.match(refusal(() => splitterWithWeights("api", other, resolver, w)), /^conflict: the service-splitter "api" also sends traffic to service "api-next"/);
  t.match(refusal(() => storedSplitter({ Kind: "service-splitter", Name: "api", Splits: [{ Weight: 40, ServiceSubset: "v1" }] }, "api", "dev")), /^conflict: the stored service-splitter "api" cannot be read .*sum of all split weights must be 100/);
  t.match(refusal(() => storedResolver({ Kind: "service-splitter", Name: "api", Splits: [{ Weight: 100 }] }, "api", "config/service-resolver/api.json")), /^conflict: config\/service-resolver\/api.json holds a service-splitter/);
});
