// Hostile and unusual HTTP/1.x against both HTTP listeners of the mesh, with raw sockets:
// the upstream listener (plain HTTP from the app, web's sidecar) and the public listener (mTLS,
// api's sidecar, reached with a dev-CA leaf for web). Request smuggling, oversized and slow
// headers, bad methods, HTTP/1.0, pipelining, `Expect: 100-continue`, WebSocket upgrades, and
// 512 MiB bodies streamed both ways while the sidecars' memory is watched.
//
//   raw client ─▶ web ─mTLS─▶ api ─▶ app        raw mTLS client ─▶ api ─▶ app
import t from "tap";
import { createServer, type IncomingMessage } from "node:http";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import { Readable } from "node:stream";
import type { AddressInfo, Socket } from "node:net";
import { request } from "undici";
import { startSidecar, tempDir, type Sidecar } from "../helpers/mesh.js";
import { configWrite, metric } from "../helpers/l7.js";
import { leafFor, readDevCa } from "../helpers/certs.js";
import { exchange, hasResponses, parseResponses, plainTo, tlsTo, type Opener } from "../helpers/raw-http.js";

// ---- the app: records what reaches it, echoes, streams, upgrades ----

interface Hit {
  readonly method: string;
  readonly url: string;
  readonly version: string;
  readonly headers: IncomingMessage["headers"];
}

const hits: Hit[] = [];
/** 64 KiB of a fixed pseudo-random pattern; big bodies repeat it. */
const BLOCK = Buffer.alloc(64 * 1024);
for (let i = 0, x = 0x9e3779b9; i < BLOCK.length; i++) {
  x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
  BLOCK[i] = x >>> 24;
}
const BIG = 512 * 1024 * 1024;

function blocks(total: number): Readable {
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= total) return void this.push(null);
      const n = Math.min(BLOCK.length, total - sent);
      sent += n;
      this.push(n === BLOCK.length ? BLOCK : BLOCK.subarray(0, n));
    },
  });
}

/** Checks a stream of chunks against the pattern `blocks` sends (memcmp, cheap enough for GiBs). */
class PatternCheck {
  bytes = 0;
  intact = true;
  add(d: Buffer): void {
    for (let at = 0; at < d.length && this.intact; ) {
      const off = this.bytes % BLOCK.length;
      const n = Math.min(d.length - at, BLOCK.length - off);
      if (BLOCK.compare(d, at, at + n, off, off + n) !== 0) this.intact = false;
      at += n;
      this.bytes += n;
    }
  }
}

const server = createServer((req, res) => {
  const url = new URL(req.url ?? "/", "http://app");
  const check = new PatternCheck();
  const small: Buffer[] = [];
  let n = 0;
  req.on("data", (d: Buffer) => {
    n += d.length;
    if (url.pathname === "/upload") check.add(d);
    if (n <= 4096) small.push(d);
  });
  req.once("end", () => {
    hits.push({ method: req.method ?? "", url: req.url ?? "", version: req.httpVersion, headers: req.headers });
    if (url.pathname === "/download") {
      const total = Number(url.searchParams.get("bytes") ?? 0);
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": total });
      blocks(total).pipe(res);
      return;
    }
    const answer = () => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ method: req.method, url: req.url, bytes: n, intact: check.intact, body: n <= 4096 ? Buffer.concat(small).toString() : null }));
    };
    if (url.pathname === "/slow-first") setTimeout(answer, 150);
    else answer();
  });
});
server.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => {
  hits.push({ method: req.method ?? "", url: req.url ?? "", version: req.httpVersion, headers: req.headers });
  socket.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
  if (head.length > 0) socket.write(head);
  socket.pipe(socket);
});
const open = new Set<Socket>();
server.on("connection", (s: Socket) => {
  open.add(s);
  s.once("close", () => open.delete(s));
});
server.listen(0, "127.0.0.1");
await once(server, "listening");
t.teardown(() => {
  for (const s of open) s.destroy();
  server.close();
});
const appPort = (server.address() as AddressInfo).port;

// ---- the mesh ----

