// Turns the raw measurements into medians, figures (rows of the table), ratios and targets,
// and renders the markdown.
import { median, ratio, fmt, fmtRatio } from "./stats.mjs";


/**
 * meshproxy's columns: one per Node binary it ran on (`--node`). A single one keeps the key
 * "mesh" (and "mesh-gw" through the gateways), as before there was a choice.
 */
export const DEFAULT_VARIANTS = [{ key: "mesh", gwKey: "mesh-gw", label: "meshproxy" }];

/** summary[workload][path][metric] = median over rounds. */
export function summarize(runs) {
  const groups = new Map();
  for (const r of runs) {
    const k = `${r.workload}\u0000${r.path}`;
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(r);
  }
  const summary = {};
  for (const [k, rs] of groups) {
    const [workload, path] = k.split("\u0000");
    const metrics = {};
    for (const key of Object.keys(rs[0].metrics)) metrics[key] = median(rs.map((r) => r.metrics[key]));
    (summary[workload] ??= {})[path] = { ...metrics, rounds: rs.length };
  }
  return summary;
}

/** Per-round (path − direct) / 2 for the two-proxy paths, median over rounds. */
export function addedPerHop(runs, workload, metric, variants = DEFAULT_VARIANTS) {
  const byRound = new Map();
  for (const r of runs.filter((r) => r.workload === workload)) {
    if (!byRound.has(r.round)) byRound.set(r.round, {});
    byRound.get(r.round)[r.path] = r.metrics[metric];
  }
  const out = {};
  for (const p of [...variants.map((x) => x.key), "haproxy"]) {
    const xs = [...byRound.values()].filter((v) => typeof v.direct === "number" && typeof v[p] === "number").map((v) => (v[p] - v.direct) / 2);
    out[p] = median(xs);
  }
  return out;
}

/**
 * Per-round (path through two gateways − the same kind of pair without them) / 2, median over
 * rounds: what one gateway hop adds. Both paths ran in the same round, interleaved.
 */
export function addedPerGatewayHop(runs, workload, metric, variants = DEFAULT_VARIANTS) {
  const byRound = new Map();
  for (const r of runs.filter((r) => r.workload === workload)) {
    if (!byRound.has(r.round)) byRound.set(r.round, {});
    byRound.get(r.round)[r.path] = r.metrics[metric];
  }
  const out = {};
  for (const [p, g] of [...variants.map((x) => [x.key, x.gwKey]), ["haproxy", "haproxy-gw"]]) {
    const xs = [...byRound.values()].filter((v) => typeof v[p] === "number" && typeof v[g] === "number").map((v) => (v[g] - v[p]) / 2);
    out[p] = median(xs);
  }
  return out;
}

/**
 * One row of the table. values: by column key (direct, each variant's key, haproxy). The ratios
 * are per variant; meshOverHaproxy / meshOverDirect are the first variant's (the only one's
 * without --node).
 */
function makeRow(variants) {
  return (label, unit, values, better, extra = {}) => {
    const v = { direct: values.direct ?? null, haproxy: values.haproxy ?? null };
    for (const x of variants) v[x.key] = values[x.key] ?? null;
    const ratios = {};
    for (const x of variants) {
      const m = v[x.key];
      ratios[x.key] = { overHaproxy: typeof m === "number" ? ratio(m, v.haproxy) : null, overDirect: typeof m === "number" ? ratio(m, v.direct) : null, overFirst: typeof m === "number" ? ratio(m, v[variants[0].key]) : null };
    }
    const first = ratios[variants[0].key];
    return { label, unit, better, values: v, ratios, meshOverHaproxy: first.overHaproxy, meshOverDirect: first.overDirect, ...extra };
  };
}

