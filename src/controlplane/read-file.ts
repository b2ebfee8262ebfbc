// Reading a control plane's own files (the static config and its PEM files, the dev state
// directory) so that a bad file is an error, never a wait. Only a regular file is read: a FIFO
// put in a file's place would block the read (and a thread of libuv's pool) until a writer came,
// freezing every later reload, and the shutdown that waits for one; a device such as /dev/zero
// would never end. The file is opened non-blocking and checked on the open handle, so one
// renamed over between a check and the read cannot slip past it.
import { constants } from "node:fs";
import { open } from "node:fs/promises";

/** The largest file read (bytes), as the Consul control plane bounds an agent's answer. */
export const MAX_CONTROL_PLANE_FILE_BYTES = 64 * 1024 * 1024;

/** A path that names a directory (EISDIR), something else that is not a regular file (EFTYPE), or a file past the bound (EFBIG). */
export class NotAFileError extends Error {
  constructor(
    readonly code: "EFTYPE" | "EFBIG" | "EISDIR",
    message: string,
  ) {
    super(message);
    this.name = "NotAFileError";
  }
}

/** The file's text (UTF-8); fs errors (ENOENT, EACCES, ...) are thrown as they come, other refusals as NotAFileError. */
export async function readRegularFile(path: string, maxBytes = MAX_CONTROL_PLANE_FILE_BYTES): Promise<string> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = await fh.stat();
    if (st.isDirectory()) throw new NotAFileError("EISDIR", "EISDIR: a directory; name the file in it");
    if (!st.isFile()) throw new NotAFileError("EFTYPE", `not a regular file (${st.isFIFO() ? "a FIFO" : st.isSocket() ? "a socket" : "a device"}); name a file`);
    if (st.size > maxBytes) throw new NotAFileError("EFBIG", `${st.size} bytes, larger than ${maxBytes}; is it the right file?`);
    // Read to the end, not to the size stat gave: the file may grow while it is read (within the bound).
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const want = Math.min(Math.max(st.size - total, 0) + 1, 1024 * 1024);
      const { bytesRead, buffer } = await fh.read(Buffer.alloc(want), 0, want, null);
      if (bytesRead === 0) break;
      total += bytesRead;
      if (total > maxBytes) throw new NotAFileError("EFBIG", `larger than ${maxBytes} bytes; is it the right file?`);
      chunks.push(buffer.subarray(0, bytesRead));
    }
    return Buffer.concat(chunks, total).toString("utf8");
  } finally {
    await fh.close();
  }
}
