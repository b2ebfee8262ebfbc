// A Connect-native HTTPS server with nothing but node:https: mTLS with the mesh's certificates,
// the caller's identity checked and authorized by intention before the handler runs, and the
// caller's name on the request.
//
//   MESHPROXY_DATA_DIR=/tmp/mesh node examples/native/server.mjs api 8443
// In your app: `from "meshproxy"`; the examples run from a checkout without installing it.
import { Service } from "../../dist/index.js";

/** Starts service `name` listening on `port` (0: any); resolves with the Service and the server. */
export async function startServer({ name = "api", port = 0, dataDir } = {}) {
  const svc = await Service.create({ name, ...(dataDir ? { dataDir } : {}) });
  const server = svc.createServer((req, res) => {
    const caller = svc.peerOf(req); // verified: { service, spiffeId, namespace, datacenter, … }
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`${name} (node:https) answered ${req.method} ${req.url} for ${caller?.service}`);
  });
  server.listen(port, "127.0.0.1");
  await new Promise((resolve) => server.once("listening", resolve));
  return { svc, server, port: server.address().port };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { svc, server, port } = await startServer({ name: process.argv[2] ?? "api", port: Number(process.argv[3] ?? 0) });
  console.log(`${svc.name} listening on 127.0.0.1:${port} as ${svc.spiffeId}`);
  process.once("SIGINT", () => server.close(() => svc.close()));
}
