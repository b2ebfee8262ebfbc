// The default limits follow the file-descriptor limit (two descriptors per proxied connection,
// 256 kept back, at most Envoy's 50000), and a handshake cap never exceeds the connection cap.
import t from "tap";
import { listenerLimits, fileDescriptorLimit } from "../../src/tcp/admission.js";

t.test("defaults from the file-descriptor limit", async (t) => {
  t.same(listenerLimits({}, 20_000), { maxConnections: 9_872, maxTlsHandshakes: 1_024 }, "ulimit -n 20000: (20000 - 256) / 2");
  t.same(listenerLimits({}, 1_048_576), { maxConnections: 50_000, maxTlsHandshakes: 1_024 }, "a container's 1048576: Envoy's 50000 ceiling");
  t.same(listenerLimits({}, 1_024), { maxConnections: 384, maxTlsHandshakes: 384 }, "the traditional 1024: 384, handshakes capped by connections");
  t.same(listenerLimits({}, null), listenerLimits({}, 1_024), "an unknown limit is taken as 1024");
  t.same(listenerLimits({}, 100), { maxConnections: 1, maxTlsHandshakes: 1 }, "never below one");
});

t.test("given limits win; handshakes stay within connections", async (t) => {
  t.same(listenerLimits({ maxConnections: 20 }, 20_000), { maxConnections: 20, maxTlsHandshakes: 20 });
  t.same(listenerLimits({ maxTlsHandshakes: 5 }, 20_000), { maxConnections: 9_872, maxTlsHandshakes: 5 });
  t.same(listenerLimits({ maxConnections: 100_000, maxTlsHandshakes: 4_000 }, 20_000), { maxConnections: 100_000, maxTlsHandshakes: 4_000 }, "an operator may go past the default");
});

t.test("this machine's limit is read from /proc", async (t) => {
  const fds = fileDescriptorLimit();
  t.ok(fds === null || (Number.isSafeInteger(fds) && fds > 0), `read ${fds}`);
});
