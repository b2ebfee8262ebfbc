// An app's request handler that throws or rejects: not lost, not a hang. Logged with the request,
// counted, and the caller answered 500 (node:http's answer to a rejected handler with
// captureRejections), or its response reset when the head already went out. Other requests go on.
import t from "tap";
import { fetch } from "undici";
import { tempDir } from "../helpers/mesh.js";
import { sample } from "../helpers/peers.js";
import { fetchUntil, serve, service } from "../helpers/native.js";
import { createLogger } from "../../src/index.js";

/** What an async handler's failure looks like: a promise rejected a tick later. */
async function rejectLater(message: string): Promise<void> {
  await new Promise((r) => setImmediate(r));
  throw new Error(message);
}

t.test("a handler that throws or rejects: 500, logged with the request, counted", async (t) => {
  const dir = await tempDir(t);
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger({ level: "error", json: true, write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) });
  const api = await service(t, { name: "api", dataDir: dir, logger });
  const web = await service(t, { name: "web", dataDir: dir });
  // eslint-disable-next-line @typescript-eslint/no-misused-promises -- the point: an app's handler may be async and reject
  await serve(t, api, (req, res) => {
    res.setHeader("x-secret", "set before the failure");
    if (req.url === "/sync") throw new Error("sync boom");
    if (req.url === "/async") return rejectLater("async boom");
    res.end("fine");
  });
  t.equal(await (await fetchUntil(web, "https://api.service.consul/ok")).text(), "fine", "a good request first");
  for (const path of ["/sync", "/async"]) {
    const res = await fetch(`https://api.service.consul${path}`, { dispatcher: web.dispatcher() });
    t.equal(res.status, 500, `${path}: 500`);
    t.equal(res.headers.get("x-secret"), null, `${path}: no header the handler set leaks`);
    t.equal(await res.text(), "Internal Server Error\n");
  }
  t.equal(await (await fetch("https://api.service.consul/ok", { dispatcher: web.dispatcher() })).text(), "fine", "the server goes on serving");
  const failed = lines.filter((l) => l["@message"] === "request handler failed; answered 500");
  t.same(failed.map((l) => [l["path"], l["error"]]), [["/sync", "sync boom"], ["/async", "async boom"]], "each failure logged with its request");
  t.match(String(failed[0]?.["source"]), /\/svc\/web$/, "and its caller");
  t.match(String(failed[0]?.["stack"]), /sync boom\n\s+at /, "and the stack");
  t.equal(sample(await api.metrics.registry.metrics(), "meshproxy_native_handler_errors_total"), 2, "counted");
});

t.test("a handler that rejects after sending its head: the response is reset, not left hanging", async (t) => {
  const dir = await tempDir(t);
  const api = await service(t, { name: "api", dataDir: dir });
  const web = await service(t, { name: "web", dataDir: dir });
  // eslint-disable-next-line @typescript-eslint/no-misused-promises -- the point: an app's handler may be async and reject
  await serve(t, api, async (req, res) => {
    if (req.url !== "/late") return void res.end("fine");
    res.writeHead(200, { "content-type": "text/plain" });
    res.write("partial ");
    await new Promise((r) => setTimeout(r, 20));
    throw new Error("late boom");
  });
  await fetchUntil(web, "https://api.service.consul/ok");
  const res = await fetch("https://api.service.consul/late", { dispatcher: web.dispatcher(), signal: AbortSignal.timeout(10_000) });
  t.equal(res.status, 200, "the head had gone out");
  const body = await res.text().then(
    () => "complete",
    (e: unknown) => (e instanceof Error && e.name === "TimeoutError" ? "hung" : "reset"),
  );
  t.equal(body, "reset", "the body ends in an error, not a hang");
  t.equal(sample(await api.metrics.registry.metrics(), "meshproxy_native_handler_errors_total"), 1, "counted");
});

t.test("client side: an app's undici handler that throws gets its own error back, not an upstream failure", async (t) => {
  const dir = await tempDir(t);
  const api = await service(t, { name: "api", dataDir: dir });
  const web = await service(t, { name: "web", dataDir: dir });
  await serve(t, api);
  await fetchUntil(web, "https://api.service.consul/ok");
  for (const where of ["onResponseStart", "onResponseData"] as const) {
    const outcome = await new Promise<string>((resolve) => {
      const boom = (at: string) => {
        if (at === where) throw new Error(`boom in ${where}`);
      };
      web.dispatcher().dispatch(
        { origin: "https://api.service.consul", path: "/", method: "GET" },
        {
          onRequestStart: () => undefined,
          onResponseStart: () => boom("onResponseStart"),
          onResponseData: () => boom("onResponseData"),
          onResponseEnd: () => resolve("ended"),
          onResponseError: (_c, e) => resolve(`error: ${e.message}`),
        },
      );
    });
    t.equal(outcome, `error: boom in ${where}`, `${where}: the app's exception comes back to it`);
  }
  t.equal(await (await fetch("https://api.service.consul/after", { dispatcher: web.dispatcher() })).text(), "api /after from web", "the client goes on");
});
