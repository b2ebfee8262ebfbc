// DirectReads: reads of the local-app socket land in one buffer shared by every connection and
// go straight into the TLS socket. The next read overwrites that buffer, so a chunk the TLS
// socket keeps queued (by reference) must have been copied first.
import t from "tap";
import { once } from "node:events";
import { createServer, connect, type TLSSocket } from "node:tls";
import { createServer as createNetServer, connect as netConnect, type AddressInfo, type Socket } from "node:net";
import { createRootCa, issueLeaf } from "../../src/index.js";
import { DirectReads, joinSockets } from "../../src/tcp/pipe.js";
import type { Teardown } from "../helpers/mesh.js";

async function tlsPair(t: Teardown): Promise<{ client: TLSSocket; received: () => Promise<Buffer> }> {
  const ca = await createRootCa("11111111-2222-3333-4444-555555555555.consul");
  const leaf = await issueLeaf(ca, { spiffeId: "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/app", commonName: "app", ttlMs: 3_600_000 });
  const chunks: Buffer[] = [];
  let markEnded: () => void = () => {};
  const ended = new Promise<void>((resolve) => (markEnded = resolve));
  const server = createServer({ key: leaf.keyPem, cert: leaf.certPem }, (s) => {
    s.on("data", (d: Buffer) => chunks.push(d));
    s.on("end", markEnded);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const client = connect({ port: (server.address() as AddressInfo).port, host: "127.0.0.1", ca: ca.certPem, checkServerIdentity: () => undefined });
  await once(client, "secureConnect");
  t.teardown(() => {
    client.destroy();
    server.close();
  });
  return {
    client,
    received: async () => {
      client.end();
      await ended;
      return Buffer.concat(chunks);
    },
  };
}

t.test("a read that would wait in the TLS socket's queue is copied before the buffer is reused", async (t) => {
  const { client, received } = await tlsPair(t);
  const reads = DirectReads.intoTls(client);
  const buffer = reads.onread.buffer;
  if (!(buffer instanceof Uint8Array)) throw new Error("DirectReads uses one shared buffer");
  const deliver = (n: number, buf: Uint8Array) => reads.onread.callback(n, buf);
  // Corked, the TLS socket queues writes (as it does while an earlier write is in flight).
  client.cork();
  Buffer.from(buffer.buffer, buffer.byteOffset, 5).write("first");
  deliver(5, buffer);
  // The next read of any connection lands in the same buffer.
  Buffer.from(buffer.buffer, buffer.byteOffset, 6).write("second");
  deliver(6, buffer);
  client.uncork();
  t.equal((await received()).toString(), "firstsecond", "both reads arrive as they were read");
});

t.test("an unqueued read goes out as is", async (t) => {
  const { client, received } = await tlsPair(t);
  const reads = DirectReads.intoTls(client);
  const buffer = reads.onread.buffer;
  if (!(buffer instanceof Uint8Array)) throw new Error("DirectReads uses one shared buffer");
  for (const word of ["one", "two", "three"]) {
    Buffer.from(buffer.buffer, buffer.byteOffset, word.length).write(word);
    t.equal(reads.onread.callback(word.length, buffer), true, `"${word}" is taken without backpressure`);
  }
  t.equal((await received()).toString(), "onetwothree", "every read arrives, in order");
});

t.test("into plain TCP, every read is copied: a write the kernel cannot take at once keeps its chunk", async (t) => {
  const chunks: Buffer[] = [];
  let peer: Socket | null = null;
  const accepted = new Promise<Socket>((resolve) => {
    const server = createNetServer((s) => {
      peer = s;
      s.pause(); // nothing is read yet, so the kernel's buffers fill and later writes wait
      resolve(s);
    });
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as AddressInfo).port;
      t.teardown(() => server.close());
      client = netConnect({ port, host: "127.0.0.1" });
    });
  });
  let client: Socket | null = null;
  const s = await accepted;
  t.teardown(() => {
    client?.destroy();
    peer?.destroy();
  });
  if (!client) throw new Error("no client socket");
  const reads = DirectReads.intoPlain(client);
  const buffer = reads.onread.buffer;
  if (!(buffer instanceof Uint8Array)) throw new Error("DirectReads uses one shared buffer");
  const sent: Buffer[] = [];
  for (let i = 0; i < 96; i++) {
    const piece = Buffer.alloc(65536, 0x41 + (i % 26));
    piece.copy(Buffer.from(buffer.buffer, buffer.byteOffset, piece.length));
    sent.push(piece);
    reads.onread.callback(piece.length, buffer);
  }
  t.ok((client as Socket).writableLength > 0, "some writes are waiting for the kernel");
  (client as Socket).end();
  s.on("data", (d: Buffer) => chunks.push(d));
  s.resume();
  await once(s, "end");
  t.ok(Buffer.concat(chunks).equals(Buffer.concat(sent)), "the peer gets every read as it was read");
});

/** Two connected TCP socket pairs on loopback: [client, accepted] each. */
async function socketPair(t: Teardown): Promise<{ client: Socket; accepted: Socket }> {
  const server = createNetServer({ allowHalfOpen: true });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const acceptedP = once(server, "connection") as Promise<[Socket]>;
  const client = netConnect({ port: (server.address() as AddressInfo).port, host: "127.0.0.1", allowHalfOpen: true });
  const [accepted] = await acceptedP;
  await once(client, "connect").catch(() => undefined);
  t.teardown(() => {
    client.destroy();
    accepted.destroy();
    server.close();
  });
  return { client, accepted };
}

