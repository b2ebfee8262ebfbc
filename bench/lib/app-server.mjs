// The benchmark app, run as its own process: a minimal node:http server.
//   GET /            → 200, a small fixed body (keep-alive unless the client says close); any
//                      other method with a body gets the same once the body has been read
//   GET /bulk?bytes=N → 200, N bytes streamed with backpressure (the bulk workload)
//   GET /stats        → {"accepted":n,"open":n} (idle-connection counting; asked directly, never through a proxy)
// Prints {"listening":port} on stdout when ready.
//   node app-server.mjs [port] [name]   (the body's first word is the name: "v1", "v2" for splits)
import { createServer } from "node:http";

const port = Number(process.argv[2] ?? 0);
const name = process.argv[3] ?? "app";
const BODY = Buffer.from(`${name} says hello from the benchmark app\n`);
const CHUNK = Buffer.alloc(1 << 20, 0x61); // 1 MiB of 'a'

let accepted = 0;
let open = 0;

const server = createServer({ requestTimeout: 0, headersTimeout: 0, keepAliveTimeout: 600_000, noDelay: true }, (req, res) => {
  const url = req.url ?? "/";
  if (url.startsWith("/bulk")) {
    const m = /bytes=(\d+)/.exec(url);
    let left = m ? Number(m[1]) : 0;
    res.writeHead(200, { "content-type": "application/octet-stream", "content-length": String(left) });
    const pump = () => {
      while (left > 0) {
        const n = Math.min(left, CHUNK.length);
        left -= n;
        const ok = res.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n));
        if (!ok) return void res.once("drain", pump);
      }
      res.end();
    };
    pump();
    return;
  }
  if (url.startsWith("/stats")) {
    const body = JSON.stringify({ accepted, open });
    res.writeHead(200, { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)) });
    res.end(body);
    return;
  }
  const answer = () => {
    res.writeHead(200, { "content-type": "text/plain", "content-length": String(BODY.length) });
    res.end(BODY);
  };
  // A request with a body is answered once the body is read, as an app that uses it would: an
  // answer that starts earlier makes a proxy close the connection (what follows an unread body
  // cannot be trusted), which would measure handshakes instead of requests.
  const cl = req.headers["content-length"];
  if ((cl !== undefined && cl !== "0") || req.headers["transfer-encoding"] !== undefined) {
    req.resume();
    req.once("end", answer);
  } else answer();
});
server.keepAliveTimeout = 600_000;
server.timeout = 0;
server.maxHeadersCount = 100;
server.on("connection", (s) => {
  accepted++;
  open++;
  s.once("close", () => open--);
});
server.on("clientError", (_e, s) => s.destroy());
server.listen(port, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ listening: server.address().port }) + "\n");
});
const stop = () => {
  server.close();
  server.closeAllConnections();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