const dir = await tempDir(t);
await configWrite(t, dir, { Kind: "service-defaults", Name: "api", Protocol: "http" });
const api: Sidecar = await startSidecar(t, dir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${appPort}`]);
const web: Sidecar = await startSidecar(t, dir, ["-service", "web", "-upstream", "api:0"]);
const webLeaf = await leafFor(await readDevCa(dir), "web");

const TARGETS: Array<{ name: string; open: Opener; sidecar: Sidecar }> = [
  { name: "upstream listener (web)", open: plainTo(web.upstreams["api"]!), sidecar: web },
  { name: "public listener (api)", open: tlsTo(api.publicAddr!, webLeaf), sidecar: api },
];

const hitsFor = (path: string) => hits.filter((h) => h.url === path || h.url.startsWith(`${path}?`));

function one(x: { data: Buffer; closed: boolean }): { status: number; version: string; headers: Record<string, string>; body: string } | undefined {
  const r = parseResponses(x.data, { closed: x.closed }).find((r) => r.status >= 200);
  return r ? { status: r.status, version: r.version, headers: r.headers, body: r.body.toString() } : undefined;
}

// Slow headers take the full 10 s headers timeout: start both now, check them last.
const slow = TARGETS.map((tg) => exchange(tg.open, "GET /slow-headers HTTP/1.1\r\nHost: api\r\n", { timeoutMs: 20_000 }));

for (const tg of TARGETS) {
  t.test(`${tg.name}: hostile and unusual requests`, async (t) => {
    const parseErrors = await metric(tg.sidecar.adminAddr, "meshproxy_config_errors_total", { kind: "http_parse" });

    await t.test("Content-Length with Transfer-Encoding: 400, nothing smuggled", async (t) => {
      const smuggled = "GET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n";
      const clte = `POST /cl-te HTTP/1.1\r\nHost: api\r\nContent-Length: ${5 + smuggled.length}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`;
      let x = await exchange(tg.open, clte, { done: hasResponses(1) });
      t.equal(one(x)?.status, 400, "CL + TE: 400");
      const tecl = `POST /te-cl HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n${(smuggled.length + 0).toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`;
      x = await exchange(tg.open, tecl, { done: hasResponses(1) });
      t.equal(one(x)?.status, 400, "TE + CL: 400");
      const twoCl = `POST /two-cl HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`;
      x = await exchange(tg.open, twoCl, { done: hasResponses(1) });
      t.equal(one(x)?.status, 400, "two different Content-Lengths: 400");
      const obfuscated = `POST /te-obf HTTP/1.1\r\nHost: api\r\nContent-Length: ${5 + smuggled.length}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${smuggled}`;
      x = await exchange(tg.open, obfuscated, { done: hasResponses(1) });
      t.equal(one(x)?.status, 400, "CL + a TE list: 400");
      // A clean request on a fresh connection, then nothing of the above may have reached the app.
      x = await exchange(tg.open, "GET /after-smuggling HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n", { done: hasResponses(1) });
      t.equal(one(x)?.status, 200, "the listener keeps serving");
      for (const p of ["/smuggled", "/cl-te", "/te-cl", "/two-cl", "/te-obf"]) t.same(hitsFor(p), [], `the app never saw ${p}`);
    });

    await t.test("headers over 16 KiB: 431", async (t) => {
      const x = await exchange(tg.open, `GET /big-headers HTTP/1.1\r\nHost: api\r\nX-Big: ${"a".repeat(20 * 1024)}\r\n\r\n`, { done: hasResponses(1) });
      t.equal(one(x)?.status, 431, "431 Request Header Fields Too Large");
      t.same(hitsFor("/big-headers"), [], "the app never saw it");
      const ok = await exchange(tg.open, `GET /big-ok HTTP/1.1\r\nHost: api\r\nX-Big: ${"a".repeat(8 * 1024)}\r\nConnection: close\r\n\r\n`, { done: hasResponses(1) });
      t.equal(one(ok)?.status, 200, "8 KiB of headers pass");
    });

    await t.test("an invalid method token or request line: 400", async (t) => {
      for (const line of ["G@T /bad-method HTTP/1.1", "GET /bad-version HTTP/9.9", "GET /bad space HTTP/1.1"]) {
        const x = await exchange(tg.open, `${line}\r\nHost: api\r\n\r\n`, { done: hasResponses(1) });
        t.equal(one(x)?.status, 400, `${JSON.stringify(line)}: 400`);
      }
      t.same([...hitsFor("/bad-method"), ...hitsFor("/bad-version"), ...hitsFor("/bad")], [], "none reached the app");
    });

    await t.test("HTTP/1.0 works and the connection closes after the response", async (t) => {
      const x = await exchange(tg.open, "GET /v10?x=1 HTTP/1.0\r\nHost: api\r\n\r\n", { timeoutMs: 5000 });
      const r = one(x);
      t.equal(r?.status, 200, "200");
      t.match(r?.version, /^HTTP\/1\.[01]$/, `answered in ${r?.version}`);
      t.match(JSON.parse(r?.body ?? "{}"), { url: "/v10?x=1" }, "with the app's answer");
      t.ok(x.closed, "and the proxy closed the connection (no keep-alive was asked for)");
      t.notOk((r?.headers["transfer-encoding"] ?? "").includes("chunked"), "no chunked encoding to an HTTP/1.0 client");
    });

    await t.test("an absolute-form target (as sent to a proxy) is served by its path", async (t) => {
      const x = await exchange(tg.open, "GET http://api/absolute/x?y=1 HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n", { done: hasResponses(1) });
      const r = one(x);
      t.equal(r?.status, 200, "200");
      t.match(JSON.parse(r?.body ?? "{}"), { url: "/absolute/x?y=1" }, "the app gets the origin-form /absolute/x?y=1");
    });

    await t.test("pipelining: two requests in one write, two responses in order", async (t) => {
      const x = await exchange(tg.open, "GET /slow-first HTTP/1.1\r\nHost: api\r\n\r\nGET /second HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n", { done: hasResponses(2) });
      const rs = parseResponses(x.data, { closed: x.closed });
      t.same(rs.map((r) => r.status), [200, 200], "two 200s");
      t.same(rs.map((r) => (JSON.parse(r.body.toString()) as { url: string }).url), ["/slow-first", "/second"], "in request order, although the first took 150 ms");
    });

    await t.test("Expect: 100-continue: the interim response, then the body is delivered", async (t) => {
      const s = await tg.open();
      t.teardown(() => s.destroy());
      const got: Buffer[] = [];
      s.on("data", (d: Buffer) => got.push(d));
      s.write("POST /continue HTTP/1.1\r\nHost: api\r\nContent-Length: 11\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n");
      const t0 = performance.now();
      while (!Buffer.concat(got).toString().includes("\r\n\r\n") && performance.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 10));
      t.match(Buffer.concat(got).toString(), /^HTTP\/1\.1 100 Continue\r\n/, "100 Continue before any body byte was sent");
      s.write("hello world");
      await once(s, "close");
      const rs = parseResponses(Buffer.concat(got), { closed: true });
      t.same(rs.map((r) => r.status), [100, 200], "then the final 200");
      t.match(JSON.parse(rs[1]?.body.toString() ?? "{}"), { url: "/continue", body: "hello world", bytes: 11 }, "and the app got the body");
      t.notOk(hitsFor("/continue")[0]?.headers["expect"], "the app was not asked to continue again");
    });

    await t.test("WebSocket upgrade: 101, then bytes both ways", async (t) => {
      const s = await tg.open();
      t.teardown(() => s.destroy());
      const got: Buffer[] = [];
      s.on("data", (d: Buffer) => got.push(d));
      const text = () => Buffer.concat(got).toString("latin1");
      const waitFor = async (pred: () => boolean, what: string) => {
        const t0 = performance.now();
        while (!pred()) {
          if (performance.now() - t0 > 5000) throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(text())}`);
          await new Promise((r) => setTimeout(r, 10));
        }
      };
      s.write("GET /ws HTTP/1.1\r\nHost: api\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
      await waitFor(() => text().includes("\r\n\r\n"), "the 101");
      t.match(text(), /^HTTP\/1\.1 101 Switching Protocols\r\n/, "101 Switching Protocols from the app");
      const headEnd = text().indexOf("\r\n\r\n") + 4;
      const frame = Buffer.from([0x81, 0x05, ...Buffer.from("hello")]);
      s.write(frame);
      await waitFor(() => Buffer.concat(got).length >= headEnd + frame.length, "the echoed frame");
      t.same(Buffer.concat(got).subarray(headEnd), frame, "a frame goes through and comes back byte for byte");
      const big = Buffer.alloc(256 * 1024, 7);
      s.write(big);
      await waitFor(() => Buffer.concat(got).length >= headEnd + frame.length + big.length, "256 KiB echoed");
      t.ok(Buffer.concat(got).subarray(headEnd + frame.length).equals(big), "256 KiB more in both directions");
      const hit = hitsFor("/ws").at(-1);
      t.equal(hit?.headers["upgrade"], "websocket", "the app got the upgrade request");
      t.match(hit?.headers["x-forwarded-client-cert"] ?? "", /URI=spiffe:\/\/[^;]+\/svc\/web$/, "with the caller's identity in x-forwarded-client-cert");
    });

    await t.test("the sidecar counted the refused requests and is still serving", async (t) => {
      t.ok((await metric(tg.sidecar.adminAddr, "meshproxy_config_errors_total", { kind: "http_parse" })) - parseErrors >= 8, "meshproxy_config_errors_total{kind=\"http_parse\"} counted the parser refusals");
      const x = await exchange(tg.open, "GET /still-ok HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n", { done: hasResponses(1) });
      t.equal(one(x)?.status, 200, "a normal request is served");
      t.equal(tg.sidecar.child.exitCode, null, "the sidecar is running");
    });
  });
}

