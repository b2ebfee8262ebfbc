// A Connect-native Express app: Express is only the request handler; the Service's server does
// the mTLS and the intention checks, and `svc.peerOf(req)` names the caller in any route.
// Needs express (`npm install` in this directory); run.mjs uses it when it is installed.
//
//   cd examples/native && npm install && MESHPROXY_DATA_DIR=/tmp/mesh node express-server.mjs orders 8444
// In your app: `from "meshproxy"`; the examples run from a checkout without installing it.
import { Service } from "../../dist/index.js";

export async function startExpressServer({ name = "orders", port = 0, dataDir } = {}) {
  const { default: express } = await import("express");
  const svc = await Service.create({ name, ...(dataDir ? { dataDir } : {}) });
  const app = express();
  app.get("/orders/:id", (req, res) => {
    res.type("text/plain").send(`${name} (express) answered order ${req.params.id} for ${svc.peerOf(req)?.service}`);
  });
  const server = svc.createServer(app);
  server.listen(port, "127.0.0.1");
  await new Promise((resolve) => server.once("listening", resolve));
  return { svc, server, port: server.address().port };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { svc, server, port } = await startExpressServer({ name: process.argv[2] ?? "orders", port: Number(process.argv[3] ?? 0) });
  console.log(`${svc.name} (express) listening on 127.0.0.1:${port} as ${svc.spiffeId}`);
  process.once("SIGINT", () => server.close(() => svc.close()));
}
