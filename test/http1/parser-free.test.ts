// A freed llhttp parser must be collectable: the binding's parser holds a strong handle on its
// JS object until the C++ side is deleted, and through the callbacks on it every connection's
// socket, its pool and that pool's TLS secure context (one per leaf renewal). The soak's RSS grew
// with every renewal and every pool blow-up while the parsers of closed connections piled up.
import t from "tap";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { setImmediate as tick } from "node:timers/promises";
import { Http1Parser, http1Core, type MessageEvents } from "../../src/http1/parser.js";

setFlagsFromString("--expose-gc");
const exposedGc: unknown = runInNewContext("gc");
const gc = (): void => void (typeof exposedGc === "function" && Reflect.apply(exposedGc, undefined, []));

const ignore: MessageEvents = {
  begin: () => {},
  head: () => 0,
  body: () => {},
  trailers: () => {},
  complete: () => {},
};

t.test("parsers freed after a response are collected, with what their callbacks hold", async (t) => {
  const core = http1Core();
  if (!core.ok) return t.fail(`the HTTP/1 core is unavailable: ${core.reason}`);
  if (typeof exposedGc !== "function") return t.fail("no gc() despite --expose-gc");
  const N = 200;
  let collected = 0;
  const registry = new FinalizationRegistry<number>(() => collected++);
  const response = Buffer.from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
  let parsed = 0;
  for (let i = 0; i < N; i++) {
    // What a connection hangs on its parser's callbacks (the socket, the pool): 64 KB here.
    const held = { buffer: Buffer.alloc(64 * 1024) };
    const parser = new Http1Parser(core.lib, "response", { ...ignore, complete: () => void held.buffer.length });
    if (parser.execute(response) === response.length) parsed++;
    parser.free();
    registry.register(held, i);
  }
  t.equal(parsed, N, "every response parsed");
  for (let round = 0; round < 10 && collected < N * 0.9; round++) {
    gc();
    await tick();
  }
  t.ok(collected >= N * 0.9, `${collected} of ${N} freed parsers' connections collected`);
});
