// Binding a server and learning where it ended up (port 0 resolved), with a bind failure as a
// rejected promise rather than an 'error' event nobody waits for.
import type { AddressInfo, Server } from "node:net";

export async function listenOn(server: Server, host: string, port: number): Promise<AddressInfo> {
  await new Promise<void>((resolve, reject) => {
    const onError = (e: Error) => reject(e);
    server.once("error", onError);
    // exclusive: a second sidecar on the same port fails loudly instead of sharing it.
    server.listen({ host, port, exclusive: true }, () => {
      server.off("error", onError);
      resolve();
    });
  });
  const addr = server.address();
  if (addr === null || typeof addr === "string") throw new Error(`listening on ${host}:${port} gave no TCP address`);
  return addr;
}
