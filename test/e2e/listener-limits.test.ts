// Limits before the TLS handshake: a public listener at -max-connections or -max-tls-handshakes
// closes new connections at once (no TLS work, no waiting for the handshake timeout), counts
// them with Envoy's names, logs once rather than once per connection, and keeps serving the
// connections it already has. Idle connects that never send a ClientHello end at the handshake
// timeout, after which mesh clients are served again.
import t from "tap";
import { connect, type Socket } from "node:net";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { once } from "node:events";
import { echoServer, hostPort, roundTrip, runMeshproxy, startSidecar, tempDir, type Sidecar, type Teardown } from "../helpers/mesh.js";
import { leafFor, readDevCa, tlsExchange, type DevCa } from "../helpers/certs.js";
import { metric } from "../helpers/peers.js";

const PAYLOAD = "through the cap\n";

async function dbSidecar(t: Teardown, flags: string[]): Promise<{ db: Sidecar; ca: DevCa; label: string }> {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  const db = await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`, ...flags]);
  return { db, ca: await readDevCa(dir), label: db.publicAddr!.replace(/:(\d+)$/, "_$1") };
}

/** A TCP connection that never sends a byte; resolves once connected. Destroyed at teardown. */
async function idleConnect(t: Teardown, addr: string): Promise<{ socket: Socket; closed: Promise<number> }> {
  const { host, port } = hostPort(addr);
  const socket = connect({ host, port });
  socket.on("error", () => {}); // a refusal may be a reset
  const closed = new Promise<number>((r) => socket.once("close", () => r(performance.now())));
  t.teardown(() => void socket.destroy());
  await once(socket, "connect");
  return { socket, closed };
}

/** An mTLS connection to the echo app that stays open; `echo` sends a line and waits for it back. */
async function establish(t: Teardown, addr: string, ca: DevCa): Promise<{ socket: TLSSocket; echo: (line: string) => Promise<string> }> {
  const leaf = await leafFor(ca, "web");
  const { host, port } = hostPort(addr);
  const socket = tlsConnect({ host, port, cert: leaf.certPem, key: leaf.keyPem, rejectUnauthorized: false });
  t.teardown(() => void socket.destroy());
  await once(socket, "secureConnect");
  const echo = async (line: string) => {
    let got = "";
    socket.write(line);
    while (got.length < line.length) {
      const [d] = (await once(socket, "data")) as [Buffer];
      got += d.toString();
    }
    return got;
  };
  return { socket, echo };
}

async function served(addr: string, ca: DevCa): Promise<boolean> {
  const r = await tlsExchange(addr, PAYLOAD, await leafFor(ca, "web"));
  return r.data.toString() === PAYLOAD;
}

/** Scrapes until `metricName` reaches `want` (the proxy updates it as sockets close on its side). */
async function metricReaches(s: Sidecar, name: string, labels: Record<string, string>, want: number, timeoutMs = 15_000): Promise<number | null> {
  const deadline = performance.now() + timeoutMs;
  let v: number | null = null;
  while (performance.now() < deadline) {
    v = await metric(s.adminAddr, name, labels);
    if (v === want) return v;
    await new Promise((r) => setImmediate(r));
  }
  return v;
}

t.test("-max-connections 20: 50 idle connects, 20 held and the rest closed at once, counted; mTLS served again after", { timeout: 90_000 }, async (t) => {
  const { db, ca, label } = await dbSidecar(t, ["-max-connections", "20"]);
  const addr = db.publicAddr!;
  const started = await db.waitForLog((l) => l["@message"] === "public listener started");
  t.equal(started["max_connections"], 20, "the listener logs its limit");
  t.equal(await metric(db.adminAddr, "envoy_listener_downstream_cx_overflow", { envoy_listener_address: label }), 0, "envoy_listener_downstream_cx_overflow exists and starts at 0");

  const established = await establish(t, addr, ca);
  t.equal(await established.echo("before\n"), "before\n", "an mTLS connection is established and passes data (1 of the 20)");

  const t0 = performance.now();
  const idle = [];
  for (let i = 0; i < 50; i++) idle.push(await idleConnect(t, addr));
  const closedAt = await Promise.all(idle.map((c) => Promise.race([c.closed, new Promise<null>((r) => setTimeout(() => r(null), 3000))])));
  const refused = closedAt.filter((x) => x !== null);
  t.equal(refused.length, 31, "31 of the 50 idle connects are closed (19 more fit next to the established one)");
  t.ok(Math.max(...refused.map((x) => x - t0)) < 3000, `at once: all within ${Math.round(Math.max(...refused.map((x) => x - t0)))} ms of connecting, not at the 10 s handshake timeout`);
  t.equal(await metric(db.adminAddr, "envoy_listener_downstream_cx_overflow", { envoy_listener_address: label }), 31, "envoy_listener_downstream_cx_overflow counts the 31");
  t.equal(await established.echo("at the cap\n"), "at the cap\n", "the established connection keeps passing data while the listener is full");
  const warnings = db.logs.filter((l) => String(l["@message"]).startsWith("public listener at its connection limit"));
  t.equal(warnings.length, 1, "31 refusals make one log line, not 31");
  t.equal(warnings[0]?.["max_connections"], 20, "naming the limit");
  t.notOk(await served(addr, ca), "a new mesh client is refused while the listener is full");

  const held = idle.filter((_, i) => closedAt[i] === null);
  t.equal(held.length, 19, "19 idle connects are held");
  t.equal(await metric(db.adminAddr, "meshproxy_listener_downstream_tls_handshakes_active", { envoy_listener_address: label }), 19, "each in its TLS handshake");
  for (const c of held.slice(0, 5)) c.socket.destroy();
  t.equal(await metricReaches(db, "meshproxy_listener_downstream_tls_handshakes_active", { envoy_listener_address: label }, 14, 3000), 14, "5 idle connects that hang up free their slots at once, not at the 10 s handshake timeout");
  t.ok(await served(addr, ca), "and a mesh client is served");

  const timedOut = await Promise.all(held.slice(5).map((c) => c.closed));
  t.ok(Math.min(...timedOut) - t0 >= 9_000, "the idle ones still held are closed by the 10 s handshake timeout");
  t.equal(await metricReaches(db, "meshproxy_inbound_rejected_total", { reason: "handshake_timeout" }, 14), 14, "and counted as handshake_timeout");
  t.ok(await served(addr, ca), "a mesh client is served after the idle ones timed out");
  t.equal(await established.echo("after\n"), "after\n", "and the first connection is still there");
  t.equal(db.child.exitCode, null, "db is still running");
});

t.test("-max-tls-handshakes 5: half-open handshakes beyond the cap are refused and counted; established traffic flows", { timeout: 60_000 }, async (t) => {
  const { db, ca, label } = await dbSidecar(t, ["-max-tls-handshakes", "5"]);
  const addr = db.publicAddr!;
  const established = await establish(t, addr, ca);
  const gauge = { envoy_listener_address: label };
  t.equal(await metricReaches(db, "meshproxy_listener_downstream_tls_handshakes_active", gauge, 0), 0, "no handshake in flight once the client is established");

  const idle = [];
  for (let i = 0; i < 20; i++) idle.push(await idleConnect(t, addr));
  const closedAt = await Promise.all(idle.map((c) => Promise.race([c.closed, new Promise<null>((r) => setTimeout(() => r(null), 3000))])));
  t.equal(closedAt.filter((x) => x !== null).length, 15, "15 of 20 half-open handshakes are closed at once");
  t.equal(await metric(db.adminAddr, "envoy_listener_downstream_cx_overload_reject", gauge), 15, "envoy_listener_downstream_cx_overload_reject counts them");
  t.equal(await metric(db.adminAddr, "meshproxy_listener_downstream_tls_handshakes_active", gauge), 5, "5 handshakes are in flight");
  t.equal(await metric(db.adminAddr, "envoy_listener_downstream_cx_overflow", gauge), 0, "none was counted against the connection limit");
  t.equal(await established.echo("during\n"), "during\n", "the established connection keeps passing data at the handshake cap");
  t.equal(db.logs.filter((l) => String(l["@message"]).startsWith("public listener at its TLS handshake limit")).length, 1, "one log line for 15 refusals");

  for (const [i, c] of idle.entries()) if (closedAt[i] === null) c.socket.destroy();
  t.equal(await metricReaches(db, "meshproxy_listener_downstream_tls_handshakes_active", gauge, 0, 3000), 0, "closing them ends their handshakes at once");
  t.ok(await served(addr, ca), "a mesh client is served again");
  t.equal(await metric(db.adminAddr, "envoy_listener_downstream_cx_overload_reject", gauge), 15, "and was not refused");
});

t.test("thousands of idle connects: bounded by the handshake cap; the proxy keeps serving", { timeout: 60_000 }, async (t) => {
  const { db, ca, label } = await dbSidecar(t, ["-max-tls-handshakes", "100"]);
  const addr = db.publicAddr!;
  const idle = [];
  for (let i = 0; i < 2000; i++) idle.push(await idleConnect(t, addr));
  t.equal(await metricReaches(db, "envoy_listener_downstream_cx_overload_reject", { envoy_listener_address: label }, 1900), 1900, "1900 of 2000 refused at accept");
  t.equal(await metric(db.adminAddr, "meshproxy_listener_downstream_tls_handshakes_active", { envoy_listener_address: label }), 100, "100 in flight");
  for (const c of idle) c.socket.destroy();
  t.equal(await metricReaches(db, "meshproxy_listener_downstream_tls_handshakes_active", { envoy_listener_address: label }, 0), 0, "all ended when the clients left");
  t.ok(await served(addr, ca), "a mesh client is served");
  t.equal(db.child.exitCode, null, "db is still running");
});

t.test("-max-connections on an upstream listener: a local app cannot open connections without bound", { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const echo = await echoServer(t);
  await startSidecar(t, dir, ["-service", "db", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${echo.port}`]);
  const web = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0", "-max-connections", "3"]);
  const addr = web.upstreams["db"]!;
  t.equal(await roundTrip(addr, PAYLOAD).then(String), PAYLOAD, "control: the upstream carries bytes to db's app");
  const idle = [];
  for (let i = 0; i < 8; i++) idle.push(await idleConnect(t, addr));
  const closedAt = await Promise.all(idle.map((c) => Promise.race([c.closed, new Promise<null>((r) => setTimeout(() => r(null), 2000))])));
  t.equal(closedAt.filter((x) => x !== null).length, 5, "the 5 over the cap are closed at once; 3 stay piped to db");
  t.equal(await metric(web.adminAddr, "envoy_listener_downstream_cx_overflow", { envoy_listener_address: addr.replace(/:(\d+)$/, "_$1") }), 5, "envoy_listener_downstream_cx_overflow counts them on the upstream listener");
  for (const [i, c] of idle.entries()) if (closedAt[i] === null) c.socket.destroy();
  t.equal(await metricReaches(web, "envoy_listener_downstream_cx_active", { envoy_listener_address: addr.replace(/:(\d+)$/, "_$1") }, 0), 0, "they close");
  t.equal(await roundTrip(addr, PAYLOAD).then(String), PAYLOAD, "and the app is served again");
});

t.test("bad limit flags are usage errors", async (t) => {
  const dir = await tempDir(t);
  for (const [flag, v] of [["-max-connections", "0"], ["-max-connections", "ten"], ["-max-tls-handshakes", "-1"], ["-max-tls-handshakes", "1.5"]] as const) {
    const p = runMeshproxy(t, ["-service", "web", "-data-dir", dir, flag, v]);
    t.equal(await p.exited, 2, `${flag} ${v} exits 2`);
    t.match(p.stderrText(), new RegExp(`${flag} "${v.replace(".", "\\.")}": want a whole number`), "saying what is wrong");
  }
});