t.test("slow headers: the connection is answered 408 and closed within the 10 s headers timeout", async (t) => {
  const results = await Promise.all(slow);
  results.forEach((x, i) => {
    const name = TARGETS[i]!.name;
    t.ok(x.closed, `${name}: the proxy closed the connection (after ${(x.ms / 1000).toFixed(1)} s)`);
    t.ok(x.ms >= 9_000 && x.ms < 15_000, `${name}: at the headers timeout`);
    const r = one(x);
    if (r) t.equal(r.status, 408, `${name}: with 408 Request Timeout`);
  });
  t.same(hitsFor("/slow-headers"), [], "the app never saw the incomplete request");
});

t.test("512 MiB up and down through both sidecars, streamed: their memory stays far below the body size", async (t) => {
  const rssMiB = async (pid: number | undefined) => {
    const status = await readFile(`/proc/${pid}/status`, "utf8");
    return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? NaN) / 1024;
  };
  const sidecars: Array<[string, Sidecar]> = [
    ["web", web],
    ["api", api],
  ];
  const url = `http://${web.upstreams["api"]}`;
  /** Uploads and downloads `bytes`, checking every byte, and returns each sidecar's peak RSS meanwhile. */
  const both = async (bytes: number): Promise<number[]> => {
    const peak = sidecars.map(() => 0);
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const now = await Promise.all(sidecars.map(([, s]) => rssMiB(s.child.pid)));
        now.forEach((v, i) => (peak[i] = Math.max(peak[i]!, v)));
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const mib = `${bytes / 1048576} MiB`;
    const t0 = performance.now();
    const up = await request(`${url}/upload`, { method: "POST", body: blocks(bytes), headers: { "content-length": String(bytes) }, headersTimeout: 120_000, bodyTimeout: 120_000 });
    const answer = (await up.body.json()) as { bytes: number; intact: boolean };
    const upMs = performance.now() - t0;
    t.equal(up.statusCode, 200, `upload ${mib}: 200`);
    t.same(answer, { ...answer, bytes, intact: true }, `upload ${mib}: the app received every byte, intact`);
    const t1 = performance.now();
    const down = await request(`${url}/download?bytes=${bytes}`, { headersTimeout: 120_000, bodyTimeout: 120_000 });
    const check = new PatternCheck();
    for await (const chunk of down.body) check.add(chunk as Buffer);
    const downMs = performance.now() - t1;
    t.equal(down.statusCode, 200, `download ${mib}: 200`);
    t.same({ bytes: check.bytes, intact: check.intact }, { bytes, intact: true }, `download ${mib}: every byte arrived, intact`);
    sampling = false;
    await sampler;
    t.comment(`${mib}: up ${(bytes / 1048576 / (upMs / 1000)).toFixed(0)} MiB/s, down ${(bytes / 1048576 / (downMs / 1000)).toFixed(0)} MiB/s; peak RSS ${sidecars.map(([n], i) => `${n} ${peak[i]!.toFixed(0)} MiB`).join(", ")}`);
    return peak;
  };
  const idle = await Promise.all(sidecars.map(([, s]) => rssMiB(s.child.pid)));
  t.comment(`idle RSS ${sidecars.map(([n], i) => `${n} ${idle[i]!.toFixed(0)} MiB`).join(", ")}`);
  // 256 MiB each way first: node's heap and allocator settle at their working size under load
  // (garbage buffers are collected in ~64 MiB steps of external memory). Node 24 gets there only
  // after more than 64 MiB: its peak measured 130-140 MiB after 64 MiB, and 176-189 MiB after
  // each of 256, 512 and 2048 MiB. Buffering a body would then show as growth proportional to
  // it; streaming does not grow at all. (On the node:http engine, Node 20's upstream listener
  // once read uploads with no backpressure: peak 350 MiB after 256 MiB, 1.1 GB after 1 GiB.)
  const WARM = 256 * 1048576;
  const warm = await both(WARM);
  const big = await both(BIG);
  sidecars.forEach(([name], i) => {
    const growth = big[i]! - warm[i]!;
    t.ok(growth < 64, `${name}'s sidecar: peak RSS ${big[i]!.toFixed(0)} MiB with 512 MiB bodies vs ${warm[i]!.toFixed(0)} MiB with 256 MiB bodies (${growth >= 0 ? "+" : ""}${growth.toFixed(0)} MiB; buffering would add ~${(BIG - WARM) / 1048576})`);
    t.ok(big[i]! < BIG / 1048576 / 2, `${name}'s sidecar: peak RSS ${big[i]!.toFixed(0)} MiB, under half of one 512 MiB body`);
  });
});
