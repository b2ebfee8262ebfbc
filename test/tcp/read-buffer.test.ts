// readAcceptedInto: a socket a server accepted (plain, or the TLS socket a TLS server built) is
// switched to read into the shared buffer, through private fields of net.Socket. These tests run
// on Node 20, 22 and 24 (.ci/run): what was read before the switch must come first, the reads
// after it must land in the shared buffer, false from the callback must stop the reads, and not
// one byte may be lost, repeated or reordered.
import t from "tap";
import { once } from "node:events";
import { createHash } from "node:crypto";
import { connect as tlsConnect, createServer as createTlsServer, type TLSSocket } from "node:tls";
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Server, type Socket } from "node:net";
import { createRootCa, issueLeaf } from "../../src/index.js";
import { acceptedSocketsReadDirect, borrowsReadBuffer, readAcceptedInto, readsBackToStream } from "../../src/tcp/read-buffer.js";
import type { Teardown } from "../helpers/mesh.js";

interface Accepted {
  /** The server's side of the connection, as the server handed it over (nothing reads it yet). */
  readonly server: Socket;
  /** The client's side. */
  readonly client: Socket;
}

async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; !cond(); i++) {
    if (i > 2000) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function listening(t: Teardown, server: Server): Promise<number> {
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => server.close());
  return (server.address() as AddressInfo).port;
}

async function plainPair(t: Teardown): Promise<Accepted> {
  const accepted: Socket[] = [];
  const server = createNetServer({ allowHalfOpen: true }, (s) => accepted.push(s));
  const client = netConnect({ port: await listening(t, server), host: "127.0.0.1" });
  t.teardown(() => client.destroy());
  await until("the connection to be accepted", () => accepted.length === 1);
  const s = accepted[0]!;
  t.teardown(() => s.destroy());
  return { server: s, client };
}

async function tlsPair(t: Teardown): Promise<Accepted> {
  const ca = await createRootCa("11111111-2222-3333-4444-555555555555.consul");
  const leaf = await issueLeaf(ca, { spiffeId: "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/app", commonName: "app", ttlMs: 3_600_000 });
  const accepted: TLSSocket[] = [];
  const server = createTlsServer({ key: leaf.keyPem, cert: leaf.certPem, allowHalfOpen: true }, (s) => accepted.push(s));
  const client = tlsConnect({ port: await listening(t, server), host: "127.0.0.1", ca: ca.certPem, checkServerIdentity: () => undefined });
  t.teardown(() => client.destroy());
  await once(client, "secureConnect");
  await until("the TLS connection to be accepted", () => accepted.length === 1);
  const s = accepted[0]!;
  t.teardown(() => s.destroy());
  return { server: s, client };
}

function pattern(size: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) b[i] = (i * 31 + seed) % 251;
  return b;
}

const sha = (b: Buffer | ReturnType<typeof createHash>): string => (Buffer.isBuffer(b) ? createHash("sha256").update(b) : b).digest("hex");

/** Writes `size` patterned bytes as fast as the socket takes them, then ends it; `sent` hashes them. */
function writePattern(client: Socket, size: number): { readonly written: () => number; readonly sent: ReturnType<typeof createHash>; readonly done: Promise<void> } {
  const sent = createHash("sha256");
  let written = 0;
  const done = new Promise<void>((resolve) => {
    const more = (): void => {
      while (written < size) {
        const chunk = pattern(Math.min(40_000, size - written), written % 251);
        written += chunk.length;
        sent.update(chunk);
        if (!client.write(chunk)) return void client.once("drain", more);
      }
      client.end();
      resolve();
    };
    more();
  });
  return { written: () => written, sent, done };
}

/** Resolves once the writer has stopped making progress (its queue and the kernel's buffers full). */
async function stalled(written: () => number): Promise<number> {
  let last = -1;
  for (;;) {
    await new Promise((r) => setTimeout(r, 200));
    if (written() === last) return last;
    last = written();
  }
}

t.test("this Node lets accepted sockets read into the shared buffer", async (t) => {
  t.equal(acceptedSocketsReadDirect, true, `${process.version}: net.Socket's onread fields were found and hold what onread sets`);
});

