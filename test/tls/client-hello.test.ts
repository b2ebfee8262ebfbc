// The ClientHello parser and peek against what real clients send (Node, curl, openssl), whole
// and one byte at a time, and against the broken, oversized and hostile hellos no client sends.
import t, { type Test } from "tap";
import { once } from "node:events";
import { createServer, connect as netConnect, type AddressInfo, type Socket } from "node:net";
import { PassThrough } from "node:stream";
import { parseClientHello, peekClientHello, type HelloParse, type PeekResult } from "../../src/tls/client-hello.js";
import { buildHello, curlHello, extension, frame, handshakeOf, helloBody, nodeHello, opensslHello, reframe, serverNameData } from "../helpers/client-hello.js";

const SNI = "web.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul";

function complete(t: Test, r: HelloParse, sni: string, alpn: readonly string[], length: number): void {
  if (r.status !== "complete") {
    t.fail(`expected a complete hello, got ${JSON.stringify(r)}`);
    return;
  }
  t.equal(r.sni, sni, "sni");
  t.same(r.alpn, alpn, "alpn");
  t.equal(r.length, length, "length: the records holding the hello");
}

function refusedWith(t: Test, r: HelloParse | PeekResult, reason: string, pattern?: RegExp): void {
  const got = "status" in r ? (r.status === "refused" ? r : null) : r.ok ? null : r;
  if (!got) {
    t.fail(`expected refusal ${reason}, got ${JSON.stringify(r)}`);
    return;
  }
  t.equal(got.reason, reason, `refused: ${got.message}`);
  if (pattern) t.match(got.message, pattern);
}

/** Feeds `bytes` to the peek one 'data' event per byte. */
function peekInBytes(bytes: Buffer, opts = {}): Promise<PeekResult> {
  const stream = new PassThrough();
  const result = peekClientHello(stream, opts);
  for (const b of bytes) stream.write(Buffer.from([b]));
  return result;
}

/**
 * A real connection whose server peeks, with the client sending `bytes` one byte per TCP read:
 * the server acknowledges each byte it reads and the client sends the next only then.
 */
async function peekOverTcp(t: Test, bytes: Buffer, trickle: boolean, after?: Buffer): Promise<{ result: PeekResult; rest: Promise<Buffer> }> {
  const server = createServer({ allowHalfOpen: true });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => server.close());
  // The server side peeks as a gateway would; the ack listener only paces the trickle.
  const accepted = new Promise<{ result: Promise<PeekResult>; rest: Promise<Buffer> }>((resolve) => {
    server.once("connection", (s: Socket) => {
      s.on("error", () => undefined);
      let acks = 0;
      const ack = (d: Buffer) => {
        if (trickle && acks < bytes.length) {
          acks += d.length;
          s.write("k");
        }
      };
      s.on("data", ack);
      const result = peekClientHello(s, { timeoutMs: 10_000 });
      // What the peek left unread (0-RTT data, say) is still there once the socket resumes.
      const rest = result.then(
        () =>
          new Promise<Buffer>((done) => {
            s.off("data", ack);
            const chunks: Buffer[] = [];
            s.on("data", (d: Buffer) => chunks.push(d));
            s.on("end", () => done(Buffer.concat(chunks)));
            s.resume();
          }),
      );
      resolve({ result, rest });
    });
  });
  const client = netConnect({ host: "127.0.0.1", port: (server.address() as AddressInfo).port, noDelay: true });
  client.on("error", () => undefined);
  await once(client, "connect");
  t.teardown(() => client.destroy());
  if (trickle) {
    let sent = 0;
    client.write(bytes.subarray(0, 1));
    sent = 1;
    client.on("data", (d: Buffer) => {
      for (let i = 0; i < d.length && sent < bytes.length; i++) client.write(bytes.subarray(sent, ++sent));
      if (sent === bytes.length && after) client.end(after);
    });
  } else client.end(after ? Buffer.concat([bytes, after]) : bytes);
  const got = await accepted;
  const result = await got.result;
  if (trickle && !after) client.end();
  return { result, rest: got.rest };
}

