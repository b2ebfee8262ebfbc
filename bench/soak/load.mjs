// The soak's open-loop load, run as its own process so its CPU is not the harness's.
//
// HTTP: for each flow (a caller's upstream listener for a service) requests are started at a fixed
// rate whatever the answers do (open loop: a slow or failing mesh does not slow the load down),
// each tagged `x-soak-id`. Every failure is reported with its start and end time, status, the
// sidecar's response flags and the error; flows marked `recordOk` (a caller that intentions may
// deny) report every success too, so the checker can find a denied caller that was served.
// TCP: long-lived streams through an upstream listener. Each reads the instance's greeting, then
// sends a numbered line every `pingMs` and expects it back; a stream that closes, errors or stalls
// is reported with the instance it was on, and a new one is opened.
// Bursts (a command on stdin): N connections opened at once to an address, held, then closed;
// their outcome is reported apart from the steady load.
//
// stdout: one JSON object per line: {type:"tick",...} each second, {type:"fail",...},
// {type:"ok",...}, {type:"burst",...}.
import { Pool } from "undici";
import { connect } from "node:net";
import { createInterface } from "node:readline";

const cfg = JSON.parse(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const MAX_OUTSTANDING = cfg.maxOutstanding ?? 4000;
const TIMEOUT_MS = cfg.timeoutMs ?? 30_000;

let nextId = 0;
const counters = new Map(); // "caller>service" → {sent, ok, fail, shed, byInstance}
function counter(caller, service) {
  const k = `${caller}>${service}`;
  let c = counters.get(k);
  if (!c) counters.set(k, (c = { sent: 0, ok: 0, fail: 0, shed: 0, byInstance: {}, latMs: [] }));
  return c;
}

// ---- HTTP flows ----
for (const flow of cfg.http ?? []) {
  const [host, port] = flow.target.split(":");
  const pool = new Pool(`http://${host}:${port}`, { connections: flow.connections ?? 32, pipelining: 1, headersTimeout: TIMEOUT_MS, bodyTimeout: TIMEOUT_MS, keepAliveTimeout: 60_000 });
  const c = counter(flow.caller, flow.service);
  let outstanding = 0;
  let credit = 0;
  let last = performance.now();
  const fire = () => {
    const id = ++nextId;
    c.sent++;
    if (outstanding >= MAX_OUTSTANDING) {
      c.shed++;
      return;
    }
    outstanding++;
    const slow = flow.slowEvery && id % flow.slowEvery === 0;
    const start = Date.now();
    const t0 = performance.now();
    pool
      .request({ method: "GET", path: slow ? `/slow?ms=${flow.slowMs ?? 400}` : "/", headers: { "x-soak-id": String(id) } })
      .then(async (res) => {
        await res.body.text();
        const end = Date.now();
        const instance = res.headers["x-soak-instance"];
        if (res.statusCode === 200 && typeof instance === "string") {
          c.ok++;
          c.byInstance[instance] = (c.byInstance[instance] ?? 0) + 1;
          if (c.latMs.length < 20_000) c.latMs.push(performance.now() - t0);
          if (flow.recordOk) out({ type: "ok", caller: flow.caller, service: flow.service, id, start, end, instance });
        } else {
          c.fail++;
          out({ type: "fail", proto: "http", caller: flow.caller, service: flow.service, id, start, end, status: res.statusCode, flags: res.headers["x-meshproxy-response-flags"] ?? null });
        }
      })
      .catch((e) => {
        c.fail++;
        out({ type: "fail", proto: "http", caller: flow.caller, service: flow.service, id, start, end: Date.now(), status: 0, error: e.code ?? e.message });
      })
      .finally(() => outstanding--);
  };
  setInterval(() => {
    const now = performance.now();
    credit += ((now - last) / 1000) * flow.rate;
    last = now;
    while (credit >= 1) {
      credit--;
      fire();
    }
  }, 5);
}

// ---- TCP streams ----
function stream(flow, c) {
  const [host, port] = flow.target.split(":");
  const start = Date.now();
  const s = connect({ host, port: Number(port) });
  s.setNoDelay(true);
  let instance = null;
  let buf = "";
  let seq = 0;
  let awaiting = null; // { line, since }
  let done = false;
  const finish = (reason) => {
    if (done) return;
    done = true;
    clearInterval(timer);
    s.destroy();
    c.fail++;
    out({ type: "fail", proto: "tcp", caller: flow.caller, service: flow.service, start, end: Date.now(), instance, phase: instance ? "established" : "connect", error: reason });
    setTimeout(() => stream(flow, c), 200);
  };
  s.setEncoding("utf8");
  s.on("data", (d) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (instance === null) {
        instance = line;
        c.sent++;
        c.byInstance[instance] = (c.byInstance[instance] ?? 0) + 1;
      } else if (awaiting && line === awaiting.line) {
        awaiting = null;
        c.ok++;
      } else {
        finish(`echo mismatch: got ${JSON.stringify(line.slice(0, 40))}`);
      }
    }
  });
  s.on("error", (e) => finish(e.code ?? e.message));
  s.on("close", () => finish("closed by the mesh"));
  const timer = setInterval(() => {
    if (instance === null) {
      if (Date.now() - start > 10_000) finish("no greeting within 10 s");
      return;
    }
    if (awaiting) {
      if (Date.now() - awaiting.since > 10_000) finish("echo stalled for 10 s");
      return;
    }
    awaiting = { line: `p${++seq}`, since: Date.now() };
    s.write(awaiting.line + "\n");
  }, flow.pingMs ?? 250);
}
for (const flow of cfg.tcp ?? []) {
  const c = counter(flow.caller, flow.service);
  for (let i = 0; i < flow.streams; i++) setTimeout(() => stream(flow, c), i * 20);
}

// ---- bursts ----
function burst({ id, target, n, holdMs }) {
  const [host, port] = target.split(":");
  const t0 = Date.now();
  let greeted = 0;
  let failed = 0;
  let closedEarly = 0;
  const sockets = [];
  for (let i = 0; i < n; i++) {
    const s = connect({ host, port: Number(port) });
    let got = false;
    s.on("data", () => {
      if (!got) {
        got = true;
        greeted++;
      }
    });
    s.on("error", () => {});
    s.on("close", () => {
      if (!got) failed++;
      else if (Date.now() < t0 + holdMs) closedEarly++;
    });
    sockets.push(s);
  }
  setTimeout(() => {
    const peakGreeted = greeted;
    for (const s of sockets) s.destroy();
    out({ type: "burst", id, target, n, greeted: peakGreeted, refused: failed, closedEarly, start: t0, end: Date.now() });
  }, holdMs);
}

createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = JSON.parse(line);
  if (cmd.type === "burst") burst(cmd);
});

setInterval(() => {
  const flows = {};
  for (const [k, c] of counters) {
    const lat = c.latMs.sort((a, b) => a - b);
    flows[k] = { sent: c.sent, ok: c.ok, fail: c.fail, shed: c.shed, byInstance: c.byInstance, p50: lat[lat.length >> 1] ?? null, p99: lat[Math.floor(lat.length * 0.99)] ?? null };
    c.sent = c.ok = c.fail = c.shed = 0;
    c.byInstance = {};
    c.latMs = [];
  }
  out({ type: "tick", t: Date.now(), flows });
}, 1000);
process.on("SIGTERM", () => process.exit(0));