for (const [kind, pair] of [["plain", plainPair], ["TLS", tlsPair]] as const) {
  t.test(`${kind}: bytes read before the switch come first, then the direct reads, every byte in order, then the end`, async (t) => {
    const { server, client } = await pair(t);
    const early = pattern(200_000, 1);
    const late = pattern(300_000, 7);
    client.write(early);
    // Some of it is in the socket's Readable buffer (Node reads as soon as it accepts), the rest
    // still in the kernel: both paths are exercised.
    await until("the accepted socket to have read part of the first write", () => server.readableLength > 0);
    const chunks: Buffer[] = [];
    const borrowed: boolean[] = [];
    t.equal(
      readAcceptedInto(server, (data, fromShared) => {
        t.equal(borrowsReadBuffer(data), fromShared, "borrowed is said exactly of views of the shared buffer");
        chunks.push(Buffer.copyBytesFrom(data));
        borrowed.push(fromShared);
        return true;
      }),
      true,
      "the socket was switched",
    );
    t.equal(borrowed[0], false, "what was read before the switch is delivered first, as the socket's own chunk");
    client.end(late);
    await once(server, "end");
    t.ok(borrowed.includes(true), "later reads land in the shared buffer (the onread path)");
    const all = Buffer.concat(chunks);
    t.equal(all.length, early.length + late.length, "every byte arrived once");
    t.equal(sha(all), sha(Buffer.concat([early, late])), "in order");
    t.equal(server.listenerCount("data"), 0, "nothing reads 'data' events");
  });

  t.test(`${kind}: false from the callback stops the reads, resume() reads on, and every byte arrives`, async (t) => {
    const { server, client } = await pair(t);
    const size = 32 * 1024 * 1024;
    const writer = writePattern(client, size);
    const got = createHash("sha256");
    let bytes = 0;
    let paused = true;
    t.ok(
      readAcceptedInto(server, (data) => {
        got.update(data);
        bytes += data.length;
        return !paused;
      }),
      "the socket was switched",
    );
    // While paused the writer must stall: the kernel buffers and the client's queue fill up.
    const written = await stalled(writer.written);
    t.ok(written < size / 2, `the client could write ${(written / 1048576).toFixed(1)} of ${size / 1048576} MiB while the reads were paused`);
    t.ok(bytes < 1024 * 1024, `${bytes} bytes were delivered while paused`);
    paused = false;
    server.resume();
    await writer.done;
    await once(server, "end");
    t.equal(bytes, size, "every byte arrived once");
    t.equal(sha(got), sha(writer.sent), "in order");
  });
}

for (const [kind, pair] of [["plain", plainPair], ["TLS", tlsPair]] as const) {
  t.test(`${kind}: a switched socket handed back to the Readable path gives its new owner every later byte as 'data', with flow control`, async (t) => {
    const { server, client } = await pair(t);
    const first = pattern(1000, 3);
    client.write(first);
    const before: Buffer[] = [];
    let handedOver = false;
    t.ok(
      readAcceptedInto(server, (data) => {
        if (handedOver) t.fail("a read reached the first owner after the hand-over");
        before.push(Buffer.copyBytesFrom(data));
        return true;
      }),
      "switched",
    );
    await until("the first write to arrive", () => Buffer.concat(before).length === first.length);
    // As the HTTP/1 core hands over an upgraded connection: paused, then given back.
    server.pause();
    readsBackToStream(server);
    Reflect.set(server, "readableFlowing", null);
    handedOver = true;
    const size = 8 * 1024 * 1024;
    const writer = writePattern(client, size);
    // The new owner is slow at first: reads stop while nobody consumes (the Readable's high-water mark).
    const written = await stalled(writer.written);
    t.ok(written < size, `the client could write ${(written / 1048576).toFixed(1)} of ${size / 1048576} MiB before the new owner read`);
    const got = createHash("sha256");
    let bytes = 0;
    let views = 0;
    server.on("data", (d: Buffer) => {
      if (borrowsReadBuffer(d)) views++;
      got.update(d);
      bytes += d.length;
    });
    await once(server, "end");
    t.equal(views, 0, "'data' chunks are copies, not views of the shared buffer");
    t.equal(bytes, size, "every later byte arrived once");
    t.equal(sha(got), sha(writer.sent), "in order");
  });
}

t.test("a socket already read through 'data' events is left as it is", async (t) => {
  const { server, client } = await plainPair(t);
  const seen: Buffer[] = [];
  server.on("data", (d: Buffer) => seen.push(d));
  t.equal(readAcceptedInto(server, () => true), false, "not switched");
  client.end("hello");
  await once(server, "end");
  t.equal(Buffer.concat(seen).toString(), "hello", "its reads still arrive as 'data' events");
});
