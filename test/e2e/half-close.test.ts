// Half-close through two real sidecars, in both directions: a FIN from one end reaches the
// other end, and the direction that is still open keeps carrying bytes, none lost.
import t from "tap";
import { connect, type Socket } from "node:net";
import { once } from "node:events";
import { randomBytes, createHash } from "node:crypto";
import { hostPort, startSidecar, tcpApp, tempDir, type Teardown } from "../helpers/mesh.js";

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** A loopback app server with allowHalfOpen; `handle` decides what it does per connection. */
async function appServer(t: Teardown, handle: (s: Socket) => void): Promise<number> {
  return (await tcpApp(t, handle)).port;
}

/** A db sidecar in front of `appPort` and a web sidecar with upstream db; returns web's upstream. */
async function mesh(t: Teardown, appPort: number): Promise<string> {
  const dir = await tempDir(t);
  await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${appPort}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  return web.upstreams["db"]!;
}

function connectTo(addr: string): Promise<Socket> {
  const { host, port } = hostPort(addr);
  const s = connect({ host, port, allowHalfOpen: true });
  return new Promise((resolve, reject) => {
    s.once("connect", () => resolve(s));
    s.once("error", reject);
  });
}

t.test("the client half-closes and still gets the reply the server sends after that", { timeout: 30_000 }, async (t) => {
  // The app answers only once it has seen the client's FIN: the reply can only arrive if the
  // FIN crossed both sidecars and the server→client direction stayed open behind it.
  let sawEndBeforeReply = false;
  const port = await appServer(t, (s) => {
    const got: Buffer[] = [];
    s.on("data", (d: Buffer) => got.push(d));
    s.on("end", () => {
      sawEndBeforeReply = true;
      s.end(`reply after your FIN to ${Buffer.concat(got).length} bytes: ${Buffer.concat(got).toString()}`);
    });
  });
  const up = await mesh(t, port);

  const c = await connectTo(up);
  const closed = once(c, "close");
  const chunks: Buffer[] = [];
  c.on("data", (d: Buffer) => chunks.push(d));
  c.end("question");
  await once(c, "end");
  await closed;

  t.ok(sawEndBeforeReply, "the app saw the client's FIN (end) through both sidecars");
  t.equal(Buffer.concat(chunks).toString(), "reply after your FIN to 8 bytes: question", "the reply sent after the half-close arrived whole");
});

t.test("the app server ends first while the client keeps sending: nothing the client sends is lost", { timeout: 30_000 }, async (t) => {
  // The app says hello and half-closes at once, then keeps reading until the client ends.
  let onReceived: (b: Buffer) => void = () => {};
  const received = new Promise<Buffer>((resolve) => (onReceived = resolve));
  const port = await appServer(t, (s) => {
    const got: Buffer[] = [];
    s.on("data", (d: Buffer) => got.push(d));
    s.on("end", () => onReceived(Buffer.concat(got)));
    s.end("hello, I am done talking\n");
  });
  const up = await mesh(t, port);

  const c = await connectTo(up);
  const closed = once(c, "close");
  const fromServer: Buffer[] = [];
  c.on("data", (d: Buffer) => fromServer.push(d));
  await once(c, "end");
  t.equal(Buffer.concat(fromServer).toString(), "hello, I am done talking\n", "the client got the app's words and its FIN");

  // Only now, after the server's FIN, does the client send: 4 MiB in 64 KiB writes.
  const payload = randomBytes(4 * 1024 * 1024);
  for (let off = 0; off < payload.length; off += 64 * 1024) {
    if (!c.write(payload.subarray(off, off + 64 * 1024))) await once(c, "drain");
  }
  c.end();
  const got = await received;
  await closed;
  t.equal(got.length, payload.length, "the app received every byte sent after its own FIN");
  t.equal(sha(got), sha(payload), "and they are intact");
});
