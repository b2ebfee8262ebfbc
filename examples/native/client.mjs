// A Connect-native client: fetch by service name with the Service's dispatcher. The mesh picks
// a healthy instance, opens (and pools) mTLS with this service's certificate, checks that the
// server is the service named, and applies the upstream's routes, retries and timeouts.
//
//   MESHPROXY_DATA_DIR=/tmp/mesh node examples/native/client.mjs web https://api.service.consul/hello
// In your app: `from "meshproxy"`; the examples run from a checkout without installing it.
import { Service } from "../../dist/index.js";

/** GETs `url` as service `svc`; resolves with "<status> <body>" (a refusal is a 503 with its reason). */
export async function get(svc, url) {
  const res = await fetch(url, { dispatcher: svc.dispatcher(), signal: AbortSignal.timeout(5000) });
  const flags = res.headers.get("x-meshproxy-response-flags");
  return `${res.status}${flags ? ` [${flags}]` : ""} ${(await res.text()).trim()}`;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const svc = await Service.create({ name: process.argv[2] ?? "web" });
  try {
    console.log(await get(svc, process.argv[3] ?? "https://api.service.consul/hello"));
  } finally {
    await svc.close();
  }
}
