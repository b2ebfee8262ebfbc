// ClientHellos for the SNI parser's tests: captured from real clients (Node's tls.connect, curl,
// openssl s_client) by a raw TCP server that records the first bytes, and built by hand (for
// what no client sends: oversized, fragmented, broken).
import { execFile } from "node:child_process";
import { once } from "node:events";
import { createServer, type AddressInfo, type Socket } from "node:net";
import { connect as tlsConnect, type ConnectionOptions } from "node:tls";
import { ignoreRejection } from "./ignore.js";

/**
 * How many bytes the handshake records at the start of `b` take up to the end of the first
 * handshake message, or -1 while more are needed. Deliberately naive (the parser under test is
 * not used to decide when a capture is complete).
 */
function firstMessageEnd(b: Buffer): number {
  let pos = 0;
  let payload = 0;
  let want = -1;
  while (pos + 5 <= b.length) {
    const len = b.readUInt16BE(pos + 3);
    if (pos + 5 + len > b.length) return -1;
    payload += len;
    pos += 5 + len;
    if (want < 0 && payload >= 4) {
      const first = b.subarray(5, 9);
      want = 4 + ((first[1]! << 16) | (first[2]! << 8) | first[3]!);
    }
    if (want >= 0 && payload >= want) return pos;
  }
  return -1;
}

/**
 * Starts a TCP server, lets `dial(port)` connect a client to it, and returns the client's first
 * handshake message (all the records it spans). The client's connection is then closed; what
 * `dial` returns is awaited (a child process exiting, say) with its failure ignored.
 */
export async function captureHello(dial: (port: number) => Promise<unknown>): Promise<Buffer> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  try {
    const captured = new Promise<Buffer>((resolve, reject) => {
      server.once("connection", (s: Socket) => {
        let got = Buffer.alloc(0);
        s.on("error", () => undefined);
        s.on("data", (d: Buffer) => {
          got = Buffer.concat([got, d]);
          const end = firstMessageEnd(got);
          if (end > 0) {
            resolve(got.subarray(0, end));
            s.destroy();
          }
        });
        s.on("close", () => reject(new Error(`the client closed after ${got.length} bytes, before a whole handshake message`)));
      });
    });
    const client = dial(port);
    const hello = await captured;
    await client.then(() => undefined, ignoreRejection("the client fails once its connection is cut mid-handshake: expected"));
    return hello;
  } finally {
    server.close();
  }
}

/** A Node TLS client's first flight. */
export function nodeHello(opts: Omit<ConnectionOptions, "host" | "port">): Promise<Buffer> {
  return captureHello(
    (port) =>
      new Promise<void>((resolve) => {
        const s = tlsConnect({ host: "127.0.0.1", port, rejectUnauthorized: false, ...opts });
        s.on("error", () => resolve());
        s.on("close", () => resolve());
      }),
  );
}

function run(cmd: string, args: readonly string[]): Promise<void> {
  return new Promise((resolve) => {
    const child = execFile(cmd, [...args], { timeout: 10_000 }, () => resolve());
    child.stdin?.end();
  });
}

/** curl's first flight to https://<host>:<port>/ (the name resolved to 127.0.0.1). */
export function curlHello(host: string, extra: readonly string[] = []): Promise<Buffer> {
  return captureHello((port) => run("curl", ["-sk", "--max-time", "10", ...(host === "127.0.0.1" ? [] : ["--resolve", `${host}:${port}:127.0.0.1`]), ...extra, `https://${host}:${port}/`]));
}

/** openssl s_client's first flight. */
export function opensslHello(args: readonly string[]): Promise<Buffer> {
  return captureHello((port) => run("openssl", ["s_client", "-connect", `127.0.0.1:${port}`, ...args]));
}

export interface HelloSpec {
  /** The host_name (a Buffer for raw bytes); omitted: no server_name extension. */
  readonly sni?: string | Buffer;
  readonly alpn?: readonly string[];
  /** Raw extensions (type, data) added after SNI and ALPN. */
  readonly extensions?: readonly (readonly [number, Buffer])[];
  /** Maximum payload per record (the hello is split across records); default 16384. */
  readonly recordSize?: number;
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

export function extension(type: number, data: Buffer): Buffer {
  return Buffer.concat([u16(type), u16(data.length), data]);
}

export function serverNameData(name: string | Buffer): Buffer {
  const n = typeof name === "string" ? Buffer.from(name, "latin1") : name;
  return Buffer.concat([u16(n.length + 3), Buffer.from([0]), u16(n.length), n]);
}

export function alpnData(protocols: readonly string[]): Buffer {
  const list = Buffer.concat(protocols.map((p) => Buffer.concat([Buffer.from([p.length]), Buffer.from(p, "latin1")])));
  return Buffer.concat([u16(list.length), list]);
}

/** The ClientHello message body (version, random, session id, suites, compression, extensions). */
export function helloBody(spec: HelloSpec): Buffer {
  const exts: Buffer[] = [];
  if (spec.sni !== undefined) exts.push(extension(0, serverNameData(spec.sni)));
  if (spec.alpn) exts.push(extension(16, alpnData(spec.alpn)));
  for (const [type, data] of spec.extensions ?? []) exts.push(extension(type, data));
  const extBlock = Buffer.concat(exts);
  return Buffer.concat([Buffer.from([3, 3]), Buffer.alloc(32, 7), Buffer.from([0]), u16(2), Buffer.from([0x13, 0x01]), Buffer.from([1, 0]), u16(extBlock.length), extBlock]);
}

/** A handshake message (type 1, 24-bit length) framed into records of at most `recordSize`. */
export function frame(body: Buffer, recordSize = 16_384): Buffer {
  const message = Buffer.concat([Buffer.from([1, (body.length >> 16) & 0xff, (body.length >> 8) & 0xff, body.length & 0xff]), body]);
  return reframe(message, recordSize);
}

/** Handshake bytes cut into records of at most `recordSize` payload bytes. */
export function reframe(message: Buffer, recordSize: number): Buffer {
  const out: Buffer[] = [];
  for (let at = 0; at < message.length; at += recordSize) {
    const part = message.subarray(at, at + recordSize);
    out.push(Buffer.from([0x16, 3, 1]), u16(part.length), part);
  }
  return Buffer.concat(out);
}

/** The handshake message carried by the records of a (whole) captured hello. */
export function handshakeOf(records: Buffer): Buffer {
  const parts: Buffer[] = [];
  for (let pos = 0; pos + 5 <= records.length; ) {
    const len = records.readUInt16BE(pos + 3);
    parts.push(records.subarray(pos + 5, pos + 5 + len));
    pos += 5 + len;
  }
  return Buffer.concat(parts);
}

export function buildHello(spec: HelloSpec): Buffer {
  return frame(helloBody(spec), spec.recordSize);
}
