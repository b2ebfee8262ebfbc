// Config-entry parsing on hostile input (each case was found by test/fuzz/config-entries.test.ts
// and crashed, or produced a megabyte message, before): an EntryError naming the field.
import t from "tap";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { EntryError, MAX_ENTRY_DEPTH, parseEntry, parsePermissions } from "../../src/controlplane/chain/entries.js";
import { runMeshproxy, tempDir } from "../helpers/mesh.js";

function entryError(v: unknown): EntryError {
  try {
    parseEntry(v, "entry.json");
  } catch (e) {
    if (e instanceof EntryError) return e;
    throw e;
  }
  throw new Error("parsed");
}

function nested(depth: number): unknown {
  let v: unknown = "x";
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

t.test("a subset or failover written as null is an EntryError naming it (was a TypeError)", async (t) => {
  t.match(entryError({ Kind: "service-resolver", Name: "api", Subsets: { v1: null } }).message, /^entry\.json\.Subsets\.v1: want a JSON object/);
  t.match(entryError({ Kind: "service-resolver", Name: "api", Failover: { "*": 7 } }).message, /^entry\.json\.Failover\.\*: want a JSON object/);
});

t.test("deep nesting is refused up front (was a RangeError from JSON.stringify)", async (t) => {
  t.match(entryError({ Kind: nested(100_000), Name: "x" }).message, /nested more than 32 levels deep/, "in a field that is read");
  t.match(entryError({ Kind: "service-defaults", Name: "api", Junk: nested(100_000) }).message, /nested more than 32 levels deep/, "in a field that is not");
  t.doesNotThrow(() => parseEntry({ Kind: "service-defaults", Name: "api", Meta: nested(MAX_ENTRY_DEPTH - 2) }, "entry.json"), "up to the limit is fine");
  t.throws(() => parsePermissions([{ Action: "allow", HTTP: { Header: nested(100_000) } }], "p"), EntryError, "permissions too");
});

t.test("a huge bad value is quoted in part", async (t) => {
  const e = entryError({ Kind: "service-defaults", Name: "api", Protocol: "h".repeat(1_000_000) });
  t.ok(e.message.length < 300, `a ${e.message.length}-character message`);
  t.match(e.message, /^entry\.json\.Protocol: "h+…" is not one of tcp/);
  t.ok(entryError({ Kind: "service-resolver", Name: "api", Subsets: { ["k".repeat(1_000_000)]: 1 } }).message.length < 300, "and a huge key");
});

t.test("keys that name Object.prototype members are plain keys", async (t) => {
  const e = parseEntry({ Kind: "service-resolver", Name: "api", Subsets: { constructor: { Filter: "Service.Meta.v == x" }, toString: {} } }, "entry.json");
  t.same(e.kind === "service-resolver" ? Object.keys(e.subsets) : [], ["constructor", "toString"]);
  t.equal(entryError({ Kind: "service-router", Name: "api", constructor: 1, Routes: [{ Destination: { NumRetries: "x" } }] }).message, 'entry.json.Routes[0].Destination.NumRetries: want a non-negative number, got "x"');
});

t.test("meshproxy config write: a deeply nested file is refused with a message, not a stack trace", async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, "deep.json");
  await writeFile(file, `{"Kind":"service-defaults","Name":"api","Junk":${"[".repeat(100_000)}1${"]".repeat(100_000)}}`);
  const p = runMeshproxy(t, ["config", "write", file, "-data-dir", dir]);
  t.equal(await p.exited, 1, "exits 1");
  t.equal(p.stderrText().trim(), `meshproxy: ${file}: nested more than 32 levels deep; no config entry is`, "says what is wrong");
});
