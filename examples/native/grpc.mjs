// A native gRPC server and client (@grpc/grpc-js, which the app brings: `npm install @grpc/grpc-js`).
// Messages are JSON so the example needs no .proto file; a generated service works the same way.
import { once } from "node:events";
// In your app: `from "meshproxy"`; the examples run from a checkout without installing it.
import { Service } from "../../dist/index.js";

const json = { serialize: (m) => Buffer.from(JSON.stringify(m)), deserialize: (b) => JSON.parse(b.toString()) };
const Stock = {
  count: {
    path: "/shop.Stock/Count",
    requestStream: false,
    responseStream: false,
    requestSerialize: json.serialize,
    requestDeserialize: json.deserialize,
    responseSerialize: json.serialize,
    responseDeserialize: json.deserialize,
  },
};

/** `name` as a native gRPC server: callers verified, intentions checked per call, the caller named. */
export async function startGrpcServer(grpc, { name, dataDir }) {
  const svc = await Service.create({ name, dataDir });
  const server = new grpc.Server();
  server.addService(Stock, {
    count(call, cb) {
      cb(null, { item: call.request.item, count: 3, for: svc.peerOfCall(call)?.service });
    },
  });
  const listener = svc.grpcListener(grpc, server);
  listener.listen(0, "127.0.0.1");
  await once(listener, "listening");
  const close = async () => {
    server.forceShutdown();
    await new Promise((r) => listener.close(r));
    await svc.close();
  };
  return { svc, port: listener.address().port, close };
}

/** One call from `svc` to the service `name`, resolved through the control plane, with a deadline. */
export function countStock(grpc, svc, name, item) {
  const Client = grpc.makeGenericClientConstructor(Stock, "Stock");
  const client = svc.grpcClient(grpc, Client, name);
  return new Promise((resolve) => {
    client.count({ item }, { deadline: Date.now() + 2000 }, (err, res) => {
      client.close();
      resolve(err ? `failed: ${err.code} ${err.details}` : `OK ${name} has ${res.count} of item ${res.item} for ${res.for}`);
    });
  });
}
