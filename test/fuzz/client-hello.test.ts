// The ClientHello parser under fuzzing: random bytes, truncated, oversized and mutated real
// hellos give a value or a refusal, never an exception, in linear time; and every SNI it reads
// is the one OpenSSL (the TLS stack of the backend behind a gateway) reads from the same bytes.
import t, { type Test } from "tap";
import fc from "fast-check";
import { once } from "node:events";
import { connect as netConnect, type AddressInfo } from "node:net";
import { Readable } from "node:stream";
import { createSecureContext, createServer as createTlsServer, type TLSSocket } from "node:tls";
import { fuzzParams } from "./params.js";
import { assertLinear } from "./mutate.js";
import { parseClientHello, peekClientHello, type HelloParse, type PeekResult } from "../../src/tls/client-hello.js";
import { createRootCa, issueLeaf } from "../../src/index.js";
import { buildHello, handshakeOf, nodeHello, reframe } from "../helpers/client-hello.js";

const SNI = "web.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul";
const STATUSES = new Set(["complete", "incomplete", "refused"]);
const HOST = /^[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*$/;

/** The parser's contract for any input: one of three shapes, each internally consistent. */
function wellFormed(buf: Buffer, r: HelloParse, maxBytes: number): boolean {
  if (!STATUSES.has(r.status)) return false;
  if (r.status === "incomplete") return r.needed > buf.length && r.needed <= maxBytes;
  if (r.status === "refused") return r.message.length > 0;
  return r.length <= buf.length && r.length <= maxBytes && HOST.test(r.sni) && r.sni.length <= 253;
}

async function realHellos(): Promise<Buffer[]> {
  return [
    await nodeHello({ servername: SNI, ALPNProtocols: ["h2", "http/1.1"] }),
    await nodeHello({ servername: SNI, maxVersion: "TLSv1.2" }),
    buildHello({ sni: SNI, alpn: ["h2"], extensions: [[21, Buffer.alloc(40)]] }),
  ];
}

type Edit = { readonly op: "byte"; readonly at: number; readonly value: number } | { readonly op: "u16"; readonly at: number; readonly value: number } | { readonly op: "insert"; readonly at: number; readonly bytes: Uint8Array } | { readonly op: "delete"; readonly at: number; readonly count: number };

const edit: fc.Arbitrary<Edit> = fc.oneof(
  fc.record({ op: fc.constant("byte" as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ op: fc.constant("u16" as const), at: fc.nat(), value: fc.oneof(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 300 })) }),
  fc.record({ op: fc.constant("insert" as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
  fc.record({ op: fc.constant("delete" as const), at: fc.nat(), count: fc.integer({ min: 1, max: 8 }) }),
);

function applyEdit(b: Buffer, e: Edit): Buffer {
  if (b.length === 0) return b;
  const at = e.at % b.length;
  switch (e.op) {
    case "byte": {
      const c = Buffer.from(b);
      c[at] = e.value;
      return c;
    }
    case "u16": {
      const c = Buffer.from(b);
      if (at + 2 <= c.length) c.writeUInt16BE(e.value, at);
      return c;
    }
    case "insert":
      return Buffer.concat([b.subarray(0, at), e.bytes, b.subarray(at)]);
    case "delete":
      return Buffer.concat([b.subarray(0, at), b.subarray(at + e.count)]);
  }
}

/**
 * A real hello with edits applied either to the raw records (outer lengths then disagree) or to
 * the handshake message, re-framed with consistent outer lengths and a random record size (so
 * the edits reach the fields inside).
 */
function mutatedHello(hellos: readonly Buffer[]): fc.Arbitrary<Buffer> {
  return fc.tuple(fc.integer({ min: 0, max: hellos.length - 1 }), fc.array(edit, { minLength: 1, maxLength: 4 }), fc.boolean(), fc.integer({ min: 1, max: 16_384 })).map(([i, edits, inner, recordSize]) => {
    const hello = hellos[i]!;
    if (!inner) return edits.reduce(applyEdit, hello);
    const message = edits.reduce(applyEdit, handshakeOf(hello));
    // Keep the 24-bit handshake length honest half the time, so edits reach the extensions.
    if (recordSize % 2 === 0 && message.length >= 4) message.writeUIntBE(message.length - 4, 1, 3);
    return reframe(message, recordSize);
  });
}

t.test("random bytes, truncations and oversized inputs: a value or a refusal, never an exception", async (t) => {
  const hellos = await realHellos();
  const anyBytes = fc.oneof(
    fc.uint8Array({ maxLength: 600 }).map((a) => Buffer.from(a)),
    fc.uint8Array({ maxLength: 600 }).map((a) => Buffer.concat([Buffer.from([0x16, 3, 1]), Buffer.from(a)])),
    fc.uint8Array({ maxLength: 600 }).map((a) => Buffer.concat([Buffer.from([0x16, 3, 1, a.length >> 8, a.length & 0xff, 1, 0, a.length >> 8, (a.length - 4) & 0xff]), Buffer.from(a)])),
    fc.tuple(fc.integer({ min: 0, max: hellos.length - 1 }), fc.nat()).map(([i, n]) => hellos[i]!.subarray(0, n % hellos[i]!.length)),
    fc.tuple(fc.integer({ min: 0, max: hellos.length - 1 }), fc.uint8Array({ maxLength: 200 })).map(([i, tail]) => Buffer.concat([hellos[i]!, tail])),
  );
  fc.assert(
    fc.property(anyBytes, fc.constantFrom(64, 1024, 32_778), (buf, maxBytes) => wellFormed(buf, parseClientHello(buf, maxBytes), maxBytes)),
    fuzzParams(),
  );
  // A whole hello followed by anything still reads as that hello (0-RTT data after it).
  fc.assert(
    fc.property(fc.integer({ min: 0, max: hellos.length - 1 }), fc.uint8Array({ maxLength: 100 }), (i, tail) => {
      const r = parseClientHello(Buffer.concat([hellos[i]!, tail]));
      return r.status === "complete" && r.sni === SNI && r.length === hellos[i]!.length;
    }),
    fuzzParams(),
  );
  t.pass("no input threw; every result was well formed");
});

t.test("mutated real hellos: a value or a refusal; a reading that survives re-framing is the same", async (t) => {
  const hellos = await realHellos();
  let complete = 0;
  fc.assert(
    fc.property(mutatedHello(hellos), fc.integer({ min: 1, max: 64 }), (buf, size) => {
      const r = parseClientHello(buf, 1 << 20);
      if (!wellFormed(buf, r, 1 << 20)) return false;
      if (r.status !== "complete") return true;
      complete++;
      // The same handshake message in other record sizes reads the same.
      const again = parseClientHello(reframe(handshakeOf(buf.subarray(0, r.length)), size), 1 << 20);
      return again.status === "complete" && again.sni === r.sni && again.alpn.join() === r.alpn.join();
    }),
    fuzzParams(),
  );
  t.ok(complete > 0, `${complete} mutated hellos still parsed`);
});

/**
 * A Node TLS server that reports, per connection, the server name OpenSSL read (through the
 * SNICallback), "none" when the handshake went on without one, or "refused".
 */
async function opensslReader(t: Test): Promise<(hello: Buffer) => Promise<string>> {
  const ca = await createRootCa("11111111-2222-3333-4444-555555555555.consul");
  const leaf = await issueLeaf(ca, { spiffeId: "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web", commonName: "web", ttlMs: 3_600_000 });
  const context = createSecureContext({ key: leaf.keyPem, cert: leaf.certPem });
  // Connections are made one at a time: the name OpenSSL read belongs to the current one.
  let lastName: string | null = null;
  const server = createTlsServer({
    key: leaf.keyPem,
    cert: leaf.certPem,
    SNICallback: (name, cb) => {
      lastName = name;
      cb(null, context);
    },
  });
  server.on("secureConnection", (s: TLSSocket) => s.destroy());
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => server.close());
  const { port } = server.address() as AddressInfo;
  return (hello) =>
    new Promise<string>((resolve) => {
      lastName = null;
      const c = netConnect({ host: "127.0.0.1", port });
      let settled = false;
      const settle = (v: string) => {
        if (settled) return;
        settled = true;
        c.destroy();
        resolve(v);
      };
      c.on("error", () => settle("refused"));
      c.on("connect", () => c.write(hello));
      // A handshake record back (ServerHello) means OpenSSL accepted the hello; an alert, not.
      c.on("data", (d: Buffer) => settle(d[0] === 0x16 ? (lastName ?? "none") : "refused"));
      c.on("close", () => settle("refused"));
    });
}

t.test("every SNI read here is the SNI OpenSSL reads from the same bytes", async (t) => {
  const hellos = await realHellos();
  const openssl = await opensslReader(t);
  // Bias towards edits that keep the hello parseable: name bytes changed to other host-name
  // bytes (dots, case, '_'), or a length near the server_name extension changed.
  const nameByte = fc.record({ op: fc.constant("byte" as const), at: fc.nat(), value: fc.constantFrom(...Buffer.from("aZ9-_.")) });
  const sniEdits = fc.tuple(fc.integer({ min: 0, max: hellos.length - 1 }), fc.array(fc.oneof({ weight: 4, arbitrary: nameByte }, { weight: 1, arbitrary: edit }), { minLength: 1, maxLength: 3 })).map(([i, edits]) => {
    const hello = hellos[i]!;
    const at = hello.indexOf(Buffer.from(SNI)) - 9;
    return edits.reduce((b, e) => applyEdit(b, { ...e, at: at + (e.at % (SNI.length + 9)) }), hello);
  });
  let compared = 0;
  await fc.assert(
    fc.asyncProperty(fc.oneof({ weight: 3, arbitrary: sniEdits }, { weight: 1, arbitrary: mutatedHello(hellos) }), async (buf) => {
      const r = parseClientHello(buf, 1 << 20);
      if (r.status !== "complete") return true;
      compared++;
      const theirs = await openssl(buf.subarray(0, r.length));
      if (theirs === "refused" || theirs.toLowerCase() === r.sni) return true;
      t.comment(`OpenSSL read ${JSON.stringify(theirs)}, the parser ${JSON.stringify(r.sni)}`);
      return false;
    }),
    fuzzParams(0.2),
  );
  t.ok(compared > 0, `${compared} hellos compared with OpenSSL`);
});

t.test("linear time: many extensions, long ALPN lists, a hello dribbled in 1-byte records", async (t) => {
  const big = 1 << 22;
  const run = (input: string) => {
    parseClientHello(Buffer.from(input, "latin1"), big);
  };
  const manyExtensions = (n: number) => buildHello({ sni: SNI, extensions: Array.from({ length: n }, (_, i) => [1000 + i, Buffer.alloc(0)] as const) }).toString("latin1");
  assertLinear(t, "many extensions", manyExtensions, run, 1000);
  const longAlpn = (n: number) => buildHello({ sni: SNI, extensions: [[16, alpnList(n)]] }).toString("latin1");
  assertLinear(t, "a long ALPN list", longAlpn, run, 300);
  const dribbled = (n: number) => reframe(handshakeOf(buildHello({ sni: SNI, extensions: [[21, Buffer.alloc(n)]] })), 1).toString("latin1");
  assertLinear(t, "1-byte records", dribbled, run, 200);
  // The peek re-parses only when its lower bound is reached, not on every byte: fed one byte per
  // 'data' event (emitted synchronously, so the work is timed), it stays linear.
  const peeks: Promise<PeekResult>[] = [];
  const peekRun = (input: string) => {
    const stream = new Readable({ read: () => undefined });
    peeks.push(peekClientHello(stream, { maxBytes: big }));
    const bytes = Buffer.from(input, "latin1");
    for (let i = 0; i < bytes.length; i++) stream.emit("data", bytes.subarray(i, i + 1));
    stream.destroy();
  };
  assertLinear(t, "peek, 1 byte per read, 1-byte records", dribbled, peekRun, 100);
  const results = await Promise.all(peeks);
  t.ok(results.every((r) => r.ok && r.sni === SNI), "every peek read the hello");
});

function alpnList(n: number): Buffer {
  const names = Buffer.concat(Array.from({ length: n }, () => Buffer.from([6, ...Buffer.from("proto1")])));
  const out = Buffer.alloc(2);
  out.writeUInt16BE(names.length);
  return Buffer.concat([out, names]);
}