/** The table's rows, in order. Rows whose workload did not run are left out. */
export function figures(summary, runs, cfg, variants = DEFAULT_VARIANTS) {
  const rows = [];
  const row = makeRow(variants);
  // "mesh" in a column list stands for every variant's column.
  const cols = (...names) => names.flatMap((n) => (n === "mesh" ? variants.map((x) => x.key) : [n]));
  const pick = (summary, workload, metric, paths = ["direct", "mesh", "haproxy"]) => Object.fromEntries(cols(...paths).map((p) => [p, summary[workload]?.[p]?.[metric] ?? null]));
  const has = (w) => summary[w] !== undefined;
  if (has("keepalive")) {
    rows.push(row(`L4 keep-alive req/s (wrk -t1 -c${cfg.wrkConns})`, "req/s", pick(summary, "keepalive", "rps"), "higher", { key: "keepalive.rps" }));
    rows.push(row("L4 keep-alive latency p50 (closed loop)", "ms", pick(summary, "keepalive", "p50Ms"), "lower"));
    rows.push(row("L4 keep-alive latency p99 (closed loop)", "ms", pick(summary, "keepalive", "p99Ms"), "lower"));
    rows.push(row("proxy CPU-seconds per 10k requests, both proxies (keep-alive)", "CPU-s", pick(summary, "keepalive", "proxyCpuPer10k", ["mesh", "haproxy"]), "lower", { key: "keepalive.cpu" }));
    rows.push(row("… of which in the kernel (system time: TCP and syscalls)", "CPU-s", pick(summary, "keepalive", "proxySystemCpuPer10k", ["mesh", "haproxy"]), "lower"));
  }
  if (has("l7-keepalive")) {
    const paths = ["mesh", "haproxy"];
    rows.push(row(`L7 keep-alive req/s (HTTP mode, keep-alive to the next hop; wrk -t1 -c${cfg.wrkConns})`, "req/s", { direct: summary.keepalive?.direct?.rps ?? null, ...pick(summary, "l7-keepalive", "rps", paths) }, "higher", { key: "l7.rps" }));
    rows.push(row("L7 keep-alive latency p99 (closed loop)", "ms", { direct: summary.keepalive?.direct?.p99Ms ?? null, ...pick(summary, "l7-keepalive", "p99Ms", paths) }, "lower", { key: "l7.p99" }));
    rows.push(row("proxy CPU-seconds per 10k requests, both proxies (L7 keep-alive)", "CPU-s", pick(summary, "l7-keepalive", "proxyCpuPer10k", paths), "lower", { key: "l7.cpu" }));
  }
  if (has("newconn")) {
    rows.push(row(`new connection per request, req/s (wrk -c${cfg.newConnConns}, Connection: close)`, "conn/s", pick(summary, "newconn", "rps"), "higher", { key: "newconn.rps" }));
    rows.push(row("new connection per request, latency p99", "ms", pick(summary, "newconn", "p99Ms"), "lower"));
    rows.push(row("proxy CPU-seconds per 10k new connections, both proxies", "CPU-s", pick(summary, "newconn", "proxyCpuPer10k", ["mesh", "haproxy"]), "lower"));
  }
  if (has("bulk")) {
    rows.push(row(`bulk MB/s (${(cfg.bulkBytes / 2 ** 20).toLocaleString("en-US")} MiB, one connection)`, "MB/s", pick(summary, "bulk", "mbPerS"), "higher", { key: "bulk.mbps" }));
    rows.push(row("proxy CPU-seconds per GiB, both proxies (bulk)", "CPU-s", pick(summary, "bulk", "proxyCpuPerGiB", ["mesh", "haproxy"]), "lower"));
  }
  for (const rate of cfg.rates) {
    const w = `latency-${rate}`;
    if (!has(w)) continue;
    for (const [m, name] of [["p50Ms", "p50"], ["p99Ms", "p99"], ["p999Ms", "p99.9"]]) {
      rows.push(row(`${rate.toLocaleString("en-US")} req/s fixed rate: latency ${name}`, "ms", pick(summary, w, m), "lower"));
    }
    for (const [m, name] of [["p50Ms", "p50"], ["p99Ms", "p99"], ["p999Ms", "p99.9"]]) {
      const a = addedPerHop(runs, w, m, variants);
      rows.push(row(`${rate.toLocaleString("en-US")} req/s: added latency per hop ${name} ((path − direct) / 2)`, "ms", a, "lower", { key: `${w}.added.${name}`, noDirect: true }));
    }
    rows.push(row(`${rate.toLocaleString("en-US")} req/s: proxy CPU-seconds per 10k requests, both proxies`, "CPU-s", pick(summary, w, "proxyCpuPer10k", ["mesh", "haproxy"]), "lower"));
  }
  if (has("startup")) {
    rows.push(row("startup to ready, slower side (spawn → ready log / port accepting)", "ms", pick(summary, "startup", "maxMs", ["mesh", "haproxy"]), "lower", { key: "startup.max" }));
    rows.push(row("idle RSS per proxy after start, larger side", "MB", pick(summary, "startup", "idleRssMaxMb", ["mesh", "haproxy"]), "lower", { key: "idle.rss" }));
    rows.push(row("… of which anonymous (RssAnon: heap, buffers; not shared code pages)", "MB", pick(summary, "startup", "idleRssAnonMaxMb", ["mesh", "haproxy"]), "lower"));
  }
  if (has("peak")) {
    rows.push(row("peak RSS per proxy under load (VmHWM, larger side, idle-connection test excluded)", "MB", pick(summary, "peak", "peakRssMaxMb", ["mesh", "haproxy"]), "lower"));
  }
  // The issue's memory target is about the keep-alive load: L4 and L7 each (bulk's buffers and
  // the connection churn are in the row above).
  if (has("keepalive")) rows.push(row("peak RSS per proxy under L4 keep-alive (VmHWM, larger side)", "MB", pick(summary, "keepalive", "peakRssMaxMb", ["mesh", "haproxy"]), "lower", { key: "peak.l4" }));
  if (has("l7-keepalive")) rows.push(row("peak RSS per proxy under L7 keep-alive (VmHWM, larger side)", "MB", pick(summary, "l7-keepalive", "peakRssMaxMb", ["mesh", "haproxy"]), "lower", { key: "peak.l7" }));
  if (has("idle")) {
    const n = summary.idle[variants[0].key]?.n ?? summary.idle.haproxy?.n;
    // (runs in cfg.idleRounds round(s) only)
    rows.push(row(`RSS per idle mTLS connection, client-side proxy (${fmt(n)} held)`, "KB", pick(summary, "idle", "perConnClientKb", ["mesh", "haproxy"]), "lower"));
    rows.push(row(`RSS per idle mTLS connection, server-side proxy (${fmt(n)} held)`, "KB", pick(summary, "idle", "perConnServerKb", ["mesh", "haproxy"]), "lower", { key: "idle.perconn" }));
    rows.push(row(`peak RSS per proxy holding ${fmt(n)} idle connections, larger side`, "MB", pick(summary, "idle", "rssWithConnsMaxMb", ["mesh", "haproxy"]), "lower"));
  }
  // The gateway hop: its own block (rendered as a separate table), meshproxy's gateways against
  // HAProxy's; the values of the paths through the gateways sit in the mesh/haproxy columns.
  const gw = (w, metric) => Object.fromEntries([...variants.map((x) => [x.key, summary[w]?.[x.gwKey]?.[metric] ?? null]), ["haproxy", summary[w]?.["haproxy-gw"]?.[metric] ?? null]]);
  const gwRow = (label, unit, values, better, extra = {}) => rows.push(row(label, unit, values, better, { block: "gateway", noDirect: true, ...extra }));
  const gwLat = `gateway-latency-${cfg.gatewayRate}`;
  const rate = (cfg.gatewayRate ?? 0).toLocaleString("en-US");
  if (has("gateway-keepalive")) {
    gwRow(`keep-alive req/s through two gateways (wrk -t1 -c${cfg.wrkConns})`, "req/s", gw("gateway-keepalive", "rps"), "higher", { key: "gateway.rps" });
    gwRow("… the same pair without gateways, same round", "req/s", pick(summary, "gateway-keepalive", "rps", ["mesh", "haproxy"]), "higher");
  }
  if (has(gwLat)) {
    gwRow(`${rate} req/s fixed rate through two gateways: latency p50`, "ms", gw(gwLat, "p50Ms"), "lower");
    gwRow(`${rate} req/s fixed rate through two gateways: latency p99`, "ms", gw(gwLat, "p99Ms"), "lower");
    for (const [m, name] of [["p50Ms", "p50"], ["p99Ms", "p99"]]) {
      const a = addedPerGatewayHop(runs, gwLat, m, variants);
      gwRow(`${rate} req/s: added latency per gateway hop ${name} ((gateway path − sidecars only) / 2)`, "ms", a, "lower", { key: `gateway.added.${name}` });
    }
    gwRow(`${rate} req/s: gateway CPU-seconds per 10k requests, both gateways`, "CPU-s", gw(gwLat, "gatewayCpuPer10k"), "lower");
  }
  if (has("gateway-keepalive")) {
    gwRow("keep-alive: gateway CPU-seconds per 10k requests, both gateways", "CPU-s", gw("gateway-keepalive", "gatewayCpuPer10k"), "lower", { key: "gateway.cpu" });
  }
  if (has("gateway-startup")) {
    gwRow("gateway RSS after start, larger gateway", "MB", gw("gateway-startup", "idleRssMaxMb"), "lower");
  }
  if (has("gateway-keepalive") || has(gwLat)) {
    const peak = (p) => {
      const xs = [summary["gateway-keepalive"]?.[p]?.gatewayPeakRssMaxMb, summary[gwLat]?.[p]?.gatewayPeakRssMaxMb].filter((x) => typeof x === "number");
      return xs.length ? Math.max(...xs) : null;
    };
    gwRow("gateway peak RSS under the gateway workload (VmHWM, larger gateway)", "MB", Object.fromEntries([...variants.map((x) => [x.key, peak(x.gwKey)]), ["haproxy", peak("haproxy-gw")]]), "lower");
  }
  if (has("weight-shift")) {
    const paths = ["mesh", "haproxy"];
    rows.push(row("weight change under load (1,000 req/s, v1 → v2): failed requests", "requests", pick(summary, "weight-shift", "failed", paths), "lower", { key: "shift.failed" }));
    rows.push(row("… time from the change command to the first answer from v2", "ms", pick(summary, "weight-shift", "firstNewMs", paths), "lower"));
    rows.push(row("… time from the change command to the last answer from v1", "ms", pick(summary, "weight-shift", "lastOldMs", paths), "lower"));
    rows.push(row("… of which the change command itself ran", "ms", pick(summary, "weight-shift", "commandMs", paths), "lower"));
    rows.push(row("… latency p99 before the change", "ms", pick(summary, "weight-shift", "p99BeforeMs", paths), "lower"));
    rows.push(row("… latency p99 in the second after the change", "ms", pick(summary, "weight-shift", "p99AfterMs", paths), "lower"));
  }
  return rows;
}

