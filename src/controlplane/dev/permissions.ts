// The state directory decides whom the mesh trusts (the CA) and what it allows (intentions,
// config entries): whoever can write it owns the mesh. So, as ssh does for ~/.ssh and its keys,
// the dev control plane refuses a directory another user owns or that group or others may write,
// and a CA private key that group or others may read. It refuses rather than fixing the modes
// itself: a directory set up that way may be shared on purpose, and the operator should decide.
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { ControlPlaneError } from "../controlplane.js";

/** A state directory or file that is not private to its owner: the path, what is wrong, the command that fixes it. */
export class UnsafeStateDirError extends ControlPlaneError {
  constructor(
    readonly path: string,
    readonly problem: string,
    readonly fix: string,
  ) {
    super("data-dir", `${path}: ${problem}; ${fix}`, true);
    this.name = "UnsafeStateDirError";
  }
}

type Kind = "dir" | "file" | "key";

/** The paths checked, in the order a reader meets them; missing ones are skipped. */
function checkedPaths(dir: string, entryKinds: readonly string[]): Array<[string, Kind]> {
  const ca = join(dir, "ca");
  return [
    [dir, "dir"],
    [ca, "dir"],
    [join(ca, "root.key"), "key"],
    [join(ca, "roots.json"), "key"],
    [join(ca, "root.pem"), "file"],
    [join(ca, "config.json"), "file"],
    [join(dir, "intentions.json"), "file"],
    [join(dir, "catalog"), "dir"],
    [join(dir, "config"), "dir"],
    ...entryKinds.map((k): [string, Kind] => [join(dir, "config", k), "dir"]),
  ];
}

/** A path as a shell word, so the printed command can be pasted. */
function shellWord(p: string): string {
  return /^[\w@%+=:,./-]+$/.test(p) ? p : `'${p.replace(/'/g, `'\\''`)}'`;
}

function who(bits: number, mask: number): string {
  const g = (bits & mask & 0o070) !== 0;
  const o = (bits & mask & 0o007) !== 0;
  return g && o ? "group and others" : g ? "its group" : "others";
}

function octal(mode: number): string {
  return `0${(mode & 0o777).toString(8).padStart(3, "0")}`;
}

/**
 * Throws UnsafeStateDirError for the first path in the state directory that is not private:
 * owned by a user other than this process's (or root), writable by group or others, or (the CA
 * key) readable by them. Does nothing where there are no POSIX owners (Windows).
 */
export async function checkStateDir(dir: string, entryKinds: readonly string[]): Promise<void> {
  const euid = process.geteuid?.();
  if (euid === undefined) return;
  for (const [path, kind] of checkedPaths(dir, entryKinds)) {
    let st;
    try {
      st = await stat(path);
    } catch (e) {
      if (e instanceof Error && "code" in e && e.code === "ENOENT") continue;
      throw new UnsafeStateDirError(path, `cannot be checked (${e instanceof Error ? e.message : String(e)})`, "make it readable by the user running meshproxy, or choose another -data-dir");
    }
    const word = shellWord(path);
    if (kind === "dir" && !st.isDirectory()) throw new UnsafeStateDirError(path, "not a directory", `move it away, or choose another -data-dir`);
    if (kind !== "dir" && !st.isFile()) throw new UnsafeStateDirError(path, "not a regular file", `move it away, or choose another -data-dir`);
    if (st.uid !== euid && st.uid !== 0) {
      throw new UnsafeStateDirError(
        path,
        `owned by uid ${st.uid}, not by the user running meshproxy (uid ${euid}), so that user decides whom this mesh trusts and allows`,
        `run "chown ${kind === "dir" ? "-R " : ""}${euid} ${word}" (as root), or choose a -data-dir of your own`,
      );
    }
    if (kind === "key" && (st.mode & 0o077) !== 0) {
      throw new UnsafeStateDirError(path, `the CA private key is readable by ${who(st.mode, 0o077)} (mode ${octal(st.mode)}), so they could issue certificates for any service`, `run "chmod 600 ${word}"`);
    }
    if ((st.mode & 0o022) !== 0) {
      throw new UnsafeStateDirError(path, `writable by ${who(st.mode, 0o022)} (mode ${octal(st.mode)}), so they could change whom this mesh trusts and allows`, `run "chmod go-w ${word}"`);
    }
  }
}
