// Deliberately ignored rejections. eslint refuses `.catch(() => {})`: in a proxy a swallowed
// rejection is a silent failure. A test that truly does not care about one (a promise settled
// during teardown, one whose outcome the test checks another way) says why at the call site:
//
//   await done.catch(ignoreRejection("killed at teardown: how it ended no longer matters"));

/**
 * A rejection handler that ignores the rejection. `reason` documents, at the call site, why the
 * rejection cannot matter; with MESHPROXY_TEST_DEBUG set it is printed with the rejection, for
 * when a test misbehaves and an ignored rejection is a suspect.
 */
export function ignoreRejection(reason: string): (e: unknown) => void {
  return (e: unknown) => {
    if (process.env["MESHPROXY_TEST_DEBUG"]) console.error(`ignored rejection (${reason}):`, e);
  };
}
