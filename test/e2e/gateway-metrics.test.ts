// A mesh gateway's metrics carry the labels Consul's Envoy bootstrap gives a gateway's stats
// (command/connect/envoy/bootstrap_config.go): its own identity on every series (local_cluster
// and consul_source_service are the gateway's service name, the datacenter its own), and on
// cluster series the consul_destination_* tags Consul's expressions read from the cluster name.
// A local service's cluster is named by its SNI, so it has them; a remote datacenter's gateways
// (`<dc>.internal.<trust-domain>`) match none of Consul's expressions, so they have none, as with
// Envoy. Two real gateway processes, one real connection across both, one scrape of each.
import t from "tap";
import { connect as tlsConnect } from "node:tls";
import { echoServer, hostPort, startSidecar, tempDir } from "../helpers/mesh.js";
import { startGateway } from "../helpers/mesh-gateway.js";
import { leafFor, readDevCa } from "../helpers/certs.js";
import { sample, scrape } from "../helpers/peers.js";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { ROOT } from "../helpers/mesh.js";
import { startPrometheus } from "../helpers/prometheus.js";
import { until } from "../helpers/l7.js";

interface Dashboard {
  panels: Array<{ title: string; targets?: Array<{ expr: string }> }>;
  templating: { list: Array<{ name: string; type: string; query: string }> };
}

/** Every label of the first sample of `name` whose labels include `match`; null when there is none. */
function labelsOf(text: string, name: string, match: Readonly<Record<string, string>>): Map<string, string> | null {
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = new Map<string, string>();
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) have.set(l[1]!, l[2]!);
    if (Object.entries(match).every(([k, v]) => have.get(k) === v)) return have;
  }
  return null;
}

