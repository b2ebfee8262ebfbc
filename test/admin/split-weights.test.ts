// The weights of POST /splits/<service>: the syntax and the sum, checked before any control plane
// is asked, and the admin API's answer for each kind of refusal.
import t from "tap";
import fc from "fast-check";
import { fuzzParams } from "../fuzz/params.js";
import { parseSubsetWeights, SplitChangeError, type SubsetWeight } from "../../src/config/split-weights.js";
import { changeSplit, writability } from "../../src/admin/splits.js";
import type { Snapshot } from "../../src/config/snapshot.js";
import { NO_HEADER_MUTATION, NO_RETRIES, type Route } from "../../src/config/http.js";

const message = (raw: string | null): string => {
  try {
    parseSubsetWeights(raw);
    return "accepted";
  } catch (e) {
    if (e instanceof SplitChangeError) return e.message;
    throw e;
  }
};

t.test("parses percents with up to two decimals into 1/10000ths", async (t) => {
  t.same(parseSubsetWeights("v1:90,v2:10"), [{ subset: "v1", weight: 9000 }, { subset: "v2", weight: 1000 }]);
  t.same(parseSubsetWeights(" v1 : 33.33 , v2:33.33,v3:33.34"), [{ subset: "v1", weight: 3333 }, { subset: "v2", weight: 3333 }, { subset: "v3", weight: 3334 }]);
  t.same(parseSubsetWeights("canary:100,stable:0.00"), [{ subset: "canary", weight: 10_000 }, { subset: "stable", weight: 0 }]);
});

t.test("refuses anything else with the reason", async (t) => {
  t.match(message(null), /no weights given/);
  t.match(message("v1:90,v2:9.99"), /sum to 99.99, not 100/);
  t.match(message("v1:100.01"), /not a percent/);
  t.match(message("v1:1e2"), /not a percent/);
  t.match(message("v1:0x64"), /not a percent/);
  t.match(message("v1:50,v1:50"), /given twice/);
  t.match(message("v1=100"), /is not <subset>:<percent>/);
  t.match(message("../x:100"), /is not <subset>:<percent>/);
  t.match(message("v1:100,"), /is not <subset>:<percent>/);
});

t.test("property: any weights summing to 100 % round-trip; any other sum is refused", async () => {
  const legs = fc.uniqueArray(fc.tuple(fc.stringMatching(/^[a-z][a-z0-9]{0,8}$/), fc.integer({ min: 0, max: 10_000 })), { minLength: 1, maxLength: 6, selector: ([s]) => s });
  fc.assert(
    fc.property(legs, (ls) => {
      const text = ls.map(([s, w]) => `${s}:${(w / 100).toFixed(w % 100 === 0 ? 0 : 2)}`).join(",");
      const sum = ls.reduce((n, [, w]) => n + w, 0);
      if (sum !== 10_000) return /not 100/.test(message(text));
      const parsed: SubsetWeight[] = parseSubsetWeights(text);
      return parsed.every((p, i) => p.subset === ls[i]![0] && p.weight === ls[i]![1]);
    }),
    fuzzParams(),
  );
});

const route: Route = { match: { headers: [], queryParams: [], methods: [] }, action: { splits: [], timeoutMs: 0, idleTimeoutMs: 0, retry: NO_RETRIES, requestHeaders: NO_HEADER_MUTATION, responseHeaders: NO_HEADER_MUTATION } };
const snapshot = (source: string): Pick<Snapshot, "source" | "upstreams"> => ({
  source,
  upstreams: [{ name: "api", bind: { host: "127.0.0.1", port: 1 }, cluster: "api", protocol: "http", connectTimeoutMs: 1, idleTimeoutMs: 1, routes: { routes: [route] } }],
});

t.test("the admin API's answers", async (t) => {
  const stat = await changeSplit({ snapshot: snapshot("static"), splitWriter: null }, "api", "v1:100");
  t.equal(stat.status, 501, "a static file cannot be written: 501");
  t.match(stat.message, /static configuration file \(-config-file\), which is the source of truth/);
  t.same(writability({ snapshot: snapshot("static") }), { ok: false, reason: stat.message }, "and the page says the same");
  t.equal((await changeSplit({ snapshot: null }, "api", "v1:100")).status, 503, "no Snapshot yet: 503");
  const calls: string[] = [];
  const writer = {
    setSubsetWeights(service: string, w: readonly SubsetWeight[]) {
      calls.push(`${service} ${w.map((x) => `${x.subset}=${x.weight}`).join(" ")}`);
      if (w[0]!.subset === "busy") return Promise.reject(new SplitChangeError("conflict", "changed since it was read"));
      if (w[0]!.subset === "down") return Promise.reject(new Error("EACCES: permission denied"));
      return Promise.resolve();
    },
  };
  const target = { snapshot: snapshot("dev"), splitWriter: writer };
  t.match(await changeSplit(target, "api", "v1:60,v2:40"), { status: 202, result: "stored", weights: { v1: 60, v2: 40 } });
  t.match(await changeSplit(target, "api", "busy:100"), { status: 409, result: "conflict", message: "changed since it was read" });
  t.match(await changeSplit(target, "api", "down:100"), { status: 500, result: "error", message: /storing the service-splitter "api" failed: EACCES/ });
  t.match(await changeSplit(target, "api", "v1:60"), { status: 400, result: "invalid" });
  t.match(await changeSplit(target, "web", "v1:100"), { status: 404, result: "not_found" });
  t.same(calls, ["api v1=6000 v2=4000", "api busy=10000", "api down=10000"], "only valid changes reach the control plane");
});
