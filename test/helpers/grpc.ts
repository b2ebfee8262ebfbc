// gRPC for the native library's tests: a generic service with JSON messages (no .proto files),
// served by a native Service's grpcListener or by a plain grpc-js server, and calls with
// deadlines so a test never hangs on one.
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import type { Server as TlsServer } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import type { Service } from "../../src/index.js";
import type { Teardown } from "./mesh.js";

export interface Msg {
  readonly text: string;
}

function parse(b: Buffer): Msg {
  const v: unknown = JSON.parse(b.toString());
  if (typeof v === "object" && v !== null && "text" in v && typeof v.text === "string") return { text: v.text };
  throw new Error(`not a message: ${b.toString().slice(0, 100)}`);
}

const serialize = (m: Msg): Buffer => Buffer.from(JSON.stringify(m));

function method(path: string, responseStream: boolean): grpc.MethodDefinition<Msg, Msg> {
  return { path, requestStream: false, responseStream, requestSerialize: serialize, requestDeserialize: parse, responseSerialize: serialize, responseDeserialize: parse };
}

export const SAY = "/mesh.test.Echo/Say";
export const COUNT = "/mesh.test.Echo/Count";
export const RESET = "/mesh.test.Admin/Reset";
/** Always fails with NOT_FOUND, before any response message: grpc-js answers trailers-only. */
export const FAIL = "/mesh.test.Echo/Fail";

export const ECHO: grpc.ServiceDefinition = { Say: method(SAY, false), Count: method(COUNT, true), Reset: method(RESET, false), Fail: method(FAIL, false) };

export interface Calls {
  /** `<path> from <caller>` for each call a handler ran. */
  readonly seen: string[];
}

/** The service's handlers: Say answers `<name> says <text> to <caller>`, Count streams `<text> 1..3`. */
export function echoImplementation(name: string, seen: string[], caller: (call: { readonly metadata?: unknown }) => string | null): grpc.UntypedServiceImplementation {
  const say = (call: grpc.ServerUnaryCall<Msg, Msg>, cb: grpc.sendUnaryData<Msg>): void => {
    const who = caller(call);
    seen.push(`${call.getPath()} from ${who ?? "?"}`);
    cb(null, { text: `${name} says ${call.request.text} to ${who ?? "?"}` });
  };
  const count = (call: grpc.ServerWritableStream<Msg, Msg>): void => {
    seen.push(`${call.getPath()} from ${caller(call) ?? "?"}`);
    for (let i = 1; i <= 3; i++) call.write({ text: `${call.request.text} ${i}` });
    call.end();
  };
  const fail = (call: grpc.ServerUnaryCall<Msg, Msg>, cb: grpc.sendUnaryData<Msg>): void => {
    seen.push(`${call.getPath()} from ${caller(call) ?? "?"}`);
    cb({ code: grpc.status.NOT_FOUND, details: `no row ${call.request.text}` });
  };
  return { Say: say, Count: count, Reset: say, Fail: fail };
}

export interface NativeGrpc extends Calls {
  readonly server: grpc.Server;
  readonly listener: TlsServer;
  readonly port: number;
}

/** A native gRPC server of `svc` on 127.0.0.1:0; shut down at teardown. */
export async function serveGrpc(t: Teardown, svc: Service): Promise<NativeGrpc> {
  const seen: string[] = [];
  const server = new grpc.Server();
  server.addService(ECHO, echoImplementation(svc.name, seen, (call) => svc.peerOfCall(call)?.service ?? null));
  const listener = svc.grpcListener(grpc, server);
  listener.listen(0, "127.0.0.1");
  await once(listener, "listening");
  t.teardown(() => {
    server.forceShutdown();
    return new Promise<void>((r) => listener.close(() => r()));
  });
  return { server, listener, port: (listener.address() as AddressInfo).port, seen };
}

/** A grpc-js server without the mesh (h2c on 127.0.0.1:0), as an app behind a sidecar runs it. */
export async function servePlainGrpc(t: Teardown, name: string): Promise<Calls & { readonly port: number }> {
  const seen: string[] = [];
  const server = new grpc.Server();
  server.addService(ECHO, echoImplementation(name, seen, () => null));
  const port = await new Promise<number>((resolve, reject) => server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  t.teardown(() => server.forceShutdown());
  return { port, seen };
}

const deadline = (ms: number) => ({ deadline: Date.now() + ms });

export function unary(client: grpc.Client, path: string, text: string, timeoutMs = 10_000): Promise<Msg> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(path, serialize, parse, { text }, new grpc.Metadata(), deadline(timeoutMs), (err, res) => (err ? reject(err) : res ? resolve(res) : reject(new Error("no response"))));
  });
}

export function serverStream(client: grpc.Client, path: string, text: string, timeoutMs = 10_000): Promise<Msg[]> {
  return new Promise((resolve, reject) => {
    const out: Msg[] = [];
    const call = client.makeServerStreamRequest(path, serialize, parse, { text }, new grpc.Metadata(), deadline(timeoutMs));
    call.on("data", (m: Msg) => out.push(m));
    call.on("error", reject);
    call.on("end", () => resolve(out));
  });
}

/** The gRPC status of a failed call, or OK. */
export async function statusOf(p: Promise<unknown>): Promise<{ code: grpc.status; details: string }> {
  try {
    await p;
    return { code: grpc.status.OK, details: "" };
  } catch (e) {
    if (typeof e === "object" && e !== null && "code" in e && typeof e.code === "number" && "details" in e && typeof e.details === "string") {
      const code = Object.values(grpc.status).find((c) => c === e.code);
      if (typeof code === "number") return { code, details: e.details };
    }
    throw e;
  }
}

/** Retries a unary call until it succeeds (a new instance takes a moment to reach the catalog). */
export async function unaryUntil(client: grpc.Client, path: string, text: string, timeoutMs = 15_000): Promise<Msg> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await unary(client, path, text, 2_000);
    } catch (e) {
      if (Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

export { grpc };