// Found by the soak harness (bench/soak, the burst fault): a caller that finished its handshake and
// shut down its side while the public listener was still dialling the local app had its 'end'
// already emitted when the pipe was joined; the app was never told, and the connection (two
// descriptors here, two on the caller's sidecar) stayed open until the one-hour idle timeout.
for (const which of ["down", "up"] as const) {
  t.test(`a ${which} side that ended before the pipe was joined is half-closed through it`, async (t) => {
    const down = await socketPair(t);
    const up = await socketPair(t);
    const early = which === "down" ? down : up;
    early.client.end();
    early.accepted.resume();
    await once(early.accepted, "end");
    t.ok(early.accepted.readableEnded, "the end was emitted before the join");
    const other = which === "down" ? up : down;
    const closed = new Promise<boolean>((resolve) => joinSockets(down.accepted, up.accepted, 60_000, () => resolve(true)));
    const within2s = <T>(p: Promise<T>) => Promise.race([p, new Promise<false>((resolve) => setTimeout(() => resolve(false), 2000).unref())]);
    other.client.resume();
    t.equal(await within2s(once(other.client, "end").then(() => true)), true, `the ${which === "down" ? "up" : "down"} side's peer is told the other side ended`);
    other.client.end();
    early.client.resume();
    t.equal(await within2s(closed), true, "the pipe closes once both sides ended");
  });
}

/** A plain TCP client and its accepted peer, the peer collecting what it reads (paused if asked). */
async function plainPair(t: Teardown, opts: { paused?: boolean } = {}): Promise<{ client: Socket; peer: Socket; received: () => Buffer; ended: Promise<unknown> }> {
  const { client, accepted } = await socketPair(t);
  const chunks: Buffer[] = [];
  accepted.on("data", (d: Buffer) => chunks.push(d));
  if (opts.paused) accepted.pause();
  return { client, peer: accepted, received: () => Buffer.concat(chunks), ended: once(accepted, "end") };
}

/** Puts `piece` in the shared buffer and delivers it as one read, as Node's onread would. */
function readInto(reads: DirectReads, piece: Buffer): boolean | undefined {
  const buffer = reads.onread.buffer;
  if (!(buffer instanceof Uint8Array)) throw new Error("DirectReads uses one shared buffer");
  piece.copy(Buffer.from(buffer.buffer, buffer.byteOffset, piece.length));
  const r = reads.onread.callback(piece.length, buffer);
  // The next read of any socket overwrites the buffer: scribble over it to catch a write that kept it.
  Buffer.from(buffer.buffer, buffer.byteOffset, piece.length).fill(0x5a);
  return r;
}

const RECORD = 16 * 1024;
const pattern = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff));

t.test("from TLS into plain TCP: full records are gathered into one write, ended by a shorter one", async (t) => {
  const { client, received, ended } = await plainPair(t);
  const reads = DirectReads.tlsIntoPlain(client);
  const sent = [pattern(RECORD, 1), pattern(RECORD, 2), pattern(RECORD, 3)];
  for (const p of sent) readInto(reads, p);
  t.equal(client.bytesWritten, 0, "three full records are held back (more of the same read may follow)");
  const last = pattern(100, 4);
  readInto(reads, last);
  sent.push(last);
  t.equal(client.bytesWritten, 3 * RECORD + 100, "the shorter record ends the burst: all four go out at once");
  readInto(reads, Buffer.from("small"));
  sent.push(Buffer.from("small"));
  t.equal(client.bytesWritten, 3 * RECORD + 105, "a read shorter than a record is written at once");
  client.end();
  await ended;
  t.ok(received().equals(Buffer.concat(sent)), "the peer gets every byte, in order");
});

t.test("from TLS into plain TCP: gathered records go out by the end of the event loop's turn", async (t) => {
  const { client, received, ended } = await plainPair(t);
  const reads = DirectReads.tlsIntoPlain(client);
  const sent = [pattern(RECORD, 7), pattern(RECORD, 8)];
  for (const p of sent) readInto(reads, p);
  t.equal(client.bytesWritten, 0, "held back for now");
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(client.bytesWritten, 2 * RECORD, "written at setImmediate with no shorter record to end them");
  // Five full records: four fill the buffer and go out at once, the fifth waits.
  const more = [1, 2, 3, 4, 5].map((i) => pattern(RECORD, 20 + i));
  for (const p of more) readInto(reads, p);
  t.equal(client.bytesWritten, 6 * RECORD, "a full buffer (four records) is written without waiting");
  reads.end();
  await ended;
  t.ok(received().equals(Buffer.concat([...sent, ...more])), "ending the destination writes what was still gathered first");
});

t.test("from TLS into plain TCP: a gathered write the kernel cannot take at once keeps its buffer", async (t) => {
  const { client, peer, received, ended } = await plainPair(t, { paused: true });
  const reads = DirectReads.tlsIntoPlain(client);
  const sent: Buffer[] = [];
  // 12 MiB of full records, each burst ended by a short one, while the peer reads nothing:
  // the kernel's buffers fill, writes queue, and the buffers they hold must not be reused.
  for (let i = 0; i < 192; i++) {
    for (let r = 0; r < 4; r++) {
      const p = pattern(RECORD, i * 5 + r);
      sent.push(p);
      readInto(reads, p);
    }
    const tail = pattern(1 + (i % 200), i);
    sent.push(tail);
    readInto(reads, tail);
  }
  t.ok(client.writableLength > 0, "writes are waiting for the kernel");
  client.end();
  peer.resume();
  await ended;
  t.ok(received().equals(Buffer.concat(sent)), "every byte arrives as it was read");
});
