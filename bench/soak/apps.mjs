// The soak mesh's apps, all in one process (one process per instance would cost the 2-core
// machine more than the sidecars under test). Each instance listens on its own port and has a
// fault mode the harness sets through a control port that no sidecar ever sees:
//   ok     answer at once
//   hang   hold every request until the mode goes back to ok (the app is slower than its callers)
//   reset  reset the connection on every request (RST, not FIN)
// HTTP instances answer any path with 200 and `x-soak-instance: <name>`; `/slow?ms=N` answers
// after N ms (requests in flight during a drain). TCP instances write `<name>\n` on connect and then
// echo every byte back.
//
//   node apps.mjs '{"http":["api-v1a",...],"tcp":["echo-a",...]}'
// prints {"control":port,"ports":{"api-v1a":port,...}} on stdout when every listener is up.
import { createServer as createHttp } from "node:http";
import { createServer as createTcp } from "node:net";

const spec = JSON.parse(process.argv[2] ?? "{}");
const modes = new Map();
const held = new Map(); // instance → Set of held responses (hang mode)
const ports = {};

function listen(server) {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server.address().port)));
}

function release(name) {
  for (const res of held.get(name) ?? []) if (!res.destroyed) answer(res, name);
  held.get(name)?.clear();
}

function answer(res, name) {
  const body = `${name}\n`;
  res.writeHead(200, { "content-type": "text/plain", "content-length": String(body.length), "x-soak-instance": name });
  res.end(body);
}

for (const name of spec.http ?? []) {
  modes.set(name, "ok");
  held.set(name, new Set());
  const server = createHttp({ keepAliveTimeout: 600_000, requestTimeout: 0, headersTimeout: 0 }, (req, res) => {
    const mode = modes.get(name);
    if (mode === "reset") {
      req.socket.resetAndDestroy();
      return;
    }
    if (mode === "hang") {
      held.get(name).add(res);
      res.once("close", () => held.get(name).delete(res));
      return;
    }
    const slow = req.url?.startsWith("/slow") ? Number(/ms=(\d+)/.exec(req.url)?.[1] ?? 0) : 0;
    req.resume();
    if (slow > 0) setTimeout(() => answer(res, name), slow);
    else answer(res, name);
  });
  server.keepAliveTimeout = 600_000;
  server.on("clientError", (_e, s) => s.destroy());
  ports[name] = await listen(server);
}

for (const name of spec.tcp ?? []) {
  modes.set(name, "ok");
  const sockets = new Set();
  const server = createTcp((s) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
    s.on("error", () => {});
    if (modes.get(name) === "reset") return void s.resetAndDestroy();
    s.write(`${name}\n`);
    s.on("data", (d) => {
      if (modes.get(name) === "reset") s.resetAndDestroy();
      else if (modes.get(name) !== "hang") s.write(d);
    });
  });
  ports[name] = await listen(server);
}

// The control port: POST /mode?instance=X&mode=ok|hang|reset
const control = createHttp((req, res) => {
  const u = new URL(req.url ?? "/", "http://x");
  const name = u.searchParams.get("instance") ?? "";
  const mode = u.searchParams.get("mode") ?? "";
  if (!modes.has(name) || !["ok", "hang", "reset"].includes(mode)) {
    res.writeHead(400).end(`unknown instance or mode: ${name} ${mode}\n`);
    return;
  }
  modes.set(name, mode);
  if (mode === "ok" && held.has(name)) release(name);
  res.writeHead(204).end();
});
const controlPort = await listen(control);
process.stdout.write(JSON.stringify({ control: controlPort, ports }) + "\n");
process.on("SIGTERM", () => process.exit(0));
