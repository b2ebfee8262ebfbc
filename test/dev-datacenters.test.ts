// Several datacenters in one dev state directory: one CA, a catalog per datacenter. The home
// datacenter's catalog stays catalog/ itself, so directories made before keep working.
import t from "tap";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { catalogDir, listDatacenters, openStateDir, parseCatalogEntry, readCatalog, registerInstance, StateError, type CatalogEntry } from "../src/controlplane/dev/state.js";
import { tempDir } from "./helpers/mesh.js";

const entry = (id: string, extra: Partial<CatalogEntry> = {}): CatalogEntry => ({ id, service: "db", address: "127.0.0.1", port: 8443, protocol: "tcp", pid: process.pid, meta: {}, ...extra });

t.test("the home datacenter's catalog is catalog/, another's catalog/<dc>/; each reads only its own", async (t) => {
  const dir = await tempDir(t);
  await openStateDir(dir);
  t.equal(catalogDir(dir, "dc1", "dc1"), join(dir, "catalog"));
  t.equal(catalogDir(dir, "dc2", "dc1"), join(dir, "catalog", "dc2"));
  t.throws(() => catalogDir(dir, "../x", "dc1"), StateError, "a datacenter name cannot leave the catalog");
  await registerInstance(dir, entry("db-1"));
  await registerInstance(dir, entry("db-2"), catalogDir(dir, "dc2", "dc1"));
  await registerInstance(dir, entry("gw-2", { service: "mesh-gateway", kind: "mesh-gateway" }), catalogDir(dir, "dc2", "dc1"));
  t.same((await readCatalog(dir)).entries.map((e) => e.id), ["db-1"], "home: its own entries, the dc2 directory is not an entry");
  t.same((await readCatalog(dir, catalogDir(dir, "dc2", "dc1"))).entries.map((e) => e.id), ["db-2", "gw-2"]);
  t.same(await listDatacenters(dir, "dc1"), ["dc1", "dc2"]);
});

t.test("a catalog entry's kind is mesh-gateway or absent", async (t) => {
  t.equal(parseCatalogEntry(JSON.stringify(entry("g", { kind: "mesh-gateway" })), "f").kind, "mesh-gateway");
  t.equal(parseCatalogEntry(JSON.stringify(entry("s")), "f").kind, undefined);
  t.throws(() => parseCatalogEntry(JSON.stringify({ ...entry("x"), kind: "ingress-gateway" }), "f"), /kind must be "mesh-gateway" or absent/);
  const dir = await tempDir(t);
  await openStateDir(dir);
  await writeFile(join(dir, "catalog", "bad.json"), JSON.stringify({ ...entry("bad"), kind: 7 }));
  const read = await readCatalog(dir);
  t.equal(read.entries.length, 0);
  t.match(read.problems[0]?.message, /kind must be/, "a bad kind is a reported problem, not a sidecar instance");
});
