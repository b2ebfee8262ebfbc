// Turns the raw measurements into medians, figures (rows of the table), ratios and targets,
// and renders the markdown.
import { median, ratio, fmt, fmtRatio } from "./stats.mjs";


const PATHS = ["direct", "mesh", "haproxy"];

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
export function addedPerHop(runs, workload, metric) {
  const byRound = new Map();
  for (const r of runs.filter((r) => r.workload === workload)) {
    if (!byRound.has(r.round)) byRound.set(r.round, {});
    byRound.get(r.round)[r.path] = r.metrics[metric];
  }
  const out = {};
  for (const p of ["mesh", "haproxy"]) {
    const xs = [...byRound.values()].filter((v) => typeof v.direct === "number" && typeof v[p] === "number").map((v) => (v[p] - v.direct) / 2);
    out[p] = median(xs);
  }
  return out;
}

/**
 * Per-round (path through two gateways − the same kind of pair without them) / 2, median over
 * rounds: what one gateway hop adds. Both paths ran in the same round, interleaved.
 */
export function addedPerGatewayHop(runs, workload, metric) {
  const byRound = new Map();
  for (const r of runs.filter((r) => r.workload === workload)) {
    if (!byRound.has(r.round)) byRound.set(r.round, {});
    byRound.get(r.round)[r.path] = r.metrics[metric];
  }
  const out = {};
  for (const p of ["mesh", "haproxy"]) {
    const xs = [...byRound.values()].filter((v) => typeof v[p] === "number" && typeof v[`${p}-gw`] === "number").map((v) => (v[`${p}-gw`] - v[p]) / 2);
    out[p] = median(xs);
  }
  return out;
}

function row(label, unit, values, better, extra = {}) {
  const v = { direct: values.direct ?? null, mesh: values.mesh ?? null, haproxy: values.haproxy ?? null };
  return {
    label,
    unit,
    better,
    values: v,
    meshOverHaproxy: typeof v.mesh === "number" ? ratio(v.mesh, v.haproxy) : null,
    meshOverDirect: typeof v.mesh === "number" ? ratio(v.mesh, v.direct) : null,
    ...extra,
  };
}

const pick = (summary, workload, metric, paths = PATHS) => Object.fromEntries(paths.map((p) => [p, summary[workload]?.[p]?.[metric] ?? null]));