t.test("gateway series carry the gateway's consul_source_* labels and, per local service cluster, consul_destination_*", { timeout: 90_000 }, async (t) => {
  const dir = await tempDir(t);
  const app = await echoServer(t);
  await startSidecar(t, dir, ["-service", "db", "-datacenter", "dc2", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`]);
  const gw2 = await startGateway(t, dir, "dc2");
  const gw1 = await startGateway(t, dir, "dc1", ["-service", "edge-gw"]);
  const ca = await readDevCa(dir);
  const web = await leafFor(ca, "web");
  const sni = `db.default.dc2.internal.${ca.trustDomain}`;
  const uuid = ca.trustDomain.replace(/\.consul$/, "");

  const { host, port } = hostPort(gw1.listen);
  const echoed = await new Promise<string>((resolve, reject) => {
    const s = tlsConnect({ host, port, servername: sni, cert: web.certPem, key: web.keyPem, ca: ca.certPem, checkServerIdentity: () => undefined });
    let got = "";
    s.once("secureConnect", () => s.end("through two gateways"));
    s.setEncoding("utf8").on("data", (d: string) => (got += d));
    s.on("error", reject);
    s.once("close", () => resolve(got));
  });
  t.equal(echoed, "through two gateways", "the connection crossed both gateways to db");

  const text2 = await scrape(gw2.adminAddr);
  const source2 = { local_cluster: "mesh-gateway", consul_source_service: "mesh-gateway", consul_source_namespace: "default", consul_source_partition: "default", consul_source_datacenter: "dc2" };
  const destination = {
    consul_destination_service: "db",
    consul_destination_namespace: "default",
    consul_destination_datacenter: "dc2",
    consul_destination_routing_type: "internal",
    consul_destination_trust_domain: uuid,
    consul_destination_target: "db.default.dc2",
    consul_destination_full_target: `db.default.dc2.internal.${uuid}`,
    consul_service: "db",
    consul_datacenter: "dc2",
  };
  t.equal(sample(text2, "meshproxy_gateway_forwarded_total", { envoy_cluster_name: sni, ...destination, ...source2 }), 1, "gateway dc2: the forwarded connection under db's destination labels and the gateway's source labels");
  t.ok((sample(text2, "envoy_cluster_upstream_cx_tx_bytes_total", { envoy_cluster_name: sni, ...destination, ...source2 }) ?? 0) > 0, "bytes to db's cluster, labelled the same way");
  t.equal(sample(text2, "envoy_cluster_upstream_cx_connect_fail", { envoy_cluster_name: sni, ...destination, ...source2 }), 0, "connect failures start at 0 under the same labels");
  t.equal(sample(text2, "envoy_cluster_membership_total", { envoy_cluster_name: sni, ...destination, ...source2 }), 1, "membership gauge: db's one instance");
  const refused = await new Promise<string | null>((resolve) => {
    const s = tlsConnect({ host: hostPort(gw2.listen).host, port: hostPort(gw2.listen).port, servername: `nope.default.dc2.internal.${ca.trustDomain}`, rejectUnauthorized: false });
    s.on("error", (e: Error) => resolve(e.message));
    s.once("secureConnect", () => resolve(null));
  });
  t.not(refused, null, "a connection for a service dc2 does not have is refused");
  t.equal(sample(await scrape(gw2.adminAddr), "meshproxy_gateway_rejected_total", { reason: "unknown_sni", ...source2 }), 1, "and counted under the gateway's source labels too");

  const text1 = await scrape(gw1.adminAddr);
  const source1 = { local_cluster: "edge-gw", consul_source_service: "edge-gw", consul_source_namespace: "default", consul_source_partition: "default", consul_source_datacenter: "dc1" };
  const hop = labelsOf(text1, "meshproxy_gateway_forwarded_total", { envoy_cluster_name: `dc2.internal.${ca.trustDomain}`, ...source1 });
  t.ok(hop, "gateway dc1 (-service edge-gw): the hop to dc2's gateways, under its own service name");
  t.equal(Number(/ (\S+)$/.exec(text1.split("\n").find((l) => l.startsWith("meshproxy_gateway_forwarded_total{") && l.includes(`envoy_cluster_name="dc2.internal.`)) ?? "")?.[1]), 1, "counted once");
  const destinationLabels = [...(hop ?? new Map<string, string>())].filter(([k, v]) => k.startsWith("consul_") && !k.startsWith("consul_source_") && v !== "");
  t.same(destinationLabels, [], "a remote datacenter's gateways match none of Consul's expressions: no destination label (Envoy leaves them out)");

  // The example dashboard's mesh gateway panels, through a real Prometheus scraping both gateways.
  const prom = await startPrometheus(t, [
    { address: gw1.adminAddr, path: "/stats/prometheus" },
    { address: gw2.adminAddr, path: "/stats/prometheus" },
  ]);
  await until(async () => Number((await prom.query("count_over_time(meshproxy_gateway_rejected_total[1m])")).result[0]?.value?.[1] ?? 0) >= 2, 30_000, `Prometheus to scrape both gateways twice; its stderr:\n${prom.stderr()}`);
  const dash = JSON.parse(await readFile(join(ROOT, "examples", "grafana", "meshproxy-dashboard.json"), "utf8")) as Dashboard;
  const variable = dash.templating.list.find((v) => v.name === "gateway");
  t.equal(variable?.query, "label_values(meshproxy_gateway_forwarded_total, consul_source_service)", "the dashboard's gateway variable");
  const listed = await prom.query(variable!.query.replace(/^label_values\((.*), *([a-z_]+)\)$/, "group by ($2) ($1)"));
  t.same(listed.result.map((r) => r.metric["consul_source_service"]).sort(), ["edge-gw", "mesh-gateway"], "lists both gateways by service name");
  const targets = dash.panels.flatMap((p) => (p.targets ?? []).filter((tg) => tg.expr.includes("$gateway")).map((tg) => ({ panel: p.title, expr: tg.expr })));
  t.ok(targets.length >= 4, `${targets.length} gateway panel queries`);
  for (const { panel, expr } of targets) {
    const q = expr.replace(/\$__rate_interval/g, "1m").replace(/\$gateway/g, ".*");
    const r = await prom.query(q);
    t.equal(r.status, "success", `${panel}: ${r.error ?? "valid"}`);
    t.ok(r.result.length > 0, `${panel}: returns data (${q})`);
  }
});
