// The connect deadline is judged after the event loop has read its I/O: a connect the kernel
// completed while the loop was stalled past the deadline is not failed as a timeout (the
// rotation-time 503 UF of bench/SOAK.md, "Open"), and a connect still pending is.
import t from "tap";
import { connect, createServer, type AddressInfo } from "node:net";
import { once } from "node:events";
import { connectDeadline } from "../../src/tcp/connect-deadline.js";

/** Blocks the event loop, as a long garbage collection or a storm of handshakes does. */
function stall(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

t.test("a connect completed during a stall longer than the deadline is not failed", async (t) => {
  const server = createServer((s) => s.end());
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => server.close());
  const socket = connect((server.address() as AddressInfo).port, "127.0.0.1");
  t.teardown(() => socket.destroy());
  let expired = false;
  const cancel = connectDeadline(20, () => socket.connecting, () => {
    expired = true;
    socket.destroy(new Error("connect timeout"));
  });
  // The loopback handshake completes in the kernel while the loop is blocked; when it resumes,
  // the timer is long due and runs before the poll that reads the connect.
  stall(200);
  const outcome = await Promise.race([once(socket, "connect").then(() => "connected"), once(socket, "close").then(() => "closed")]);
  cancel();
  t.equal(outcome, "connected");
  t.equal(expired, false, "the deadline saw the connect");
});

t.test("a connect still pending at the deadline expires, once; a cancelled one never", async (t) => {
  let expiries = 0;
  connectDeadline(10, () => true, () => expiries++);
  let cancelledExpiries = 0;
  const cancel = connectDeadline(10, () => true, () => cancelledExpiries++);
  cancel();
  // Cancelled between the timer and its check: the check must not run either. The stall makes
  // both 5 ms timers due in the same timers phase, so the cancel runs after the deadline's timer
  // and before its check on any machine (two timers due a millisecond apart would race on a
  // loaded one).
  let lateCancelled = 0;
  const late = connectDeadline(5, () => true, () => lateCancelled++);
  const cancelledLate = new Promise<void>((resolve) =>
    setTimeout(() => {
      late();
      resolve();
    }, 5),
  );
  stall(20);
  await cancelledLate;
  await new Promise<void>((resolve) => setTimeout(resolve, 50));
  await new Promise<void>((resolve) => setImmediate(resolve));
  t.equal(expiries, 1);
  t.equal(cancelledExpiries, 0);
  t.equal(lateCancelled, 0);
});
