// Opens N idle TCP connections to the path under test (nothing is sent on them) and holds them.
// It opens them in waves and waits, after each wave, until the app reports them as accepted
// (GET /stats asked directly on the app's port), so "established" means end to end, through
// every proxy, and a pair of proxies is never handed thousands of handshakes at once.
// Prints {"established":N,"ms":…} on stdout when all are up, then holds them until killed.
//
//   node idle-holder.mjs --target 127.0.0.1:PORT --stats 127.0.0.1:APPPORT --n 10000 --wave 250
import { connect } from "node:net";
import { get } from "node:http";
import { parseArgs } from "node:util";

const { values: o } = parseArgs({
  options: {
    target: { type: "string" },
    stats: { type: "string" },
    n: { type: "string" },
    wave: { type: "string", default: "250" },
    timeout: { type: "string", default: "60" },
  },
});
const [host, port] = o.target.split(":");
const [sHost, sPort] = o.stats.split(":");
const n = Number(o.n);
const wave = Number(o.wave);
const timeoutMs = Number(o.timeout) * 1000;

function appAccepted() {
  return new Promise((resolve, reject) => {
    const req = get({ host: sHost, port: Number(sPort), path: "/stats", agent: false, headers: { connection: "close" } }, (res) => {
      let b = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (b += d));
      res.on("end", () => resolve(JSON.parse(b).accepted));
    });
    req.on("error", reject);
  });
}

const sockets = [];
let closedEarly = 0;
const t0 = performance.now();
// Each /stats call is itself one accepted connection: count them.
let statsCalls = 0;
const accepted = async () => {
  statsCalls++;
  return (await appAccepted()) - statsCalls;
};
const base = await accepted();
const deadline = t0 + timeoutMs;
while (sockets.length < n) {
  const k = Math.min(wave, n - sockets.length);
  await Promise.all(
    Array.from({ length: k }, () => {
      return new Promise((resolve, reject) => {
        const s = connect({ host, port: Number(port) });
        s.once("connect", () => resolve());
        s.once("error", reject);
        s.once("close", () => closedEarly++);
        s.on("data", () => {});
        sockets.push(s);
      });
    }),
  );
  for (;;) {
    const a = await accepted();
    if (a - base >= sockets.length) break;
    if (closedEarly > 0) throw new Error(`${closedEarly} connection(s) were closed by the path under test`);
    if (performance.now() > deadline) throw new Error(`only ${a - base} of ${sockets.length} connections reached the app after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
process.stdout.write(JSON.stringify({ established: sockets.length, ms: performance.now() - t0 }) + "\n");
// Hold until killed.
setInterval(() => {
  if (closedEarly > 0) process.stderr.write(`idle-holder: ${closedEarly} connection(s) closed while held\n`);
}, 1000);
process.on("SIGTERM", () => process.exit(0));