/**
 * The issue's targets, evaluated on this run for each Node variant. value / met: the first
 * variant's (met: true / false / null when not measured); byVariant: every variant's, by key.
 */
export function targets(summary, runs, rows, variants = DEFAULT_VARIANTS) {
  const byKey = Object.fromEntries(rows.filter((r) => r.key).map((r) => [r.key, r]));
  const t = [];
  const ge = (x, g) => (typeof x === "number" ? x >= g : null);
  const le = (x, g) => (typeof x === "number" ? x <= g : null);
  /** valueOf(variant key) → the figure; check(value) → met. */
  const add = (name, goal, valueOf, check, note = "") => {
    const byVariant = Object.fromEntries(variants.map((x) => {
      const value = valueOf(x.key);
      return [x.key, { value, met: check(value) }];
    }));
    const first = byVariant[variants[0].key];
    t.push({ name, goal, value: first.value, met: first.met, byVariant, note });
  };
  const r = (k) => byKey[k];
  const overHaproxy = (k) => (key) => r(k).ratios[key].overHaproxy;
  const value = (k) => (key) => r(k).values[key];
  // Issue 14's targets first (L7, then L4, bulk, new connections, memory), then issue 6's remaining ones.
  if (r("l7.cpu")) add("L7 keep-alive: proxy CPU per request, meshproxy ÷ HAProxy", "≤ 2.0×", overHaproxy("l7.cpu"), (v) => le(v, 2));
  if (r("l7.rps")) {
    const mesh = variants.map((x) => fmt(r("l7.rps").values[x.key])).join(" / ");
    add("L7 keep-alive req/s, meshproxy ÷ HAProxy", "≥ 0.6×", overHaproxy("l7.rps"), (v) => ge(v, 0.6), `meshproxy ${mesh}, HAProxy ${fmt(r("l7.rps").values.haproxy)} req/s`);
  }
  if (r("l7.p99")) add("L7 keep-alive p99, meshproxy ÷ HAProxy", "≤ 2.0×", overHaproxy("l7.p99"), (v) => le(v, 2));
  if (r("keepalive.cpu")) add("L4 keep-alive: proxy CPU per request, meshproxy ÷ HAProxy", "≤ 1.4×", overHaproxy("keepalive.cpu"), (v) => le(v, 1.4));
  if (r("bulk.mbps")) add("bulk MB/s, meshproxy ÷ HAProxy", "≥ 0.8×", overHaproxy("bulk.mbps"), (v) => ge(v, 0.8));
  if (r("newconn.rps")) add("new mTLS connections per second, meshproxy ÷ HAProxy", "≥ 1.0×", overHaproxy("newconn.rps"), (v) => ge(v, 1));
  if (r("idle.rss")) add("idle RSS per proxy (MB)", "≤ 50 MB", value("idle.rss"), (v) => le(v, 50), `HAProxy: ${fmt(r("idle.rss").values.haproxy)} MB`);
  if (r("peak.l4") || r("peak.l7")) {
    const larger = (key) => {
      const xs = [r("peak.l4")?.values[key], r("peak.l7")?.values[key]].filter((x) => typeof x === "number");
      return xs.length ? Math.max(...xs) : null;
    };
    add(`peak RSS per proxy under keep-alive load (MB, ${[r("peak.l4") && "L4", r("peak.l7") && "L7"].filter(Boolean).join(" and ")}, larger)`, "≤ 80 MB", larger, (v) => le(v, 80), `HAProxy: ${fmt(larger("haproxy"))} MB`);
  }
  if (variants.some((x) => summary.idle?.[x.key])) {
    const larger = (s) => (s ? Math.max(s.perConnClientKb ?? -Infinity, s.perConnServerKb ?? -Infinity) : -Infinity);
    const h = larger(summary.idle.haproxy);
    add(
      "RSS per idle mTLS connection (KB, larger side; issue 6)",
      "≤ 16 KB",
      (key) => (Number.isFinite(larger(summary.idle[key])) ? larger(summary.idle[key]) : null),
      (v) => le(v, 16),
      Number.isFinite(h) ? `HAProxy: ${fmt(h)} KB` : "",
    );
  }
  if (r("keepalive.rps")) add("L4 keep-alive req/s, meshproxy ÷ HAProxy (issue 6)", "≥ 1.0×", overHaproxy("keepalive.rps"), (v) => ge(v, 1));
  if (r("latency-1000.added.p99")) add("p99 latency added per hop at 1,000 req/s (ms; issue 6)", "≤ 0.5 ms", value("latency-1000.added.p99"), (v) => le(v, 0.5), `HAProxy: ${fmt(r("latency-1000.added.p99").values.haproxy)} ms`);
  if (r("startup.max")) add("startup to ready (ms, slower side; issue 6)", "≤ 300 ms", value("startup.max"), (v) => le(v, 300), `HAProxy: ${fmt(r("startup.max").values.haproxy)} ms`);
  if (r("shift.failed")) add("weight change under load: failed requests (issue 6)", "0", value("shift.failed"), (v) => (typeof v === "number" ? v === 0 : null), `HAProxy: ${fmt(r("shift.failed").values.haproxy)}`);
  return t;
}

