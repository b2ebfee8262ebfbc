// One connection, one large download: asks the app for N bytes (GET /bulk?bytes=N) through the
// path under test and reads until the response is complete. Prints one JSON line:
// {"bytes":…, "seconds":…, "mbPerS":…} (MB = 10^6 bytes), timed from the request to the last byte.
//
//   node bulk-client.mjs --target 127.0.0.1:PORT --bytes 1073741824
import { connect } from "node:net";
import { parseArgs } from "node:util";

const { values: o } = parseArgs({ options: { target: { type: "string" }, bytes: { type: "string" } } });
const [host, port] = o.target.split(":");
const want = Number(o.bytes);

const s = connect({ host, port: Number(port), noDelay: true });
await new Promise((resolve, reject) => {
  s.once("connect", resolve);
  s.once("error", reject);
});
const t0 = process.hrtime.bigint();
let headerDone = false;
let head = Buffer.alloc(0);
let body = 0;
let total = -1;
await new Promise((resolve, reject) => {
  s.on("data", (d) => {
    if (!headerDone) {
      head = Buffer.concat([head, d]);
      const i = head.indexOf("\r\n\r\n");
      if (i < 0) return;
      const h = head.subarray(0, i).toString("latin1");
      const m = /\r\ncontent-length:\s*(\d+)/i.exec(h);
      if (!h.startsWith("HTTP/1.1 200") || !m) return reject(new Error(`unexpected response: ${h.slice(0, 200)}`));
      total = Number(m[1]);
      headerDone = true;
      body = head.length - (i + 4);
    } else body += d.length;
    if (body >= total) resolve();
  });
  s.once("error", reject);
  s.once("close", () => (body >= total && total >= 0 ? resolve() : reject(new Error(`connection closed after ${body} of ${want} bytes`))));
  s.write(`GET /bulk?bytes=${want} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n`);
});
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
s.destroy();
process.stdout.write(JSON.stringify({ bytes: body, seconds, mbPerS: body / 1e6 / seconds }) + "\n");
process.exit(0);
