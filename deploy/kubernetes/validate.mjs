// Offline schema check of the Kubernetes manifests: every document is validated against the
// OpenAPI schema of its kind from the npm package kubernetes-models (no cluster needed; kubectl's
// client-side validation downloads the schema from an API server). Not a dependency of meshproxy:
// .ci/run installs kubernetes-models and yaml into a scratch directory and passes it here.
//
// usage: node deploy/kubernetes/validate.mjs MODULES_DIR manifest.yaml...
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [modulesDir, ...files] = process.argv.slice(2);
if (!modulesDir || files.length === 0) {
  console.error("usage: node deploy/kubernetes/validate.mjs MODULES_DIR manifest.yaml...");
  process.exit(2);
}
// The packages are ESM-only, so they are imported by file from the scratch directory.
const pkg = (p) => import(pathToFileURL(join(resolve(modulesDir), "node_modules", p)).href);
const YAML = await pkg("yaml/dist/index.js");
const models = { v1: await pkg("kubernetes-models/v1/index.js"), "apps/v1": await pkg("kubernetes-models/apps/v1/index.js") };

let failed = 0;
for (const file of files) {
  const docs = YAML.parseAllDocuments(await readFile(file, "utf8"));
  for (const doc of docs) {
    if (doc.errors.length > 0) {
      console.error(`${file}: not YAML: ${doc.errors[0].message}`);
      failed++;
      continue;
    }
    const obj = doc.toJS();
    const Model = models[obj.apiVersion]?.[obj.kind];
    if (!Model) {
      console.error(`${file}: ${obj.apiVersion} ${obj.kind}: no schema here to check it against`);
      failed++;
      continue;
    }
    try {
      new Model(obj).validate();
      console.log(`${file}: ${obj.kind} ${obj.metadata?.name}: valid ${obj.apiVersion} ${obj.kind}`);
    } catch (e) {
      console.error(`${file}: ${obj.kind} ${obj.metadata?.name}: ${e instanceof Error ? e.message : String(e)}`);
      failed++;
    }
  }
}
process.exit(failed === 0 ? 0 : 1);
