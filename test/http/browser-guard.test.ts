// The Host allow-list and the cross-origin checks of the admin API, on their own: names an
// attacker can point at 127.0.0.1 are refused whatever their spelling; addresses, localhost and
// the bound name are answered; a mutation passes only without browser cross-origin markers.
import t from "tap";
import fc from "fast-check";
import { HostAllowList, checkMutation, hostName, isLoopbackHost } from "../../src/http/browser-guard.js";
import { fuzzParams } from "../fuzz/params.js";

const req = (headers: Record<string, string>) => ({ headers });

t.test("hostName splits host[:port] and rejects what is not one", async (t) => {
  t.equal(hostName("LocalHost:19000"), "localhost");
  t.equal(hostName("[::1]:19000"), "::1");
  t.equal(hostName("10.0.0.1"), "10.0.0.1");
  for (const bad of ["", ":19000", "[::1", "[evil.example]:1", "a:b", "host:123456", "::1"]) t.equal(hostName(bad), null, `"${bad}" is not a host[:port]`);
});

t.test("the allow-list: IP literals, localhost and the bound name; nothing else", async (t) => {
  const loop = new HostAllowList("127.0.0.1");
  for (const ok of ["127.0.0.1:19000", "localhost:19000", "LOCALHOST", "[::1]:19000", "10.0.0.7:19000", "0.0.0.0:1"]) t.ok(loop.allows(ok), `${ok} allowed`);
  for (const bad of ["evil.example:19000", "localhost.evil.example", "127.0.0.1.nip.io:19000", "a.localhost", "localhost.", "2130706433:19000", "0x7f.1"]) t.notOk(loop.allows(bad), `${bad} refused`);
  const named = new HostAllowList("admin.internal");
  t.ok(named.allows("Admin.Internal:19000"), "a listener bound by name answers that name");
  t.notOk(named.allows("evil.internal:19000"), "and no other");
  t.ok(isLoopbackHost("127.0.0.2") && isLoopbackHost("::1") && isLoopbackHost("localhost"), "loopback binds");
  t.notOk(isLoopbackHost("0.0.0.0") || isLoopbackHost("10.0.0.1") || isLoopbackHost("::"), "wildcard and other binds are not loopback");
});

t.test("property: no DNS name other than localhost passes, with any port and case", async () => {
  const list = new HostAllowList("127.0.0.1");
  fc.assert(
    fc.property(fc.domain(), fc.option(fc.integer({ min: 0, max: 65535 })), fc.boolean(), (name, port, upper) => {
      fc.pre(name.toLowerCase() !== "localhost");
      const host = (upper ? name.toUpperCase() : name) + (port === null ? "" : `:${port}`);
      return !list.allows(host);
    }),
    fuzzParams(),
  );
});

t.test("property: every IPv4 and IPv6 literal passes (rebinding needs a name)", async () => {
  const list = new HostAllowList("127.0.0.1");
  fc.assert(
    fc.property(fc.oneof(fc.ipV4(), fc.ipV6().map((a) => `[${a}]`)), fc.integer({ min: 1, max: 65535 }), (ip, port) => list.allows(`${ip}:${port}`)),
    fuzzParams(),
  );
});

t.test("checkMutation", async (t) => {
  t.equal(checkMutation(req({ host: "127.0.0.1:19000" })), null, "curl: no Origin, no Sec-Fetch-Site, no body");
  t.equal(checkMutation(req({ host: "127.0.0.1:19000", "content-type": "application/json" })), null, "a JSON body needs a preflight a page cannot pass");
  t.equal(checkMutation(req({ host: "localhost:19000", origin: "http://localhost:19000", "sec-fetch-site": "same-origin" })), null, "the admin's own origin");
  t.equal(checkMutation(req({ host: "localhost:80", origin: "http://localhost" })), null, "default port spelled or not");
  t.equal(checkMutation(req({ host: "localhost", "sec-fetch-site": "none" })), null, "typed into the address bar");
  t.equal(checkMutation(req({ host: "localhost:19000", origin: "https://localhost:19000" }))?.reason, "origin", "https is another origin");
  t.equal(checkMutation(req({ host: "localhost:19000", origin: "http://localhost:19000/" }))?.reason, "origin", "not an Origin a browser sends");
  t.equal(checkMutation(req({ origin: "http://localhost:19000" }))?.reason, "origin", "no Host to compare with");
  t.equal(checkMutation(req({ host: "localhost", "sec-fetch-site": "bogus" }))?.reason, "sec_fetch_site", "an unknown Sec-Fetch-Site fails closed");
});

t.test("property: any Origin other than the admin's own is refused on a mutation", async () => {
  const origins = fc.oneof(
    fc
      .tuple(fc.constantFrom("http", "https"), fc.oneof(fc.domain(), fc.ipV4(), fc.constant("127.0.0.1"), fc.constant("localhost")), fc.option(fc.integer({ min: 1, max: 65535 })))
      .map(([scheme, host, port]) => `${scheme}://${host}${port === null ? "" : `:${port}`}`),
    fc.constant("null"),
    fc.string(),
  );
  fc.assert(
    fc.property(origins, fc.integer({ min: 1, max: 65535 }), (origin, port) => {
      const host = `127.0.0.1:${port}`;
      fc.pre(origin !== `http://${host}` && !(port === 80 && origin === "http://127.0.0.1"));
      return checkMutation(req({ host, origin }))?.reason === "origin";
    }),
    fuzzParams(),
  );
});