/** The table's rows, in order. Rows whose workload did not run are left out. */
export function figures(summary, runs, cfg) {
  const rows = [];
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
    rows.push(row("L7 keep-alive latency p99 (closed loop)", "ms", { direct: summary.keepalive?.direct?.p99Ms ?? null, ...pick(summary, "l7-keepalive", "p99Ms", paths) }, "lower"));
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
      const a = addedPerHop(runs, w, m);
      rows.push(row(`${rate.toLocaleString("en-US")} req/s: added latency per hop ${name} ((path − direct) / 2)`, "ms", { mesh: a.mesh, haproxy: a.haproxy }, "lower", { key: `${w}.added.${name}`, noDirect: true }));
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
  if (has("idle")) {
    const n = summary.idle.mesh?.n ?? summary.idle.haproxy?.n;
    // (runs in cfg.idleRounds round(s) only)
    rows.push(row(`RSS per idle mTLS connection, client-side proxy (${fmt(n)} held)`, "KB", pick(summary, "idle", "perConnClientKb", ["mesh", "haproxy"]), "lower"));
    rows.push(row(`RSS per idle mTLS connection, server-side proxy (${fmt(n)} held)`, "KB", pick(summary, "idle", "perConnServerKb", ["mesh", "haproxy"]), "lower", { key: "idle.perconn" }));
    rows.push(row(`peak RSS per proxy holding ${fmt(n)} idle connections, larger side`, "MB", pick(summary, "idle", "rssWithConnsMaxMb", ["mesh", "haproxy"]), "lower"));
  }
  // The gateway hop: its own block (rendered as a separate table), meshproxy's gateways against
  // HAProxy's; the values of the paths through the gateways sit in the mesh/haproxy columns.
  const gw = (w, metric) => ({ mesh: summary[w]?.["mesh-gw"]?.[metric] ?? null, haproxy: summary[w]?.["haproxy-gw"]?.[metric] ?? null });
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
      const a = addedPerGatewayHop(runs, gwLat, m);
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
    gwRow("gateway peak RSS under the gateway workload (VmHWM, larger gateway)", "MB", { mesh: peak("mesh-gw"), haproxy: peak("haproxy-gw") }, "lower");
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

/** The targets, evaluated on this run. met: true / false / null (not measured) / "pending". */
export function targets(summary, runs, rows) {
  const byKey = Object.fromEntries(rows.filter((r) => r.key).map((r) => [r.key, r]));
  const t = [];
  const add = (name, goal, value, met, note = "") => t.push({ name, goal, value, met, note });
  const ge = (x, g) => (typeof x === "number" ? x >= g : null);
  const le = (x, g) => (typeof x === "number" ? x <= g : null);
  const r = (k) => byKey[k];
  if (r("keepalive.rps")) add("L4 keep-alive req/s, meshproxy ÷ HAProxy", "≥ 1.0×", r("keepalive.rps").meshOverHaproxy, ge(r("keepalive.rps").meshOverHaproxy, 1));
  if (r("keepalive.cpu")) add("proxy CPU per request, meshproxy ÷ HAProxy", "≤ 1.0×", r("keepalive.cpu").meshOverHaproxy, le(r("keepalive.cpu").meshOverHaproxy, 1));
  if (r("latency-1000.added.p99")) {
    const v = r("latency-1000.added.p99").values.mesh;
    add("p99 latency added per hop at 1,000 req/s (ms)", "≤ 0.5 ms", v, le(v, 0.5), `HAProxy: ${fmt(r("latency-1000.added.p99").values.haproxy)} ms`);
  }
  if (r("bulk.mbps")) add("bulk MB/s, meshproxy ÷ HAProxy", "≥ 1.0×", r("bulk.mbps").meshOverHaproxy, ge(r("bulk.mbps").meshOverHaproxy, 1));
  if (r("newconn.rps")) add("new mTLS connections per second, meshproxy ÷ HAProxy", "≥ 1.0×", r("newconn.rps").meshOverHaproxy, ge(r("newconn.rps").meshOverHaproxy, 1));
  if (r("l7.rps")) {
    const v = r("l7.rps").meshOverHaproxy;
    add("L7 keep-alive req/s, meshproxy ÷ HAProxy", "≥ 1.0×", v, ge(v, 1), `meshproxy ${fmt(r("l7.rps").values.mesh)}, HAProxy ${fmt(r("l7.rps").values.haproxy)} req/s`);
  }
  if (r("idle.rss")) {
    const v = r("idle.rss").values.mesh;
    add("idle RSS per proxy (MB)", "≤ 50 MB", v, le(v, 50), `HAProxy: ${fmt(r("idle.rss").values.haproxy)} MB`);
  }
  if (summary.idle?.mesh) {
    const v = Math.max(summary.idle.mesh.perConnClientKb ?? -Infinity, summary.idle.mesh.perConnServerKb ?? -Infinity);
    const h = summary.idle.haproxy ? Math.max(summary.idle.haproxy.perConnClientKb ?? -Infinity, summary.idle.haproxy.perConnServerKb ?? -Infinity) : null;
    add("RSS per idle mTLS connection (KB, larger side)", "≤ 16 KB", Number.isFinite(v) ? v : null, le(Number.isFinite(v) ? v : null, 16), h !== null && Number.isFinite(h) ? `HAProxy: ${fmt(h)} KB` : "");
  }
  if (r("startup.max")) {
    const v = r("startup.max").values.mesh;
    add("startup to ready (ms, slower side)", "≤ 300 ms", v, le(v, 300), `HAProxy: ${fmt(r("startup.max").values.haproxy)} ms`);
  }
  if (r("shift.failed")) {
    const v = r("shift.failed").values.mesh;
    add("weight change under load: failed requests", "0 (no numeric target in the issue)", v, typeof v === "number" ? v === 0 : null, `HAProxy: ${fmt(r("shift.failed").values.haproxy)}`);
  }
  return t;
}

function cell(row, path) {
  if (path === "mesh" && row.pending) return `_${row.pending}_`;
  if (path === "haproxy" && row.haproxyPending) return "_pending_";
  if (path === "direct" && row.noDirect) return "(baseline)";
  const v = row.values[path];
  return fmt(v);
}

export function renderTable(rows) {
  const lines = [];
  lines.push("| figure | unit | direct | meshproxy | HAProxy | meshproxy ÷ HAProxy | meshproxy ÷ direct |");
  lines.push("|---|---|---:|---:|---:|---:|---:|");
  for (const r of rows.filter((r) => !r.block)) {
    const pend = Boolean(r.pending);
    lines.push(`| ${r.label} | ${r.unit} | ${cell(r, "direct")} | ${cell(r, "mesh")} | ${cell(r, "haproxy")} | ${pend ? "–" : fmtRatio(r.meshOverHaproxy)} | ${pend || r.noDirect ? "–" : fmtRatio(r.meshOverDirect)} |`);
  }
  return lines.join("\n");
}

/** The "Gateway hop" block: meshproxy's two mesh gateways against HAProxy's, or null if it did not run. */
export function renderGatewayTable(rows) {
  const block = rows.filter((r) => r.block === "gateway");
  if (!block.length) return null;
  const lines = ["| figure (gateway hop) | unit | meshproxy | HAProxy | meshproxy ÷ HAProxy |", "|---|---|---:|---:|---:|"];
  for (const r of block) lines.push(`| ${r.label} | ${r.unit} | ${cell(r, "mesh")} | ${cell(r, "haproxy")} | ${fmtRatio(r.meshOverHaproxy)} |`);
  return lines.join("\n");
}

export function renderTargets(ts) {
  const lines = ["| target | goal | meshproxy (this run) | met? | note |", "|---|---|---:|---|---|"];
  for (const t of ts) {
    const value = t.met === "pending" ? "–" : /÷/.test(t.name) ? fmtRatio(t.value) : fmt(t.value);
    const met = t.met === "pending" ? "pending" : t.met === null ? "not measured" : t.met ? "**met**" : "**missed**";
    lines.push(`| ${t.name} | ${t.goal} | ${value} | ${met} | ${t.note} |`);
  }
  return lines.join("\n");
}
