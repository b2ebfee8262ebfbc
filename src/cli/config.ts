// `meshproxy config write|read|list|delete`, mirroring `consul config`, against the dev control
// plane's config entries. Running proxies pick changes up within about a second. Each entry is
// its own file, written whole (temp file + rename): nothing is read-modify-written, so
// concurrent commands need no lock (the last write of one entry wins, as in Consul without -cas).
import { readFile } from "node:fs/promises";
import { ENTRY_KINDS, EntryError, type EntryKind } from "../controlplane/chain/entries.js";
import { deleteEntry, entryFile, openStateDir, readEntries, writeEntry } from "../controlplane/dev/state.js";
import { isValidServiceName } from "../config/validate.js";
import { UsageError } from "./args.js";
import { stateRefusal } from "./state-command.js";

function kindOf(k: string | undefined): EntryKind {
  const found = ENTRY_KINDS.find((x) => x === k);
  if (!found) throw new UsageError(`-kind "${k ?? ""}": want one of ${ENTRY_KINDS.join(", ")}`);
  return found;
}

async function readInput(file: string): Promise<string> {
  if (file !== "-") return readFile(file, "utf8");
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

/** -name becomes part of a path: only a service name (no `/`, no `..`) is accepted. */
function nameOf(n: string | undefined): string {
  if (n === undefined || !isValidServiceName(n)) throw new UsageError(`-name "${n ?? ""}": want a config entry name (letters, digits, - _ .)`);
  return n;
}

export async function runConfig(
  action: "write" | "read" | "list" | "delete",
  a: { file?: string; kind?: string; name?: string; dataDir: string },
  out = (s: string) => void process.stdout.write(s),
): Promise<number> {
  if (action === "read" || action === "delete") {
    kindOf(a.kind);
    nameOf(a.name);
  } else if (action === "list" && a.kind !== undefined) kindOf(a.kind);
  try {
    await openStateDir(a.dataDir);
    return await act(action, a, out);
  } catch (e) {
    return stateRefusal(e);
  }
}

async function act(action: "write" | "read" | "list" | "delete", a: { file?: string; kind?: string; name?: string; dataDir: string }, out: (s: string) => void): Promise<number> {
  const fail = (msg: string) => {
    process.stderr.write(`meshproxy: ${msg}\n`);
    return 1;
  };
  switch (action) {
    case "write": {
      const file = a.file ?? "-";
      let text: string;
      try {
        text = await readInput(file);
      } catch (e) {
        return fail(`${file}: ${(e as Error).message}`);
      }
      let raw: unknown;
      try {
        raw = JSON.parse(text);
      } catch (e) {
        return fail(`${file}: not valid JSON (${(e as Error).message})`);
      }
      try {
        const e = await writeEntry(a.dataDir, raw, file);
        out(`Config entry written: ${e.kind}/${e.name}\n`);
        return 0;
      } catch (e) {
        if (e instanceof EntryError) return fail(e.message);
        throw e;
      }
    }
    case "read": {
      const kind = kindOf(a.kind);
      const name = nameOf(a.name);
      try {
        out(await readFile(entryFile(a.dataDir, kind, name), "utf8"));
        return 0;
      } catch {
        return fail(`config entry not found for "${kind}" / "${name}"`);
      }
    }
    case "list": {
      const kind = a.kind === undefined ? undefined : kindOf(a.kind);
      const { entries, problems } = await readEntries(a.dataDir);
      for (const e of entries) if (!kind || e.kind === kind) out(`${e.kind}/${e.name}\n`);
      for (const p of problems) process.stderr.write(`meshproxy: ${p.message}\n`);
      return problems.length > 0 ? 1 : 0;
    }
    case "delete": {
      const kind = kindOf(a.kind);
      const name = nameOf(a.name);
      if (!(await deleteEntry(a.dataDir, kind, name))) return fail(`config entry not found for "${kind}" / "${name}"`);
      out(`Config entry deleted: ${kind}/${name}\n`);
      return 0;
    }
  }
}