t.test("ClientHellos captured from real clients", async (t) => {
  const cases: Array<[string, () => Promise<Buffer>, string | null, readonly string[]]> = [
    ["node TLS 1.3, SNI, ALPN h2+http/1.1", () => nodeHello({ servername: SNI, ALPNProtocols: ["h2", "http/1.1"], minVersion: "TLSv1.3" }), SNI, ["h2", "http/1.1"]],
    ["node TLS 1.2 only, SNI, no ALPN", () => nodeHello({ servername: SNI, maxVersion: "TLSv1.2" }), SNI, []],
    ["node, mixed-case SNI", () => nodeHello({ servername: "Web.Default.DC1.internal.example.consul" }), "web.default.dc1.internal.example.consul", []],
    ["node, no servername (IP target)", () => nodeHello({}), null, []],
    ["curl", () => curlHello(SNI), SNI, ["h2", "http/1.1"]],
    ["curl --http1.1", () => curlHello(SNI, ["--http1.1"]), SNI, ["http/1.1"]],
    ["curl to an IP (no SNI)", () => curlHello("127.0.0.1"), null, ["h2", "http/1.1"]],
    ["openssl -servername -tls1_3 -alpn h2", () => opensslHello(["-servername", SNI, "-tls1_3", "-alpn", "h2"]), SNI, ["h2"]],
    ["openssl -servername -tls1_2", () => opensslHello(["-servername", SNI, "-tls1_2"]), SNI, []],
    ["openssl -noservername", () => opensslHello(["-noservername"]), null, []],
  ];
  for (const [name, capture, sni, alpn] of cases) {
    await t.test(name, async (t) => {
      const hello = await capture();
      const whole = parseClientHello(hello);
      if (sni === null) refusedWith(t, whole, "no_sni", /no server_name/);
      else complete(t, whole, sni, alpn, hello.length);
      // Every prefix is "incomplete" with a lower bound the prefix has not reached yet.
      for (let n = 0; n < hello.length; n++) {
        const r = parseClientHello(hello.subarray(0, n));
        if (r.status !== "incomplete" || r.needed <= n || r.needed > hello.length) {
          t.fail(`prefix of ${n} bytes: ${JSON.stringify(r)}`);
          break;
        }
      }
      // The same handshake cut into records of 1, 7 and 300 bytes reads the same.
      for (const size of [1, 7, 300]) {
        const reframed = reframe(handshakeOf(hello), size);
        const r = parseClientHello(reframed, 1 << 20);
        if (sni === null) refusedWith(t, r, "no_sni");
        else complete(t, r, sni, alpn, reframed.length);
      }
      const peeked = await peekInBytes(hello);
      t.same(peeked.bytes, hello, "the peek hands back every byte it read");
      if (sni === null) refusedWith(t, peeked, "no_sni");
      else t.same(peeked.ok ? [peeked.sni, peeked.alpn] : peeked, [sni, alpn], "peeked one byte per data event");
    });
  }
});

t.test("peek over a real socket, one byte per TCP read, then the rest of the stream flows", async (t) => {
  const hello = await nodeHello({ servername: SNI, ALPNProtocols: ["h2"] });
  const early = Buffer.from("early data after the hello");
  const { result, rest } = await peekOverTcp(t, hello, true, early);
  t.ok(result.ok, "hello read");
  if (result.ok) t.same([result.sni, result.alpn], [SNI, ["h2"]]);
  t.same(Buffer.concat([result.bytes, await rest]), Buffer.concat([hello, early]), "peeked bytes + what followed = what the client sent");
});

t.test("peek over a real socket, hello and 0-RTT-like data in one write", async (t) => {
  const hello = await nodeHello({ servername: SNI });
  const early = Buffer.from("0rtt");
  const { result, rest } = await peekOverTcp(t, hello, false, early);
  t.ok(result.ok);
  t.same(Buffer.concat([result.bytes, await rest]), Buffer.concat([hello, early]));
});