function cell(row, path) {
  if (path === "direct" && row.noDirect) return "(baseline)";
  return fmt(row.values[path]);
}

/** Column title of a variant: "meshproxy" alone, else "meshproxy on node 24.1.0". */
const title = (x, variants) => (variants.length === 1 ? "meshproxy" : `meshproxy ${x.label}`);
const short = (x) => x.label;

/**
 * The results table. One Node variant: direct | meshproxy | HAProxy | ÷ HAProxy | ÷ direct.
 * Several: a column per variant, its ratio to HAProxy, and each later variant's ratio to the
 * first (what changing the Node binary does, from the same run).
 */
export function renderTable(rows, variants = DEFAULT_VARIANTS) {
  const lines = [];
  const main = rows.filter((r) => !r.block);
  if (variants.length === 1) {
    const k = variants[0].key;
    lines.push("| figure | unit | direct | meshproxy | HAProxy | meshproxy ÷ HAProxy | meshproxy ÷ direct |");
    lines.push("|---|---|---:|---:|---:|---:|---:|");
    for (const r of main) lines.push(`| ${r.label} | ${r.unit} | ${cell(r, "direct")} | ${cell(r, k)} | ${cell(r, "haproxy")} | ${fmtRatio(r.ratios[k].overHaproxy)} | ${r.noDirect ? "–" : fmtRatio(r.ratios[k].overDirect)} |`);
    return lines.join("\n");
  }
  const later = variants.slice(1);
  const head = ["figure", "unit", "direct", ...variants.map((x) => title(x, variants)), "HAProxy", ...variants.map((x) => `${short(x)} ÷ HAProxy`), ...later.map((x) => `${short(x)} ÷ ${short(variants[0])}`)];
  lines.push(`| ${head.join(" | ")} |`);
  lines.push(`|---|---|${head.slice(2).map(() => "---:").join("|")}|`);
  for (const r of main) {
    const cells = [r.label, r.unit, cell(r, "direct"), ...variants.map((x) => cell(r, x.key)), cell(r, "haproxy"), ...variants.map((x) => fmtRatio(r.ratios[x.key].overHaproxy)), ...later.map((x) => fmtRatio(r.ratios[x.key].overFirst))];
    lines.push(`| ${cells.join(" | ")} |`);
  }
  return lines.join("\n");
}

