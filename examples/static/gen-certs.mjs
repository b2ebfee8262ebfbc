// Issues a CA root and SPIFFE leaf certificates for the static example, with meshproxy's own
// dev CA code (EC P-256, as Consul's built-in CA makes them).
//
//   node examples/static/gen-certs.mjs [service ...]     (default: web db)
//
// Writes certs/root.pem, certs/root.key and certs/<service>.pem + .key next to this script.
// Run it again while a proxy is running to rotate: the root is kept (certs/root.key), each
// leaf and key is replaced, and the proxy picks the new pair up without a restart.
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRootCa, issueLeaf } from "meshproxy";

// Matches "trust_domain" in proxy.json. Consul uses "<cluster id>.consul".
const trustDomain = "11111111-2222-3333-4444-555555555555.consul";
const datacenter = "dc1";
const leafTtlMs = 72 * 3600 * 1000;

const dir = join(dirname(fileURLToPath(import.meta.url)), "certs");
await mkdir(dir, { recursive: true, mode: 0o700 });

/** Temp file + rename: a proxy watching the directory never reads half a file. */
async function put(name, text, mode) {
  const tmp = join(dir, `.${name}.tmp`);
  await writeFile(tmp, text, { mode });
  await rename(tmp, join(dir, name));
}

let ca;
try {
  ca = { certPem: await readFile(join(dir, "root.pem"), "utf8"), keyPem: await readFile(join(dir, "root.key"), "utf8") };
} catch {
  ca = await createRootCa(trustDomain, { commonName: "meshproxy static example CA" });
  await put("root.key", ca.keyPem, 0o600);
  await put("root.pem", ca.certPem, 0o644);
  console.log(`created ${join(dir, "root.pem")} (trust domain ${trustDomain})`);
}

const services = process.argv.slice(2);
for (const service of services.length > 0 ? services : ["web", "db"]) {
  const spiffeId = `spiffe://${trustDomain}/ns/default/dc/${datacenter}/svc/${service}`;
  const leaf = await issueLeaf(ca, { spiffeId, commonName: service, ttlMs: leafTtlMs });
  await put(`${service}.key`, leaf.keyPem, 0o600);
  await put(`${service}.pem`, leaf.certPem, 0o644);
  console.log(`issued ${join(dir, `${service}.pem`)}: ${spiffeId}, serial ${leaf.serial}, expires ${leaf.notAfter.toISOString()}`);
}
