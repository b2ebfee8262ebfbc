// How a CLI command on the dev state directory ends when the directory says no: one line on
// stderr and the exit code (2 for a directory that is not private, 1 for a bad file or a lock).
import { StateError } from "../controlplane/dev/state.js";
import { UnsafeStateDirError } from "../controlplane/dev/permissions.js";
import { LockError } from "../controlplane/dev/lock.js";

/** The exit code for a state-directory refusal; anything else (a bug) is rethrown. */
export function stateRefusal(e: unknown): number {
  if (e instanceof UnsafeStateDirError) {
    process.stderr.write(`meshproxy: ${e.message}\n`);
    return 2;
  }
  if (e instanceof StateError || e instanceof LockError) {
    process.stderr.write(`meshproxy: ${e.message}\n`);
    return 1;
  }
  throw e;
}
