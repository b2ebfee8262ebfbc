// <dir>/sidecars/<id>.json: every running sidecar of the dev control plane with its admin API
// address, including those without a public listener (which the catalog does not list), so a
// tool reading the mesh's own figures (`meshproxy canary`) can find every caller's metrics.
// Written when the admin API is up, removed on exit; a process that died leaves its file, which
// readers report as stale (its pid is gone, or its address does not answer) and skip.
import { mkdir, readdir, rm, writeFile, rename } from "node:fs/promises";
import { readRegularFile } from "../read-file.js";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import { isValidServiceName } from "../../config/validate.js";
import { parseProcessFields, processAlive, type ProcessRef } from "./process-identity.js";

export interface SidecarRecord extends ProcessRef {
  readonly id: string;
  readonly service: string;
  /** `host:port` of its admin API (a wildcard bind is written as loopback). */
  readonly admin: string;
}

export function sidecarsDir(dataDir: string): string {
  return join(dataDir, "sidecars");
}

/** The id becomes a file name: the same characters as a service name. */
function fileOf(dataDir: string, id: string): string {
  if (!isValidServiceName(id)) throw new Error(`sidecar id ${JSON.stringify(id)} is not a plain name (letters, digits, - _ .)`);
  return join(sidecarsDir(dataDir), `${id}.json`);
}

export async function registerSidecar(dataDir: string, r: SidecarRecord): Promise<void> {
  // This can be the first write to a new state directory: made private (0700) as openStateDir
  // makes it, not 0755 by the recursive mkdir of sidecars/.
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  await mkdir(sidecarsDir(dataDir), { recursive: true, mode: 0o755 });
  const file = fileOf(dataDir, r.id);
  const tmp = `${file}.${process.pid}.${randomUUID().slice(0, 8)}.tmp`;
  await writeFile(tmp, JSON.stringify(r, null, 2) + "\n", { mode: 0o644 });
  await rename(tmp, file);
}

export async function deregisterSidecar(dataDir: string, id: string): Promise<void> {
  await rm(fileOf(dataDir, id), { force: true });
}

function parseRecord(text: string, file: string): SidecarRecord {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${e instanceof Error ? e.message : String(e)})`, { cause: e });
  }
  if (typeof v !== "object" || v === null) throw new Error(`${file}: want an object with id, service, admin, pid`);
  const { id, service, admin, pid } = v as Record<string, unknown>;
  if (typeof id !== "string" || typeof service !== "string" || typeof admin !== "string" || typeof pid !== "number" || !Number.isSafeInteger(pid) || pid < 1) {
    throw new Error(`${file}: want id, service, admin (host:port) as strings and pid as a positive whole number`);
  }
  if (!/^[^\s/]+:\d{1,5}$/.test(admin)) throw new Error(`${file}: admin ${JSON.stringify(admin)} is not host:port`);
  let proc: ReturnType<typeof parseProcessFields>;
  try {
    proc = parseProcessFields(v);
  } catch (e) {
    throw new Error(`${file}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  return { id, service, admin, pid, ...proc };
}

/** Every registered sidecar whose process is alive; files of dead ones and unreadable files are problems. */
export async function listSidecars(dataDir: string): Promise<{ sidecars: SidecarRecord[]; problems: string[] }> {
  let names: string[];
  try {
    names = await readdir(sidecarsDir(dataDir));
  } catch (e) {
    const code = e instanceof Error && "code" in e ? e.code : undefined;
    if (code === "ENOENT") return { sidecars: [], problems: [] };
    return { sidecars: [], problems: [`${sidecarsDir(dataDir)}: cannot be read (${e instanceof Error ? e.message : String(e)})`] };
  }
  const sidecars: SidecarRecord[] = [];
  const problems: string[] = [];
  for (const n of names.sort()) {
    if (!n.endsWith(".json")) continue;
    const file = join(sidecarsDir(dataDir), n);
    try {
      const r = parseRecord(await readRegularFile(file), file);
      if (processAlive(r)) sidecars.push(r);
      else problems.push(`${file}: stale (process ${r.pid} is gone or is another process now); skipped, remove the file`);
    } catch (e) {
      const code = e instanceof Error && "code" in e ? e.code : undefined;
      if (code !== "ENOENT") problems.push(e instanceof Error ? e.message : String(e));
    }
  }
  return { sidecars, problems };
}
