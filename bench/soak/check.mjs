// The soak's verdicts: which failures an injected fault explains (its time window and blast
// radius), which successes must not have happened (a denied caller served), and whether a
// sidecar's memory or descriptors grow.

/** The service an instance (or sidecar) name belongs to: api-v1a → api. */
export const serviceOf = (instance) => instance.replace(/-.*$/, "");

const overlaps = (r, a, b) => r.start <= b && r.end >= a;
const within = (t, a, b) => t >= a && t <= b;

/**
 * Whether the executed fault `ev` (with epoch-ms t0, t1 and settle) explains the failure `r`.
 * The blast radius of each kind, as documented in bench/SOAK.md:
 *  kill X    requests to X's service in flight at the kill or started within settle of it (the
 *            caller's pooled connections to X break; a connect that X refuses is retried elsewhere
 *            and X is passed over while it backs off, and api's v2 fails over to v1); streams on X,
 *            and stream connects to the service, ending in that window. Requests failing later, while X is still down, are not explained.
 *  kill gw-dc2  ledger streams (they all cross dc2's only gateway) ending in [t0, restarted + settle]
 *  drain X   requests to X's service *started* after the SIGTERM (racing the deregistration) up to
 *            restarted + settle; requests already in flight at the SIGTERM are not explained;
 *            streams on X closed at the end of the drain, connects to the service in the window
 *  hang X    requests to X's service overlapping [t0, t1 + the app timeout + settle]
 *  reset X   requests to X's service overlapping [t0, t1 + settle]
 *  deny      403s to the intruder started in [t0, t1 + settle]
 *  burst     new stream connects from web to echo ending in [t0, t1 + settle] (the listener and
 *            the echo sidecars' handshake limits refuse some); established streams are not
 *  fdx       anything of the tight sidecar overlapping [t0, t1 + settle]
 *  weights, corrupt, rootRotation: nothing (config changes must not drop a request)
 */
export function explains(ev, r, { appTimeoutMs }) {
  const a = ev.t0;
  const b = ev.t1 + ev.settleMs;
  const svc = ev.target.includes("-") ? serviceOf(ev.target) : null;
  switch (ev.kind) {
    case "kill":
      // dc2's only mesh gateway: every ledger stream crosses it, and none can start while it is down.
      if (ev.target === "gw-dc2") return r.proto === "tcp" && r.service === "ledger" && within(r.end, a, b);
      if (r.service !== svc) return false;
      if (r.proto === "tcp") return (r.instance === ev.target || r.phase === "connect") && within(r.end, a, a + ev.settleMs);
      return overlaps(r, a, a + ev.settleMs);
    case "drain":
      if (r.service !== svc) return false;
      if (r.proto === "tcp") return (r.instance === ev.target || r.phase === "connect") && within(r.end, a, b);
      return within(r.start, a, b);
    case "hang":
      return r.proto === "http" && r.service === svc && overlaps(r, a, b + appTimeoutMs);
    case "reset":
      return r.proto === "http" && r.service === svc && overlaps(r, a, b);
    case "deny":
      return r.caller === "intruder" && r.status === 403 && within(r.start, a, b);
    case "burst":
      return r.proto === "tcp" && r.caller === "web" && r.service === "echo" && r.phase === "connect" && within(r.end, a, b);
    case "fdx":
      return r.caller === "tight" && overlaps(r, a, b);
    default:
      return false;
  }
}

/** Classifies every failure: explained (by which event) or not. */
export function classify(failures, events, opts) {
  const unexplained = [];
  const byEvent = new Map(events.map((e) => [e.n, 0]));
  const kindsByEvent = new Map();
  for (const r of failures) {
    const ev = events.find((e) => explains(e, r, opts));
    if (!ev) {
      unexplained.push(r);
      continue;
    }
    byEvent.set(ev.n, byEvent.get(ev.n) + 1);
    const kind = `${r.caller}→${r.service} ${r.proto === "tcp" ? `${r.phase}: ${r.error}` : `${r.status || r.error}${r.flags ? ` ${r.flags}` : ""}`}`;
    if (!kindsByEvent.has(ev.n)) kindsByEvent.set(ev.n, new Map());
    const m = kindsByEvent.get(ev.n);
    m.set(kind, (m.get(kind) ?? 0) + 1);
  }
  return { unexplained, byEvent, kindsByEvent };
}

/**
 * Successes the intentions forbade: a request of the intruder started after a deny had had
 * `propagationMs` to reach every sidecar, and before the allow that ended it began to be written.
 */
export function wronglyAllowed(oks, events, { propagationMs }) {
  const denies = events.filter((e) => e.kind === "deny");
  return oks.filter((r) => r.caller === "intruder" && denies.some((d) => r.start >= d.t0 + propagationMs && r.start < (d.allowAt ?? d.t1)));
}

/** Least-squares slope of ys over xs (per unit of x), or null with fewer than 3 points. */
export function slope(xs, ys) {
  const n = xs.length;
  if (n < 3) return null;
  const mx = xs.reduce((s, x) => s + x, 0) / n;
  const my = ys.reduce((s, y) => s + y, 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i] - mx) * (ys[i] - my);
    sxx += (xs[i] - mx) ** 2;
  }
  return sxx === 0 ? 0 : sxy / sxx;
}

