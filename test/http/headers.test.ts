// Header mutations (Consul RequestHeaders/ResponseHeaders) and hop-by-hop stripping.
import t from "tap";
import { NO_HEADER_MUTATION, type HeaderMutation } from "../../src/config/http.js";
import {
  HOP_BY_HOP,
  HeaderMutationError,
  applyHeaderMutation,
  compileHeaderMutation,
  isEmptyMutation,
  stripHopByHop,
  type HeaderRecord,
} from "../../src/http/headers.js";

function mutation(m: Partial<HeaderMutation>): HeaderMutation {
  return { add: m.add ?? {}, set: m.set ?? {}, remove: m.remove ?? [] };
}

t.test("remove, set and add", async (t) => {
  const h: HeaderRecord = { "x-old": "1", "x-keep": "k", "x-env": "dev", "x-tag": "a", "set-cookie": ["a=1"] };
  applyHeaderMutation(h, mutation({ remove: ["X-Old"], set: { "X-Env": "prod", "X-New": "n" }, add: { "X-Tag": "b", "Set-Cookie": "b=2", "X-Fresh": "f" } }));
  t.same(
    h,
    { "x-keep": "k", "x-env": "prod", "x-new": "n", "x-tag": ["a", "b"], "set-cookie": ["a=1", "b=2"], "x-fresh": "f" },
    "names are lower-cased; remove drops, set replaces, add appends as an array (one field line each), add to nothing is a plain value",
  );
});

t.test("order: remove, then set, then add", async (t) => {
  const h: HeaderRecord = { "x-a": "old" };
  applyHeaderMutation(h, mutation({ remove: ["x-a"], set: { "x-a": "set" }, add: { "x-a": "added" } }));
  t.same(h, { "x-a": ["set", "added"] }, "set lands after remove, add appends to the set value");
});

t.test("arrays the caller shares are not mutated", async (t) => {
  const shared = ["1"];
  const h: HeaderRecord = { "x-a": shared };
  applyHeaderMutation(h, mutation({ add: { "x-a": "2" } }));
  t.same(h["x-a"], ["1", "2"]);
  t.same(shared, ["1"], "the original array is untouched");
});

t.test("empty mutations", async (t) => {
  t.equal(isEmptyMutation(NO_HEADER_MUTATION), true, "NO_HEADER_MUTATION is empty");
  t.equal(isEmptyMutation(mutation({})), true, "a mutation with nothing in it is empty");
  t.equal(isEmptyMutation(mutation({ remove: ["x"] })), false);
  t.equal(isEmptyMutation(mutation({ add: { x: "1" } })), false);
  const h: HeaderRecord = { a: "1" };
  applyHeaderMutation(h, NO_HEADER_MUTATION);
  applyHeaderMutation(h, mutation({}));
  t.same(h, { a: "1" }, "applying an empty mutation changes nothing");
  const m = mutation({ set: { a: "2" } });
  t.equal(compileHeaderMutation(m), compileHeaderMutation(m), "a mutation object is compiled once");
});

t.test("mutations Envoy would reject are rejected at compile time", async (t) => {
  const cases: [Partial<HeaderMutation>, string][] = [
    [{ set: { Host: "evil" } }, 'set["Host"]'],
    [{ remove: ["x", "host"] }, "remove[1]"],
    [{ add: { ":authority": "x" } }, 'add[":authority"]'],
    [{ set: { "bad name": "x" } }, 'set["bad name"]'],
    [{ add: { "x-ok": "line\r\nInjected: 1" } }, 'add["x-ok"]'],
  ];
  for (const [m, field] of cases) {
    let err: unknown = null;
    try {
      compileHeaderMutation(mutation(m));
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof HeaderMutationError && err.field === field, `${field} is rejected`);
  }
});

t.test("hop-by-hop headers are stripped", async (t) => {
  const h: HeaderRecord = {
    connection: "keep-alive",
    "keep-alive": "timeout=5",
    "proxy-connection": "keep-alive",
    "transfer-encoding": "chunked",
    te: "trailers",
    trailer: "x-checksum",
    upgrade: "websocket",
    "proxy-authenticate": "Basic",
    "proxy-authorization": "Basic Zm9v",
    "content-type": "text/plain",
    authorization: "Bearer x",
  };
  stripHopByHop(h);
  t.same(h, { "content-type": "text/plain", authorization: "Bearer x" }, "all nine go, end-to-end headers stay");
  t.equal(HOP_BY_HOP.size, 9);
});

t.test("headers nominated by Connection are stripped (RFC 9110 §7.6.1)", async (t) => {
  const h: HeaderRecord = { connection: "close, X-Session-Hint ,x-trace-local", "x-session-hint": "1", "x-trace-local": "2", "x-kept": "3" };
  stripHopByHop(h);
  t.same(h, { "x-kept": "3" }, "tokens are trimmed and compared case-insensitively");

  const multi: HeaderRecord = { connection: ["x-a", "x-b"], "x-a": "1", "x-b": "2", "x-c": "3" };
  stripHopByHop(multi);
  t.same(multi, { "x-c": "3" }, "a repeated Connection header is honoured too");

  const none: HeaderRecord = { "x-a": "1" };
  stripHopByHop(none);
  t.same(none, { "x-a": "1" }, "nothing to strip, nothing changes");
});

t.test("endToEndCopy leaves out hop-by-hop, nominated and pseudo fields in one pass", async (t) => {
  const { endToEndCopy } = await import("../../src/http/headers.js");
  const src = { ":path": "/x", host: "a", connection: "keep-alive, x-secret", "x-secret": "s", "keep-alive": "timeout=5", te: "trailers", "transfer-encoding": "chunked", accept: "*/*", cookie: ["a=1", "b=2"] };
  t.same(endToEndCopy(src, true), { host: "a", accept: "*/*", cookie: ["a=1", "b=2"] });
  t.same(endToEndCopy(src, false), { ":path": "/x", host: "a", accept: "*/*", cookie: ["a=1", "b=2"] }, "pseudo-headers kept unless asked");
  t.equal(src["x-secret"], "s", "the source is not changed");
});
