// Helpers for the native library's tests: Services on a temp dev state directory, closed at
// teardown, and HTTPS servers of a Service on 127.0.0.1:0.
import { once } from "node:events";
import { rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Server as HttpsServer } from "node:https";
import { connect as h2connect, createSecureServer, type ClientHttp2Session, type Http2ServerRequest, type Http2ServerResponse } from "node:http2";
import { fetch, type Response } from "undici";
import { Service, createLogger, type ServiceOptions } from "../../src/index.js";
import type { Teardown } from "./mesh.js";

export const quiet = createLogger({ level: "error", write: () => {} });

export async function service(t: Teardown, opts: ServiceOptions): Promise<Service> {
  const svc = await Service.create({ logger: quiet, ...opts });
  t.teardown(() => svc.close());
  return svc;
}

export interface Served {
  readonly server: HttpsServer;
  readonly port: number;
  /** Requests the app's handler saw. */
  readonly seen: Array<{ readonly url: string; readonly peer: string | null; readonly host: string | undefined }>;
}

/**
 * An HTTP/2 app of `svc` (node:http2's secure server, attached) on 127.0.0.1:0, and a session to
 * it as `caller` (a leaf of the dev CA `ca`); both closed at teardown.
 */
export async function serveHttp2(
  t: Teardown,
  svc: Service,
  handler: (req: Http2ServerRequest, res: Http2ServerResponse) => void,
  caller: { readonly certPem: string; readonly keyPem: string },
  ca: { readonly certPem: string },
): Promise<ClientHttp2Session> {
  const server = svc.attach(createSecureServer(svc.serverTLSOptions(), handler));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => new Promise((r) => server.close(r)));
  const session = h2connect(`https://127.0.0.1:${(server.address() as AddressInfo).port}`, { ca: ca.certPem, cert: caller.certPem, key: caller.keyPem, checkServerIdentity: () => undefined });
  t.teardown(() => session.close());
  return session;
}

/** An HTTPS app of `svc` answering `<name> <path> from <caller>`; closed at teardown. */
export async function serve(t: Teardown, svc: Service, handler?: (req: IncomingMessage, res: ServerResponse) => void): Promise<Served> {
  const seen: Served["seen"] = [];
  const server = svc.createServer((req, res) => {
    const peer = svc.peerOf(req);
    seen.push({ url: req.url ?? "", peer: peer?.service ?? null, host: req.headers.host });
    if (handler) return handler(req, res);
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`${svc.name} ${req.url} from ${peer?.service ?? "?"}`);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(
    () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  );
  return { server, port: (server.address() as AddressInfo).port, seen };
}

/** Retries a mesh fetch until it answers `status` (a new instance takes a moment to reach the catalog). */
export async function fetchUntil(svc: Service, url: string, status = 200, timeoutMs = 10_000): Promise<Response> {
  const deadline = Date.now() + timeoutMs;
  let last: string;
  for (;;) {
    try {
      const res = await fetch(url, { dispatcher: svc.dispatcher() });
      if (res.status === status) return res;
      last = `status ${res.status}: ${await res.text()}`;
    } catch (e) {
      last = e instanceof Error ? `${e.message}${e.cause instanceof Error ? `: ${e.cause.message}` : ""}` : String(e);
    }
    if (Date.now() > deadline) throw new Error(`${url} never answered ${status} within ${timeoutMs} ms; last: ${last}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Replaces the dev state directory's intentions.json whole (written aside, then renamed). */
export async function intentions(dir: string, defaultAction: "allow" | "deny", list: unknown[]): Promise<void> {
  const file = join(dir, "intentions.json");
  await writeFile(`${file}.tmp`, JSON.stringify({ default_action: defaultAction, intentions: list }), { mode: 0o644 });
  await rename(`${file}.tmp`, file);
}