/**
 * The leak rule, in the issue's words "a leak (monotonic growth after warm-up) fails the run".
 * Over the run's second half (warm-up long past), each series is cut into LEAK_WINDOWS equal
 * windows and each window's level is the median of its samples. A series grows when
 *  - its growth, the rise from the first window's level to the last's scaled to the whole span
 *    (a linear rise of G over the span moves the level by G/LEAK_WINDOWS per window), is over
 *    both an absolute and a relative bound, and
 *  - it keeps rising: all successive windows but at most one rise, each by at least
 *    limit / (2 × LEAK_WINDOWS) — half of what a leak at the limit adds per window.
 * A one-time step (the allocator keeping the pages of a burst's thousands of connections, a pool
 * grown by a hang) raises one window and then stays flat: reported, not a leak. A leak per burst
 * or per renewal keeps stepping up, and a linear one rises in every window.
 * Only quiet samples count: none taken while a fault runs or within `quietMs` after it (a burst's
 * thousands of connections are load, not growth). A sidecar restarted by the chaos is judged on
 * its process with the most such samples, from its own warm-up on, and only if they span 40 % of
 * the half and fall in at least three windows. `gate` lists the series that fail the run; the
 * others are reported. The least-squares growth (slope × span) is reported beside it.
 */
export const LEAK_BOUNDS = {
  rssMb: { abs: 24, rel: 0.2, what: "RSS (MB)" },
  heapMb: { abs: 12, rel: 0.25, what: "V8 heap live after a full GC (MB)" },
  fdsNet: { abs: 24, rel: 0.25, what: "open descriptors that are not a live TCP connection" },
};
export const LEAK_WINDOWS = 4;

function median(ys) {
  const s = [...ys].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** The median of the points of each of `windows` equal windows of [from, to] (null for an empty window). */
export function windowLevels(points, from, to, windows = LEAK_WINDOWS) {
  const width = (to - from) / windows;
  const buckets = Array.from({ length: windows }, () => []);
  for (const p of points) buckets[Math.min(windows - 1, Math.max(0, Math.floor((p.t - from) / width)))].push(p.y);
  return buckets.map((b) => (b.length ? median(b) : null));
}

/**
 * Whether window levels show monotonic growth over `limit` (see the leak rule above):
 * { growth, rises, steps, over }, or null with fewer than three non-empty windows.
 */
export function sustainedGrowth(levels, limit) {
  const at = levels.flatMap((y, i) => (y === null ? [] : [{ i, y }]));
  if (at.length < 3) return null;
  const first = at[0];
  const last = at[at.length - 1];
  const growth = ((last.y - first.y) * levels.length) / (last.i - first.i);
  const minRise = limit / (2 * levels.length);
  let rises = 0;
  for (let k = 1; k < at.length; k++) if (at[k].y - at[k - 1].y >= minRise * (at[k].i - at[k - 1].i)) rises++;
  const steps = at.length - 1;
  return { growth, rises, steps, over: growth > limit && rises >= Math.max(2, steps - 1) };
}

export function leakCheck(samples, { fromMs, toMs, events, quietMs, quietAfterBurstMs = quietMs, warmupMs, gate }) {
  const after = (e) => (e.kind === "burst" || e.kind === "fdx" ? quietAfterBurstMs : quietMs);
  const quiet = (t) => !events.some((e) => t >= e.t0 - 1000 && t <= (e.t1 ?? e.t0) + after(e));
  const byName = new Map();
  for (const s of samples) {
    if (!byName.has(s.name)) byName.set(s.name, new Map());
    const byPid = byName.get(s.name);
    if (!byPid.has(s.pid)) byPid.set(s.pid, []);
    byPid.get(s.pid).push(s);
  }
  const verdicts = [];
  for (const [name, byPid] of byName) {
    const judgeable = (proc) => proc.filter((s) => s.t >= Math.max(fromMs, proc[0].t + warmupMs) && s.t <= toMs && quiet(s.t));
    const pts = [...byPid.values()].map(judgeable).sort((a, b) => b.length - a.length)[0];
    const span = pts.length ? pts[pts.length - 1].t - pts[0].t : 0;
    if (span < 0.4 * (toMs - fromMs)) {
      verdicts.push({ name, judged: false, why: "not judged: too few quiet samples after its warm-up (restarted late, or faults back to back)" });
      continue;
    }
    const v = { name, judged: true, pid: pts[0].pid, spanS: span / 1000, points: pts.length, metrics: {} };
    for (const [key, bound] of Object.entries(LEAK_BOUNDS)) {
      const xs = pts.filter((s) => typeof s[key] === "number");
      const m = slope(
        xs.map((s) => s.t),
        xs.map((s) => s[key]),
      );
      if (m === null) continue;
      const mean = xs.reduce((acc, s) => acc + s[key], 0) / xs.length;
      const limit = Math.max(bound.abs, bound.rel * mean);
      const levels = windowLevels(
        xs.map((s) => ({ t: s.t, y: s[key] })),
        pts[0].t,
        pts[pts.length - 1].t,
      );
      const g = sustainedGrowth(levels, limit);
      if (g === null) continue;
      v.metrics[key] = { mean, growth: g.growth, rises: g.rises, steps: g.steps, levels, slopeGrowth: m * span, limit, perHour: m * 3_600_000, over: g.over, gating: gate.includes(key) };
    }
    v.leak = Object.values(v.metrics).some((m) => m.over && m.gating);
    verdicts.push(v);
  }
  return verdicts;
}
