// Port 0 under -concurrency N. Every worker must listen on the same port, and a worker started
// later (a restart) must find the same one; node:cluster shares a port-0 listen between workers
// only by the order of their listen calls, which a restarted worker does not repeat. So the
// primary chooses: it asks the OS for a free port once per listener, and every Snapshot it relays
// names that port. The port is free between the primary's probe and the first worker's bind for
// a moment only; if another process takes it then, the bind fails loudly (a port in use).
import { createServer } from "node:net";
import type { HostPort, Snapshot } from "../config/snapshot.js";
import { listenOn } from "../tcp/listen.js";

async function freePort(host: string): Promise<number> {
  const probe = createServer();
  const a = await listenOn(probe, host, 0);
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return a.port;
}

export class PortChoices {
  /** `<listener>|<host>` → the port chosen for it; kept while the listener asks for port 0 there. */
  private readonly chosen = new Map<string, number>();

  private async resolve(listener: string, bind: HostPort): Promise<HostPort> {
    if (bind.port !== 0) return bind;
    const key = `${listener}|${bind.host}`;
    let port = this.chosen.get(key);
    if (port === undefined) {
      port = await freePort(bind.host);
      this.chosen.set(key, port);
    }
    return { host: bind.host, port };
  }

  /** The Snapshot with every port-0 listener given its chosen port; the same value when none is 0. */
  async apply(s: Snapshot): Promise<Snapshot> {
    const pl = s.publicListener;
    const anyZero = pl?.bind.port === 0 || s.upstreams.some((u) => u.bind.port === 0);
    if (!anyZero) return s;
    const publicListener = pl ? { ...pl, bind: await this.resolve("public", pl.bind) } : null;
    const upstreams = [];
    for (const u of s.upstreams) upstreams.push({ ...u, bind: await this.resolve(`upstream:${u.name}`, u.bind) });
    return { ...s, publicListener, upstreams };
  }
}
