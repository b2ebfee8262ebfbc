/**
 * A connect deadline that is judged only after the event loop has read its I/O.
 *
 * A timer fires in the timers phase, before the poll phase of the same loop turn. After a stall
 * longer than the deadline (a garbage collection, a storm of full handshakes after a root
 * rotation), a connect the kernel completed during the stall would be failed as a timeout before
 * its event is read, and the caller would answer 503 for an app that was up. So the timer only
 * schedules the check, and the check runs after the next poll (setImmediate's phase), as undici
 * does for its own connect timeout.
 *
 * Returns the function that cancels the deadline (call it when the connect settles either way).
 */
export function connectDeadline(ms: number, pending: () => boolean, expired: () => void): () => void {
  let check: NodeJS.Immediate | null = null;
  const timer = setTimeout(() => {
    check = setImmediate(() => {
      check = null;
      if (pending()) expired();
    });
  }, ms);
  return () => {
    clearTimeout(timer);
    if (check) clearImmediate(check);
  };
}
