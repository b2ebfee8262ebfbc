// Open-loop, fixed-rate HTTP/1.1 load client (wrk is closed-loop: it waits for each response,
// so a slow proxy lowers its own offered load and hides its latency).
//
//   node latency-client.mjs --target 127.0.0.1:PORT --rate 1000 --duration 5 --conns 16 --warmup 1
//
// A pacer wakes every millisecond and releases every request whose scheduled time has come
// (rate × elapsed); each is sent on a free keep-alive connection, or queued until one frees up.
// Latency = response fully read − the moment the pacer released the request (hrtime), so time
// spent waiting for a connection counts (no coordinated omission inside the client); the pacer's
// own timer lag (≤ ~1 ms, the same on every path) does not. Prints one JSON line on stdout.
//
// --tally: also keep, per completed request, [completion ms since start, latency ms, first word
// of the body or "!error"] in `samples` (the weight-shift workload reads who answered when), and
// print {"started":<epoch ms>} as soon as the measured period starts.
import { connect } from "node:net";
import { parseArgs } from "node:util";

const { values: o } = parseArgs({
  options: {
    target: { type: "string" },
    rate: { type: "string", default: "1000" },
    duration: { type: "string", default: "5" },
    conns: { type: "string", default: "16" },
    warmup: { type: "string", default: "1" },
    path: { type: "string", default: "/" },
    tally: { type: "boolean", default: false },
  },
});
const tally = o.tally;
const tallied = [];
const [host, portStr] = o.target.split(":");
const port = Number(portStr);
const rate = Number(o.rate);
const durationS = Number(o.duration);
const warmupS = Number(o.warmup);
const nConns = Number(o.conns);
const REQ = Buffer.from(`GET ${o.path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: meshproxy-bench\r\n\r\n`);

const hr = () => Number(process.hrtime.bigint()) / 1e6; // ms, fractional
const samples = new Float64Array(Math.ceil(rate * (durationS + 1)) + 1024);
let nSamples = 0;
let errors = 0;
let completed = 0;
let queuedMax = 0;
let delayedByQueue = 0;
const free = [];
const queue = [];
let measureFrom = Infinity;

function makeConn() {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port, noDelay: true });
    const c = { s, buf: null, dispatchedAt: 0, busy: false, need: -1, headerEnd: -1 };
    s.once("connect", () => resolve(c));
    s.once("error", (e) => {
      if (c.busy) errors++;
      reject(e);
    });
    s.on("data", (d) => onData(c, d));
    s.on("close", () => {
      if (!stopping) {
        errors++;
        if (tally && c.busy) tallied.push([hr() - t0, hr() - c.dispatchedAt, "!error"]);
        process.stderr.write(`latency-client: a connection closed unexpectedly\n`);
      }
    });
  });
}

function onData(c, d) {
  c.buf = c.buf ? Buffer.concat([c.buf, d]) : d;
  for (;;) {
    if (c.headerEnd < 0) {
      const i = c.buf.indexOf("\r\n\r\n");
      if (i < 0) return;
      const head = c.buf.subarray(0, i).toString("latin1");
      const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
      if (!m) {
        errors++;
        c.s.destroy();
        return;
      }
      if (!head.startsWith("HTTP/1.1 200")) errors++;
      c.headerEnd = i + 4;
      c.need = c.headerEnd + Number(m[1]);
    }
    if (c.buf.length < c.need) return;
    const t = hr();
    if (tally) {
      const body = c.buf.subarray(c.headerEnd, Math.min(c.need, c.headerEnd + 16)).toString("latin1");
      const ok = c.buf.subarray(0, 12).toString("latin1") === "HTTP/1.1 200";
      tallied.push([Math.round((t - t0) * 10) / 10, Math.round((t - c.dispatchedAt) * 1000) / 1000, ok ? body.split(" ")[0] : "!error"]);
    }
    const rest = c.buf.length > c.need ? c.buf.subarray(c.need) : null;
    c.buf = rest;
    c.headerEnd = -1;
    c.need = -1;
    completed++;
    if (c.dispatchedAt >= measureFrom && nSamples < samples.length) samples[nSamples++] = t - c.dispatchedAt;
    c.busy = false;
    if (queue.length > 0) send(c, queue.shift());
    else free.push(c);
    if (!rest) return;
  }
}

function send(c, dispatchedAt) {
  c.busy = true;
  c.dispatchedAt = dispatchedAt;
  c.s.write(REQ);
}

let stopping = false;
let t0 = 0;
const conns = await Promise.all(Array.from({ length: nConns }, makeConn));
free.push(...conns);
t0 = hr();
measureFrom = t0 + warmupS * 1000;
if (tally) process.stdout.write(JSON.stringify({ started: Date.now() }) + "\n");
const tEnd = t0 + (warmupS + durationS) * 1000;
let released = 0;

await new Promise((resolve) => {
  const tick = () => {
    const now = hr();
    const due = Math.floor(((Math.min(now, tEnd) - t0) / 1000) * rate);
    while (released < due) {
      released++;
      const c = free.pop();
      if (c) send(c, now);
      else {
        queue.push(now);
        delayedByQueue++;
      }
    }
    if (queue.length > queuedMax) queuedMax = queue.length;
    if (now >= tEnd) return resolve();
    setTimeout(tick, 1);
  };
  tick();
});
// Let in-flight requests finish (bounded).
const waitUntil = hr() + 3000;
while ((queue.length > 0 || conns.some((c) => c.busy)) && hr() < waitUntil) await new Promise((r) => setTimeout(r, 5));
stopping = true;
const unfinished = queue.length + conns.filter((c) => c.busy).length;
for (const c of conns) c.s.destroy();

const lat = Array.from(samples.subarray(0, nSamples)).sort((a, b) => a - b);
const pct = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.ceil((p / 100) * lat.length) - 1)] : null);
const measuredS = durationS;
process.stdout.write(
  JSON.stringify({
    rate,
    conns: nConns,
    durationS,
    released,
    completed,
    measured: lat.length,
    achievedRate: lat.length / measuredS,
    errors,
    unfinished,
    queuedMax,
    delayedByQueue,
    p50Ms: pct(50),
    p90Ms: pct(90),
    p99Ms: pct(99),
    p999Ms: pct(99.9),
    maxMs: lat.length ? lat[lat.length - 1] : null,
    meanMs: lat.length ? lat.reduce((a, b) => a + b, 0) / lat.length : null,
    ...(tally ? { samples: tallied } : {}),
  }) + "\n",
);
process.exit(0);
