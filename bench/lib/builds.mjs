// Builds the harness runs: a commit of this repository, archived and compiled on its own
// (uncommitted changes and a dist/ being rebuilt elsewhere do not matter), and a snapshot of a
// build's dist/ that the sidecars run from for the whole run.
import { spawnSync } from "node:child_process";
import { mkdir, cp, symlink, copyFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";

/** `git archive REV` of the repository at `root` into `src`, built there with tsc: { src, sha }. */
export async function buildCommit(root, rev, flag, src, log) {
  const git = (gargs, opts = {}) => spawnSync("git", gargs, { cwd: root, encoding: "utf8", ...opts });
  const sha = git(["rev-parse", "--short", "--verify", `${rev}^{commit}`]);
  if (sha.status !== 0) throw new Error(`${flag} ${rev}: not a commit of ${root}: ${sha.stderr.trim()}`);
  const commit = sha.stdout.trim();
  await mkdir(src, { recursive: true });
  const tar = `${src}.tar`;
  if (git(["archive", "-o", tar, commit]).status !== 0) throw new Error(`git archive ${commit} failed`);
  if (spawnSync("tar", ["-xf", tar, "-C", src]).status !== 0) throw new Error("tar -xf of the archived commit failed");
  await symlink(join(root, "node_modules"), join(src, "node_modules"), "dir");
  log(`bench: building meshproxy at commit ${commit} (tsc)`);
  const b = spawnSync(process.execPath, [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", join(src, "tsconfig.json")], { stdio: "inherit" });
  if (b.status !== 0) throw new Error(`building commit ${commit} failed`);
  return { src, sha: commit };
}

/** A copy of `src`'s dist/ and package.json in `dest`, its node_modules linked: what the sidecars run. */
export async function snapshotBuild(root, src, dest) {
  await mkdir(dest, { recursive: true });
  await cp(join(src, "dist"), join(dest, "dist"), { recursive: true });
  await copyFile(join(src, "package.json"), join(dest, "package.json"));
  await symlink(join(existsSync(join(src, "node_modules")) ? src : root, "node_modules"), join(dest, "node_modules"), "dir");
  return dest;
}