/** The "Gateway hop" block: meshproxy's two mesh gateways against HAProxy's, or null if it did not run. */
export function renderGatewayTable(rows, variants = DEFAULT_VARIANTS) {
  const block = rows.filter((r) => r.block === "gateway");
  if (!block.length) return null;
  const later = variants.slice(1);
  const head = ["figure (gateway hop)", "unit", ...variants.map((x) => title(x, variants)), "HAProxy", ...variants.map((x) => (variants.length === 1 ? "meshproxy ÷ HAProxy" : `${short(x)} ÷ HAProxy`)), ...later.map((x) => `${short(x)} ÷ ${short(variants[0])}`)];
  const lines = [`| ${head.join(" | ")} |`, `|---|---|${head.slice(2).map(() => "---:").join("|")}|`];
  for (const r of block) {
    const cells = [r.label, r.unit, ...variants.map((x) => cell(r, x.key)), cell(r, "haproxy"), ...variants.map((x) => fmtRatio(r.ratios[x.key].overHaproxy)), ...later.map((x) => fmtRatio(r.ratios[x.key].overFirst))];
    lines.push(`| ${cells.join(" | ")} |`);
  }
  return lines.join("\n");
}

export function renderTargets(ts, variants = DEFAULT_VARIANTS) {
  const value = (t, v) => (/÷/.test(t.name) ? fmtRatio(v) : fmt(v));
  const met = (m) => (m === null ? "not measured" : m ? "**met**" : "**missed**");
  if (variants.length === 1) {
    const lines = ["| target | goal | meshproxy (this run) | met? | note |", "|---|---|---:|---|---|"];
    for (const t of ts) lines.push(`| ${t.name} | ${t.goal} | ${value(t, t.value)} | ${met(t.met)} | ${t.note} |`);
    return lines.join("\n");
  }
  const lines = [`| target | goal | ${variants.map((x) => title(x, variants)).join(" | ")} | note |`, `|---|---|${variants.map(() => "---:").join("|")}|---|`];
  for (const t of ts) lines.push(`| ${t.name} | ${t.goal} | ${variants.map((x) => `${value(t, t.byVariant[x.key].value)} ${met(t.byVariant[x.key].met)}`).join(" | ")} | ${t.note} |`);
  return lines.join("\n");
}