t.test("a hello spanning two records (over 16 KiB) is reassembled", async (t) => {
  const padding = extension(21, Buffer.alloc(17_000));
  const big = buildHello({ sni: SNI, alpn: ["h2"], extensions: [[21, padding]] });
  t.ok(big.length > 16_384 + 5, "really needs two records");
  complete(t, parseClientHello(big), SNI, ["h2"], big.length);
  const peeked = await peekInBytes(big);
  t.ok(peeked.ok, "peeked in 1-byte events");
});

t.test("refusals", async (t) => {
  const good = buildHello({ sni: SNI, alpn: ["h2"] });
  refusedWith(t, parseClientHello(Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n")), "not_tls", /0x47 is not a TLS handshake record/);
  refusedWith(t, parseClientHello(Buffer.from("SSH-2.0-OpenSSH_9.2\r\n")), "not_tls");
  refusedWith(t, parseClientHello(Buffer.from([0x16, 0x02, 0x00, 0x00, 0x10])), "not_tls", /not TLS/);
  // An SSLv2 CLIENT-HELLO (2-byte header, type 1, version 3.1).
  refusedWith(t, parseClientHello(Buffer.from([0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10])), "sslv2", /SSLv2/);
  refusedWith(t, parseClientHello(buildHello({ alpn: ["h2"] })), "no_sni");
  refusedWith(t, parseClientHello(frame(helloBody({}).subarray(0, 2 + 32 + 1 + 4 + 2))), "no_sni", /no server_name/);

  // Records and handshake framing.
  refusedWith(t, parseClientHello(Buffer.from([0x16, 3, 1, 0, 0])), "malformed", /empty handshake fragment/);
  refusedWith(t, parseClientHello(Buffer.from([0x16, 3, 1, 0x40, 0x01])), "malformed", /over TLS's 16384-byte limit/);
  refusedWith(t, parseClientHello(Buffer.from([0x16, 3, 1, 0, 4, 2, 0, 0, 0])), "malformed", /not ClientHello/);
  refusedWith(t, parseClientHello(Buffer.concat([reframe(handshakeOf(good).subarray(0, 10), 10), Buffer.from([0x15, 3, 3, 0, 2, 2, 40])])), "malformed", /record 2 has content type 0x15/);
  refusedWith(t, parseClientHello(Buffer.from([0x16, 3, 1, 0x40, 0x00, 1, 0xff, 0xff, 0xff])), "too_large", /says it is 16777215 bytes, over the 32778-byte limit/);
  refusedWith(t, parseClientHello(Buffer.from([0x16, 3, 1, 0x40, 0x00]), 1000), "too_large", /16389 bytes, over the 1000-byte limit/);
  refusedWith(t, parseClientHello(good, good.length - 1), "too_large");

  // Lengths inside the ClientHello.
  const body = helloBody({ sni: SNI, alpn: ["h2"] });
  const extLenAt = 2 + 32 + 1 + 2 + 2 + 2;
  const mutate = (at: number, value: number) => {
    const b = Buffer.from(body);
    b.writeUInt16BE(value, at);
    return frame(b);
  };
  refusedWith(t, parseClientHello(mutate(extLenAt, body.readUInt16BE(extLenAt) + 1)), "malformed", /extensions length \d+ does not match/);
  refusedWith(t, parseClientHello(mutate(extLenAt, body.readUInt16BE(extLenAt) - 1)), "malformed", /extensions length/);
  refusedWith(t, parseClientHello(mutate(extLenAt + 4, 0xffff)), "malformed", /extension 0x0000 length 65535 runs past the end/);
  refusedWith(t, parseClientHello(mutate(extLenAt + 6, 0x00ff)), "malformed", /server_name list length 255/);
  refusedWith(t, parseClientHello(mutate(2 + 32 + 1, 3)), "malformed", /cipher suites length 3/);
  refusedWith(t, parseClientHello(mutate(2 + 32 + 1, 0)), "malformed", /cipher suites length 0/);
  const sid = Buffer.from(body);
  sid[2 + 32] = 33;
  refusedWith(t, parseClientHello(frame(sid)), "malformed", /session id length 33/);

  // What OpenSSL refuses in server_name, refused here too.
  const twoNames = Buffer.concat([Buffer.from([0, 0x0c]), Buffer.from([0, 0, 3]), Buffer.from("a.b"), Buffer.from([0, 0, 3]), Buffer.from("c.d")]);
  refusedWith(t, parseClientHello(buildHello({ extensions: [[0, twoNames]] })), "malformed", /exactly one name/);
  const otherType = Buffer.from(serverNameData("a.b"));
  otherType[2] = 1;
  refusedWith(t, parseClientHello(buildHello({ extensions: [[0, otherType]] })), "malformed", /type 1, not host_name/);
  refusedWith(t, parseClientHello(buildHello({ sni: SNI, extensions: [[0, serverNameData("evil.example")]] })), "malformed", /extension 0x0000 appears twice/);
  refusedWith(t, parseClientHello(buildHello({ sni: "" })), "malformed", /host_name is empty/);
  refusedWith(t, parseClientHello(buildHello({ sni: "", alpn: [""] })), "malformed");
  refusedWith(t, parseClientHello(buildHello({ sni: SNI, alpn: [""] })), "malformed", /empty protocol name/);

  // Names no gateway should route on.
  for (const [name, why] of [
    [`${SNI}.`, /ends with a dot/],
    [`.${SNI}`, /starts with a dot/],
    ["a..b", /empty label/],
    ["*.dc1.internal.td", /byte 0x2a/],
    ["web\u0000.evil", /byte 0x00/],
    ["web default", /byte 0x20/],
    ["wéb.x", /byte 0xe9/],
    [`${"a".repeat(64)}.x`, /label over 63/],
    [`${"a.".repeat(127)}ab`, /over DNS's 253/],
  ] as const) {
    refusedWith(t, parseClientHello(buildHello({ sni: Buffer.from(name, "latin1") })), "invalid_sni", why);
  }
});

t.test("peek refusals: closed early, timed out, too large, not TLS", async (t) => {
  const hello = await nodeHello({ servername: SNI });
  const half = hello.subarray(0, 40);

  const closed = new PassThrough();
  const early = peekClientHello(closed);
  closed.end(half);
  refusedWith(t, await early, "truncated", /closed after 40 bytes/);

  const nothing = new PassThrough();
  const empty = peekClientHello(nothing);
  nothing.end();
  refusedWith(t, await empty, "connection_closed", /before sending anything/);

  const { result } = await peekOverTcp(t, half, false);
  refusedWith(t, result, "truncated", /after 40 bytes/);

  const slow = new PassThrough();
  const started = Date.now();
  const timedOut = peekClientHello(slow, { timeoutMs: 150 });
  slow.write(half);
  const r = await timedOut;
  refusedWith(t, r, "timeout", /within 150 ms \(40 bytes received\)/);
  t.ok(Date.now() - started >= 140, "waited for the deadline");
  t.same(r.bytes, half, "the bytes read so far come back with the refusal");

  // A trickle of endless records: refused once the limit is passed, not buffered forever.
  const flood = new PassThrough();
  const flooded = peekClientHello(flood, { maxBytes: 4096 });
  const message = handshakeOf(buildHello({ sni: SNI, extensions: [[21, Buffer.alloc(8000)]] }));
  for (const b of reframe(message, 1)) flood.write(Buffer.from([b]));
  const fr = await flooded;
  refusedWith(t, fr, "too_large");
  t.ok(fr.bytes.length <= 4096, `stopped reading at ${fr.bytes.length} bytes`);

  const http = new PassThrough();
  const plain = peekClientHello(http);
  http.write("GET / HTTP/1.1\r\n");
  refusedWith(t, await plain, "not_tls");

  const errored = new PassThrough();
  const failing = peekClientHello(errored);
  errored.write(half);
  errored.destroy(new Error("ECONNRESET"));
  refusedWith(t, await failing, "truncated", /failed after 40 bytes.*ECONNRESET/);
});
