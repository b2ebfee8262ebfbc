// The native library on the static control plane: the file says who the service is, whom it
// trusts and which upstreams it has; a native client reaches a native server the file lists, and a
// service the file does not list is refused with what to do (a file cannot grow upstreams).
import t from "tap";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fetch } from "undici";
import { createRootCa } from "../../src/index.js";
import { tempDir } from "../helpers/mesh.js";
import { leafFor, writeLeaf, type DevCa } from "../helpers/certs.js";
import { serve, service } from "../helpers/native.js";

const TD = "11111111-2222-3333-4444-555555555555.consul";

t.test("native services on the static control plane", async (t) => {
  const dir = await tempDir(t);
  const ca: DevCa = { ...(await createRootCa(TD)), trustDomain: TD, datacenter: "dc1" };
  await writeFile(join(dir, "root.pem"), ca.certPem);
  const apiFiles = await writeLeaf(dir, "api", await leafFor(ca, "api"));
  const webFiles = await writeLeaf(dir, "web", await leafFor(ca, "web"));
  const common = { datacenter: "dc1", trust_domain: TD, roots_files: [join(dir, "root.pem")], intentions: { default_action: "allow", intentions: [] } };
  await writeFile(join(dir, "api.json"), JSON.stringify({ ...common, service: "api", identity: { cert_file: apiFiles.cert, key_file: apiFiles.key }, upstreams: [] }));
  const api = await service(t, { name: "api", configFile: join(dir, "api.json") });
  t.equal(api.snapshot.source, "static", "the static control plane was chosen by configFile");
  const served = await serve(t, api);
  await writeFile(
    join(dir, "web.json"),
    JSON.stringify({ ...common, service: "web", identity: { cert_file: webFiles.cert, key_file: webFiles.key }, upstreams: [{ name: "api", bind: "127.0.0.1:0", endpoints: [`127.0.0.1:${served.port}`] }] }),
  );
  const web = await service(t, { name: "web", configFile: join(dir, "web.json") });
  const res = await fetch("https://api.service.consul/static", { dispatcher: web.dispatcher() });
  t.equal(await res.text(), "api /static from web", "web reached api at the endpoint its file lists");
  const err = await fetch("https://db.service.consul/", { dispatcher: web.dispatcher() }).then(
    () => null,
    (e: unknown) => (e instanceof Error ? e.cause : e),
  );
  t.match(String(err), /static control plane serves only the upstreams its configuration lists; add "db" there/, "a service the file does not list is refused with what to do");
  await t.rejects(service(t, { name: "other", configFile: join(dir, "web.json") }), /serves "web", not "other"/, "a name that is not the file's is refused at create");
});
