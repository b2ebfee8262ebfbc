// Binding a server and learning where it ended up (port 0 resolved), with a bind failure as a
// rejected promise rather than an 'error' event nobody waits for.
import cluster from "node:cluster";
import type { AddressInfo, Server } from "node:net";

export async function listenOn(server: Server, host: string, port: number): Promise<AddressInfo> {
  await new Promise<void>((resolve, reject) => {
    const onError = (e: Error) => reject(e);
    server.once("error", onError);
    // exclusive: a second sidecar on the same port fails loudly instead of sharing it. A worker
    // of -concurrency N shares instead: its primary holds the one socket and hands each
    // accepted connection to a worker in turn (node:cluster round-robin); the primary's own
    // bind is exclusive, so another sidecar still fails loudly.
    server.listen({ host, port, exclusive: !cluster.isWorker }, () => {
      server.off("error", onError);
      resolve();
    });
  });
  const addr = server.address();
  if (addr === null || typeof addr === "string") throw new Error(`listening on ${host}:${port} gave no TCP address`);
  return addr;
}
