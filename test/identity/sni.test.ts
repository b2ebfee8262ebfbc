// Consul's mesh SNI forms read back (every form a mesh gateway routes, §3.2 and §5 of
// shared/reference/consul-connect.md), and the names that must not be read as any of them.
import t from "tap";
import { formatMeshSni, parseMeshSni, serverNameMatches, type MeshSni } from "../../src/identity/sni.js";
import { serviceSni } from "../../src/identity/spiffe.js";

const TD = "11111111-2222-3333-4444-555555555555.consul";

t.test("every Consul form, and its round trip", async (t) => {
  const cases: Array<[string, MeshSni]> = [
    [`web.default.dc1.internal.${TD}`, { kind: "service", subset: null, service: "web", namespace: "default", partition: "default", datacenter: "dc1", trustDomain: TD }],
    [`v2.web.default.dc1.internal.${TD}`, { kind: "service", subset: "v2", service: "web", namespace: "default", partition: "default", datacenter: "dc1", trustDomain: TD }],
    [`web.team-a.ap1.dc2.internal-v1.${TD}`, { kind: "service", subset: null, service: "web", namespace: "team-a", partition: "ap1", datacenter: "dc2", trustDomain: TD }],
    [`canary.web.team-a.ap1.dc2.internal-v1.${TD}`, { kind: "service", subset: "canary", service: "web", namespace: "team-a", partition: "ap1", datacenter: "dc2", trustDomain: TD }],
    [`dc2.internal.${TD}`, { kind: "datacenter", partition: "default", datacenter: "dc2", trustDomain: TD }],
    [`ap1.dc2.internal-v1.${TD}`, { kind: "datacenter", partition: "ap1", datacenter: "dc2", trustDomain: TD }],
    [`geo-db.default.dc1.query.${TD}`, { kind: "query", query: "geo-db", datacenter: "dc1", trustDomain: TD }],
    [`bar.default.default.peer-a.external.${TD}`, { kind: "peered", service: "bar", namespace: "default", partition: "default", peer: "peer-a", trustDomain: TD }],
    [`my_svc.default.dc1.internal.${TD}`, { kind: "service", subset: null, service: "my_svc", namespace: "default", partition: "default", datacenter: "dc1", trustDomain: TD }],
  ];
  for (const [name, want] of cases) {
    t.same(parseMeshSni(name, TD), want, name);
    t.equal(formatMeshSni(want), name, `${name} formats back`);
    t.same(parseMeshSni(name.toUpperCase(), TD.toUpperCase()), want, `${name} in upper case names the same`);
  }
  t.same(parseMeshSni(serviceSni("api", "default", "dc3", TD, "v1"), TD), { kind: "service", subset: "v1", service: "api", namespace: "default", partition: "default", datacenter: "dc3", trustDomain: TD }, "what serviceSni builds reads back");
});

t.test("refusals", async (t) => {
  const cases: Array<[string, string, RegExp]> = [
    [`web.default.dc1.internal.22222222-2222-3333-4444-555555555555.consul`, "wrong_trust_domain", /not under this mesh's trust domain/],
    [`web.default.dc1.internal.x${TD}`, "wrong_trust_domain", /trust domain/],
    [TD, "wrong_trust_domain", /trust domain/],
    [`.${TD}`, "empty_label", /empty label/],
    [`internal.${TD}`, "label_count", /0 labels before ".internal/],
    [`default.dc1.internal.${TD}`, "label_count", /2 labels/],
    [`a.v2.web.default.dc1.internal.${TD}`, "label_count", /5 labels/],
    [`web.default.ap1.dc1.x.y.internal-v1.${TD}`, "label_count", /6 labels/],
    [`dc1.internal-v1.${TD}`, "label_count", /1 labels/],
    [`web.default.default.external.${TD}`, "label_count", /3 labels/],
    [`web.ns.dc1.query.${TD}`, "unknown_form", /always "default"/],
    [`web.dc1.query.${TD}`, "label_count", /2 labels/],
    [`server.dc1.peering.${TD}`, "unknown_form", /not a Consul mesh form/],
    [`web.default.dc1.internal-v2.${TD}`, "unknown_form", /internal-v2/],
    [`web..dc1.internal.${TD}`, "empty_label", /empty label/],
    [`web.default.dc1..internal.${TD}`, "empty_label", /empty label/],
    [`*.dc1.internal.${TD}`, "invalid_label", /"\*"/],
    [`we b.default.dc1.internal.${TD}`, "invalid_label", /"we b"/],
    [`${"a".repeat(64)}.default.dc1.internal.${TD}`, "invalid_label", /1-63/],
    [`wéb.default.dc1.internal.${TD}`, "invalid_label", /wéb/],
    ["", "wrong_trust_domain", /trust domain/],
    // Consul never writes the default partition in the -v1 form: one name per service.
    [`web.default.default.dc1.internal-v1.${TD}`, "unknown_form", /default partition is named without a partition label/],
    [`v1.web.default.default.dc1.internal-v1.${TD}`, "unknown_form", /default partition/],
    [`default.dc1.internal-v1.${TD}`, "unknown_form", /default partition/],
  ];
  for (const [name, reason, message] of cases) {
    const r = parseMeshSni(name, TD);
    if (r.kind !== "refused") t.fail(`${name}: expected ${reason}, got ${JSON.stringify(r)}`);
    else {
      t.equal(r.reason, reason, r.message);
      t.match(r.message, message);
    }
  }
  const empty = parseMeshSni(`web.default.dc1.internal.${TD}`, "");
  t.equal(empty.kind === "refused" && empty.reason, "wrong_trust_domain", "an empty trust domain matches nothing");
});

t.test("server_names matching, as Envoy's filter chains do it", async (t) => {
  const wildcard = `*.dc2.internal.${TD}`;
  t.ok(serverNameMatches(wildcard, `web.default.dc2.internal.${TD}`), "a service in dc2");
  t.ok(serverNameMatches(wildcard, `v1.web.default.dc2.internal.${TD}`), "a subset in dc2 (any depth)");
  t.ok(serverNameMatches(wildcard, `WEB.default.DC2.internal.${TD}`), "case-insensitive");
  t.notOk(serverNameMatches(wildcard, `dc2.internal.${TD}`), "the suffix itself is not matched by its wildcard");
  t.notOk(serverNameMatches(wildcard, `web.default.dc1.internal.${TD}`), "another dc");
  t.notOk(serverNameMatches(wildcard, `web.default.xdc2.internal.${TD}`), "a label ending in dc2 is not dc2");
  t.notOk(serverNameMatches(wildcard, `.dc2.internal.${TD}`), "an empty label");
  t.notOk(serverNameMatches(wildcard, `a..dc2.internal.${TD}`), "an empty label further left");
  t.ok(serverNameMatches(`dc2.internal.${TD}`, `DC2.internal.${TD}`), "exact, case-insensitive");
  t.notOk(serverNameMatches("*", "anything"), "a bare * is not a pattern");
  t.notOk(serverNameMatches("*w.example.com", "www.example.com"), "a partial wildcard is not a pattern");
  t.notOk(serverNameMatches("*.*.com", "a.b.com"), "two wildcards are not a pattern");
  t.notOk(serverNameMatches("a.*.com", "a.b.com"), "an inner wildcard is not a pattern");
});
