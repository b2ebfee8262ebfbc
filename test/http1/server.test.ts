// The llhttp core's server side on plain loopback sockets: framing rules (each refusal a test),
// limits, pipelining order, keep-alive, timeouts' absence of false positives, and the upgrade
// hand-over. The answers come from an echo handler that reports what the core parsed.
import t from "tap";
import { createConnection, createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { once } from "node:events";
import { Http1Server, type ClientFailure, type Exchange } from "../../src/http1/server.js";
import { fieldRecord } from "../../src/http1/fields.js";
import { http1Core } from "../../src/http1/parser.js";
import { parseEnded, parseStarted } from "../../src/http1/held-writes.js";
import { countWrites } from "../helpers/write-count.js";
import type { Teardown } from "../helpers/mesh.js";
import { exchange, hasResponses, parseResponses, plainTo, type Opener } from "../helpers/raw-http.js";
import { until } from "../helpers/l7.js";

t.ok(http1Core().ok, `the core loads and passes its self-test on node ${process.version}`);

interface Seen {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

async function echoServer(t: Teardown, opts?: { headersTimeoutMs?: number }): Promise<{ open: Opener; seen: Seen[]; failures: ClientFailure[]; upgrades: string[] }> {
  const seen: Seen[] = [];
  const failures: ClientFailure[] = [];
  const upgrades: string[] = [];
  const core = new Http1Server<null>(
    {
      request(ex: Exchange<null>) {
        const chunks: Buffer[] = [];
        const answer = () => {
          const s: Seen = { method: ex.method, url: ex.url, headers: fieldRecord(ex.rawHeaders), body: Buffer.concat(chunks).toString("latin1") };
          seen.push(s);
          const body = JSON.stringify(s);
          const delay = ex.url === "/slow" ? 100 : 0;
          setTimeout(() => {
            ex.writeHead(200, "OK", "content-type: application/json\r\n", Buffer.byteLength(body), ex.method === "HEAD");
            ex.end(ex.method === "HEAD" ? "" : body);
          }, delay);
        };
        ex.setBodySink({ data: (c) => chunks.push(c), end: answer });
      },
      upgrade(ex, socket, head) {
        upgrades.push(`${ex.method} ${ex.url} ${head.toString("latin1")}`);
        socket.end("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
      },
      clientError(f) {
        failures.push(f);
      },
    },
    { headersTimeoutMs: opts?.headersTimeoutMs ?? 10_000, keepAliveTimeoutMs: 60_000, maxHeadersCount: 2000 },
  );
  const server: Server = createServer({ allowHalfOpen: true }, (s: Socket) => core.accept(s, null));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => {
    core.destroyAll();
    server.close();
  });
  return { open: plainTo(`127.0.0.1:${(server.address() as AddressInfo).port}`), seen, failures, upgrades };
}

/** Serves `core` on a loopback port (`onAccept` sees each socket first); an opener for it. */
async function serveCore(t: Teardown, core: Http1Server<null>, onAccept?: (s: Socket) => void): Promise<Opener> {
  const server: Server = createServer({ allowHalfOpen: true }, (s: Socket) => {
    onAccept?.(s);
    core.accept(s, null);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => {
    core.destroyAll();
    server.close();
  });
  return plainTo(`127.0.0.1:${(server.address() as AddressInfo).port}`);
}

const statusOf = async (open: Opener, raw: string) => parseResponses((await exchange(open, raw, { done: hasResponses(1), timeoutMs: 3000 })).data)[0]?.status;

t.test("request framing: every ambiguity is refused, nothing reaches the handler", async (t) => {
  const { open, seen, failures } = await echoServer(t);
  const cases: Array<[string, string, number]> = [
    ["CL and TE", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400],
    ["TE and CL", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400],
    ["two different Content-Lengths", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400],
    ["a TE list ending in identity", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400],
    ["obs-fold", "GET /a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  folded\r\n\r\n", 400],
    ["a bare LF line ending", "GET /a HTTP/1.1\nHost: h\n\n", 400],
    ["an invalid chunk size", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", 400],
    ["a chunk size overflow", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nab\r\n0\r\n\r\n", 400],
    ["a space before the colon", "GET /a HTTP/1.1\r\nHost : h\r\n\r\n", 400],
    ["a NUL in a value", "GET /a HTTP/1.1\r\nHost: h\r\nX-A: a\u0000b\r\n\r\n", 400],
    ["a CR inside a value", "GET /a HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n", 400],
    ["a bad method token", "G@T /a HTTP/1.1\r\nHost: h\r\n\r\n", 400],
    ["HTTP/9.9", "GET /a HTTP/9.9\r\nHost: h\r\n\r\n", 400],
    ["a space in the target", "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400],
    ["HTTP/1.1 without Host", "GET /a HTTP/1.1\r\nX-A: 1\r\n\r\n", 400],
    ["a negative Content-Length", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400],
    ["headers over 16 KiB", `GET /a HTTP/1.1\r\nHost: h\r\nX-Big: ${"a".repeat(17 * 1024)}\r\n\r\n`, 431],
  ];
  for (const [name, raw, status] of cases) t.equal(await statusOf(open, raw), status, `${name}: ${status}`);
  t.same(seen, [], "the handler saw none of them");
  t.equal(failures.length, cases.length, "each refusal was reported to the handler (counted by the sidecar)");
});

t.test("more than maxHeadersCount fields: 431 (node:http would drop the rest silently)", async (t) => {
  const { open, seen } = await echoServer(t);
  const many = Array.from({ length: 2001 }, (_, i) => `a${i}:b\r\n`).join("");
  t.equal(await statusOf(open, `GET /many HTTP/1.1\r\nHost: h\r\n${many}\r\n`), 431);
  t.same(seen, []);
});

t.test("bodies: Content-Length and chunked (with extensions and trailers) arrive whole", async (t) => {
  const { open, seen } = await echoServer(t);
  t.equal(await statusOf(open, "POST /cl HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"), 200);
  t.equal(await statusOf(open, "POST /te HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"), 200);
  t.same(seen.map((s) => [s.url, s.body]), [["/cl", "hello"], ["/te", "abcde"]]);
});

t.test("pipelining: answers in request order, a later refusal after the earlier answers", async (t) => {
  const { open } = await echoServer(t);
  const x = await exchange(open, "GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /fast HTTP/1.1\r\nHost: h\r\n\r\nGET /bad HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", { timeoutMs: 3000 });
  const rs = parseResponses(x.data, { closed: x.closed });
  t.same(rs.map((r) => r.status), [200, 200, 400], "200, 200, then the 400");
  t.same(rs.slice(0, 2).map((r) => (JSON.parse(r.body.toString()) as Seen).url), ["/slow", "/fast"], "the slow first answer is not overtaken");
  t.ok(x.closed, "and the connection closes after the refusal");
});

t.test("keep-alive and HTTP/1.0", async (t) => {
  const { open } = await echoServer(t);
  let x = await exchange(open, "GET /a HTTP/1.1\r\nHost: h\r\n\r\n", { done: hasResponses(1), timeoutMs: 3000 });
  let r = parseResponses(x.data)[0];
  t.equal(r?.headers["connection"], "keep-alive", "HTTP/1.1: kept alive");
  x = await exchange(open, "GET /a HTTP/1.0\r\n\r\n", { timeoutMs: 3000 });
  r = parseResponses(x.data, { closed: x.closed })[0];
  t.equal(r?.status, 200, "HTTP/1.0 without Host is served");
  t.equal(r?.headers["connection"], "close", "and told the connection closes");
  t.ok(x.closed, "which it does");
  x = await exchange(open, "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", { timeoutMs: 3000 });
  t.ok(x.closed, "Connection: close is honoured");
});

t.test("HEAD: the length is the client's to know, no body follows", async (t) => {
  const { open } = await echoServer(t);
  const x = await exchange(open, "HEAD /h HTTP/1.1\r\nHost: h\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", { timeoutMs: 3000 });
  const text = x.data.toString("latin1");
  t.match(text, /^HTTP\/1\.1 200 OK\r\n/);
  t.equal(text.split("HTTP/1.1 200").length - 1, 2, "two answers, the HEAD one without a body");
});

t.test("upgrade requests are handed over with the bytes after their head; nothing after them is parsed", async (t) => {
  const { open, seen, upgrades } = await echoServer(t);
  const x = await exchange(open, "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n", { timeoutMs: 3000 });
  t.equal(parseResponses(x.data, { closed: x.closed })[0]?.status, 403);
  t.equal(upgrades.length, 1);
  t.match(upgrades[0], /^GET \/ws GET \/smuggled/, "the pipelined bytes went to the upgrade's owner as raw bytes");
  t.same(seen, [], "and never became a request");
});

t.test("an upgrade in the bytes a sniffer put back: the new owner reads every later byte, also those sent before it read", async (t) => {
  let owned: { socket: Socket; head: Buffer } | null = null;
  const core = new Http1Server<null>(
    {
      request(ex) {
        ex.writeHead(200, "OK", "", 0, false);
        ex.end();
      },
      upgrade(_ex, socket, head) {
        owned = { socket, head };
      },
      clientError() {},
    },
    { headersTimeoutMs: 10_000, keepAliveTimeoutMs: 60_000, maxHeadersCount: 2000 },
  );
  // As the upstream listener's protocol sniff does: the first bytes read, put back, then the core.
  const server: Server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (down: Socket) => {
    const readable = (): void => {
      const first: unknown = down.read();
      if (!Buffer.isBuffer(first)) return void down.once("readable", readable);
      down.unshift(first);
      core.accept(down, null);
    };
    down.once("readable", readable);
    down.resume();
    down.pause();
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const client = await new Promise<Socket>((resolve) => {
    const c: Socket = createConnection((server.address() as AddressInfo).port, "127.0.0.1", () => resolve(c));
  });
  t.teardown(() => {
    client.destroy();
    core.destroyAll();
    server.close();
  });
  client.write("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
  await until(() => owned !== null, 5000, "the hand-over");
  const { socket, head } = owned!;
  t.equal(head.length, 0);
  // Sent while nobody reads the socket yet (an owner still dialling its next hop).
  const early = Buffer.alloc(256 * 1024, 0x61);
  client.write(early);
  await until(() => socket.readableLength > 0, 5000, "bytes waiting for the new owner");
  const got: Buffer[] = [];
  socket.on("data", (d: Buffer) => got.push(d));
  client.end("late");
  await once(socket, "end");
  const all = Buffer.concat(got);
  t.equal(all.length, early.length + 4, "every byte after the upgrade head reached the new owner");
  t.ok(all.subarray(0, early.length).equals(early) && all.subarray(early.length).toString() === "late", "once and in order");
});

t.test("a request head that takes too long: 408 and closed", async (t) => {
  const { open, failures } = await echoServer(t, { headersTimeoutMs: 1000 });
  const x = await exchange(open, "GET /slow-head HTTP/1.1\r\nHost: h\r\n", { timeoutMs: 5000 });
  t.ok(x.closed, `closed after ${x.ms.toFixed(0)} ms`);
  t.equal(parseResponses(x.data, { closed: true })[0]?.status, 408);
  t.equal(failures[0]?.code, "ERR_HTTP_REQUEST_TIMEOUT");
});

t.test("an answer before the request body was read (a denied upload) ends the connection", async (t) => {
  const seen: string[] = [];
  const core = new Http1Server<null>({
    request(ex) {
      seen.push(ex.url);
      // Refused at once, the body left unread (what a 403 from an intention does).
      ex.writeHead(403, "Forbidden", "", 0, false);
      ex.end();
    },
    upgrade: (_ex, s) => s.destroy(),
    clientError: () => {},
  });
  const open = await serveCore(t, core);
  const s = await open();
  t.teardown(() => s.destroy());
  const got: Buffer[] = [];
  s.on("data", (d: Buffer) => got.push(d));
  s.write("POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n");
  // The server ends its side after the answer: whatever the client sends next (the rest of the
  // body, or a request shaped like one) is never parsed on this connection.
  await once(s, "end");
  const text = Buffer.concat(got).toString("latin1");
  t.match(text, /^HTTP\/1\.1 403 Forbidden\r\n/, "403");
  t.match(text, /\r\nconnection: close\r\n/, "which says the connection closes");
  t.same(seen, ["/upload"]);
});

// A response head is held until its body's first bytes (held-writes.ts), so a small answer
// leaves in one write: one TLS record and one syscall. Counted at the socket's own write step
// (one call per write or per corked batch).
t.test("a response head leaves with its body in one write; held no longer than the parse or the tick", async (t) => {
  const writesOf = new Map<string, number>();
  let current = "";
  let heldAfterParse: number | null = null;
  // The slow answer's body: written when the client has the head, or after 5 s if the head never
  // comes alone (then the check below fails). A fixed delay raced the head on a loaded machine.
  let slowBody: ((by: string) => void) | null = null;
  let slowBodyBy = "";
  const core = new Http1Server<null>(
    {
      request(ex) {
        const answer = (): void => {
          current = ex.url;
          writesOf.set(current, 0);
          if (ex.url === "/small") {
            ex.writeHead(200, "OK", "", 5, false);
            ex.write(Buffer.from("hello"));
            ex.end();
          } else if (ex.url === "/empty") {
            ex.writeHead(204, "No Content", "", null, true);
            ex.end();
          } else if (ex.url === "/chunked") {
            ex.writeHead(200, "OK", "", null, false);
            ex.write(Buffer.from("a"));
            ex.write(Buffer.from("b"));
            ex.end();
          } else if (ex.url === "/parsed") {
            // As a forwarded answer: its head written inside a parse, its body in a later one.
            parseStarted();
            ex.writeHead(200, "OK", "", 4, false);
            const before = writesOf.get(current);
            parseEnded();
            heldAfterParse = (writesOf.get(current) ?? 0) - (before ?? 0);
            setTimeout(() => {
              ex.write(Buffer.from("late"));
              ex.end();
            }, 50);
          } else {
            // Head now, body later: the head must not wait for it past this tick.
            ex.writeHead(200, "OK", "", 4, false);
            const fallback = setTimeout(() => slowBody?.("the 5 s fallback"), 5_000);
            slowBody = (by) => {
              slowBody = null;
              clearTimeout(fallback);
              slowBodyBy = by;
              ex.write(Buffer.from("slow"));
              ex.end();
            };
          }
        };
        ex.setBodySink({ data: () => {}, end: answer });
      },
      upgrade: (_ex, s) => s.destroy(),
      clientError: () => {},
    },
    { headersTimeoutMs: 10_000, keepAliveTimeoutMs: 60_000, maxHeadersCount: 2000 },
  );
  const open = await serveCore(t, core, (s) => void countWrites(s, () => writesOf.set(current, (writesOf.get(current) ?? 0) + 1)));
  const ask = async (path: string) => parseResponses((await exchange(open, `GET ${path} HTTP/1.1\r\nHost: h\r\n\r\n`, { done: hasResponses(1), timeoutMs: 3000 })).data)[0];
  const small = await ask("/small");
  t.same([small?.status, small?.body.toString()], [200, "hello"], "a small answer arrives whole");
  const empty = await ask("/empty");
  t.same([empty?.status, empty?.body.length], [204, 0], "an answer without a body arrives");
  const chunked = await ask("/chunked");
  t.same([chunked?.status, chunked?.body.toString()], [200, "ab"], "a chunked answer arrives whole");
  const parsed = await ask("/parsed");
  t.same([parsed?.status, parsed?.body.toString()], [200, "late"], "an answer whose body came after the parse arrives whole");

  // The slow answer: the head reaches the client before the body is written.
  const s = await open();
  t.teardown(() => s.destroy());
  const firstData = once(s, "data");
  s.write("GET /slow HTTP/1.1\r\nHost: h\r\n\r\n");
  const [first] = (await firstData) as [Buffer];
  t.equal(slowBodyBy, "", "the head of a slow answer came at once, before its body was written");
  t.match(first.toString("latin1"), /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\n$/, "the head alone");
  (slowBody as ((by: string) => void) | null)?.("the client");

  if (!writesOf.has("/small") || (writesOf.get("/small") ?? 0) === 0) return void t.comment("this Node has no _writeGeneric: write counts not checked");
  t.equal(writesOf.get("/small"), 1, "head and a small body: one write");
  t.equal(writesOf.get("/empty"), 1, "a head without a body: one write");
  t.equal(writesOf.get("/chunked"), 1, "head and chunks parsed together: one corked write");
  t.equal(heldAfterParse, 1, "a head written inside a parse goes out when the parse ends");
});
