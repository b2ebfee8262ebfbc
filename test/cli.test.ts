// The command line as a user meets it: each bad flag is one line on stderr and exit 2, help is
// exit 0, both dash styles work, and a taken address names the flag that chose it (exit 1).
import t from "tap";
import { existsSync, readFileSync } from "node:fs";
import { readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { runMeshproxy, startSidecar, tempDir, type LogLine } from "./helpers/mesh.js";
import { occupyPort } from "./helpers/peers.js";

// Whatever the caller's shell has set must not change what these flags mean.
const CLEAN_ENV = { CONNECT_PROXY_ID: "", CONNECT_SIDECAR_FOR: "", MESHPROXY_DATA_DIR: "" };

t.test("every bad flag: one line on stderr naming it, exit 2, nothing started", async (t) => {
  const dir = await tempDir(t);
  const state = join(dir, "state"); // must not be created by a run that never starts
  const cases: Array<{ args: string[]; message: RegExp }> = [
    { args: ["-service", "web", "-upstream", "db"], message: /^meshproxy: -upstream "db": want name:port or name:host:port, e\.g\. db:8181$/ },
    { args: ["-service", "web", "-upstream", "db:70000"], message: /^meshproxy: -upstream "db:70000": port 70000 is out of range \(0-65535\)$/ },
    // Consul's built-in proxy reads the part after the first dot as a type: service or query.
    { args: ["-service", "web", "-upstream", "db.foo:8181"], message: /^meshproxy: -upstream "db\.foo:8181": "db\.foo" is not a destination Consul accepts \(type "\.foo"\); want <name>, <name>\.service or <name>\.service\.<dc>, e\.g\. db\.service:8181$/ },
    { args: ["-service", "web", "-upstream", "my.db.service:8181"], message: /^meshproxy: -upstream "my\.db\.service:8181": "my\.db\.service" is not a destination Consul accepts \(type "\.db\.service"\); want <name>, .*$/ },
    { args: ["-service", "web", "-upstream", "db.service.dc2.consul:8181"], message: /^meshproxy: -upstream "db\.service\.dc2\.consul:8181": .* \(type "\.service\.dc2\.consul"\); want <name>, .*$/ },
    { args: ["-service", "web", "-upstream", "db.query:8181"], message: /^meshproxy: -upstream "db\.query:8181": prepared queries \(\.query\) are not resolved by meshproxy \(Consul's built-in proxy executes them with \/v1\/query\/<name>\/execute\); name the service instead, e\.g\. db:8181$/ },
    { args: ["-service", "web", "-listen", "127.0.0.1:1"], message: /^meshproxy: -listen requires -service-addr\b.*$/ },
    { args: ["-service", "web", "-bogus"], message: /^meshproxy: unknown flag -bogus \(run meshproxy -h for the list\)$/ },
    { args: ["-upstream", "db:0"], message: /^meshproxy: -service or -proxy-id must be specified\b.*$/ },
    { args: ["-service", "web", "-log-level", "loud"], message: /^meshproxy: -log-level "loud": want trace, debug, info, warn or error$/ },
    { args: ["-service", "web", "-concurrency", "two"], message: /^meshproxy: -concurrency "two": want a whole number of workers from 1 to 256, or 0 or auto for one per CPU$/ },
    { args: ["-service", "web", "-concurrency", "-1"], message: /^meshproxy: -concurrency "-1": want a whole number of workers\b.*$/ },
    { args: ["-service", "web", "-concurrency", "1000"], message: /^meshproxy: -concurrency "1000": want a whole number of workers from 1 to 256\b.*$/ },
  ];
  // In parallel: each is its own process and none binds anything.
  const runs = cases.map((c) => {
    const p = runMeshproxy(t, [...c.args, "-data-dir", state, "-admin-addr", "127.0.0.1:0"], CLEAN_ENV);
    return p.exited.then((code) => ({ ...c, code, stderr: p.stderrText(), stdout: p.stdoutText(), logs: p.logs.length }));
  });
  for (const r of await Promise.all(runs)) {
    const name = r.args.join(" ");
    t.equal(r.code, 2, `${name}: exit 2`);
    const lines = r.stderr.split("\n").filter((l) => l !== "");
    t.equal(lines.length, 1, `${name}: exactly one line on stderr`);
    t.match(lines[0], r.message, `${name}: ${lines[0]}`);
    t.equal(r.stdout, "", `${name}: nothing on stdout`);
    t.equal(r.logs, 0, `${name}: no log lines (nothing started)`);
  }
  t.notOk(existsSync(state), "no run created the data directory");
});

t.test("-h and --help print usage and exit 0", async (t) => {
  for (const flag of ["-h", "--help"]) {
    const p = runMeshproxy(t, [flag]);
    t.equal(await p.exited, 0, `${flag}: exit 0`);
    t.match(p.stdoutText(), /^Usage: meshproxy -service <name>/, `${flag}: usage first`);
    t.match(p.stdoutText(), /--service <name>\s+name of the service this proxy represents/, `${flag}: lists -service`);
    t.equal(p.stderrText(), "", `${flag}: nothing on stderr`);
  }
});

t.test("-version and --version print meshproxy's version and the runtime's, exit 0, start nothing", async (t) => {
  const { version } = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
  for (const flag of ["-version", "--version"]) {
    const p = runMeshproxy(t, [flag]);
    t.equal(await p.exited, 0, `${flag}: exit 0`);
    t.equal(p.stdoutText(), `meshproxy ${version} (node ${process.version}, OpenSSL ${process.versions.openssl})\n`, `${flag}: one line`);
    t.equal(p.stderrText(), "", `${flag}: nothing on stderr`);
  }
});

t.test("--service with two dashes works like -service with one", async (t) => {
  const dir = await tempDir(t);
  const ready = (l: LogLine) => l["@message"] === "proxy ready";
  const double = runMeshproxy(t, ["--service", "web", "--upstream", "db:0", "--data-dir", dir, "--log-json", "--admin-addr", "127.0.0.1:0"], CLEAN_ENV);
  const single = runMeshproxy(t, ["-service", "web", "-upstream", "db:0", "-data-dir", dir, "-log-json", "-admin-addr", "127.0.0.1:0"], CLEAN_ENV);
  const [d, s] = await Promise.all([double.waitForLog(ready), single.waitForLog(ready)]);
  t.equal(d["service"], "web", "--service web: the proxy is ready as web");
  t.match(String(d["upstream.db"]), /^127\.0\.0\.1:\d+$/, "--upstream db:0: an upstream listener for db");
  t.same(Object.keys(d).filter((k) => !k.startsWith("@")).sort(), Object.keys(s).filter((k) => !k.startsWith("@")).sort(), "the same fields as with single dashes");
  t.equal(s["service"], d["service"], "and the same service");
  t.equal(await double.stop(), 0, "--service proxy exits 0 on SIGTERM");
  t.equal(await single.stop(), 0, "-service proxy exits 0 on SIGTERM");
});

t.test("an explicit -admin-addr that is taken: exit 1, naming -admin-addr", async (t) => {
  const dir = await tempDir(t);
  const first = await startSidecar(t, dir, ["-service", "web", "-upstream", "db:0"]);
  const second = runMeshproxy(t, ["-service", "api", "-data-dir", dir, "-log-json", "-admin-addr", first.adminAddr], CLEAN_ENV);
  const code = await second.exited;
  t.not(code, 0, "the second sidecar exits non-zero");
  t.equal(code, 1, "with 1 (a runtime failure, not a usage error)");
  t.match(second.stderrText(), new RegExp(`^meshproxy: -admin-addr ${first.adminAddr.replace(/\./g, "\\.")}: address already in use`), `stderr names -admin-addr: ${second.stderrText().trim()}`);
  t.equal(first.child.exitCode, null, "the first sidecar is unaffected");
});

t.test("a -listen or -upstream port that is taken: exit 1, naming the flag", async (t) => {
  const dir = await tempDir(t);
  const taken = await occupyPort(t);

  const listen = runMeshproxy(t, ["-service", "db", "-listen", taken.address, "-service-addr", "127.0.0.1:1", "-data-dir", dir, "-log-json", "-admin-addr", "127.0.0.1:0"], CLEAN_ENV);
  t.equal(await listen.exited, 1, "-listen on a taken port: exit 1");
  t.match(listen.stderrText(), new RegExp(`^meshproxy: -listen: public listener ${taken.address.replace(/\./g, "\\.")}: address already in use`), `stderr names -listen: ${listen.stderrText().trim()}`);
  const catalog = await readdir(join(dir, "catalog")).catch(() => []);
  t.same(catalog, [], "nothing was registered in the catalog");

  const port = taken.address.split(":")[1]!;
  const upstream = runMeshproxy(t, ["-service", "web", "-upstream", `db:${port}`, "-data-dir", dir, "-log-json", "-admin-addr", "127.0.0.1:0"], CLEAN_ENV);
  t.equal(await upstream.exited, 1, "-upstream on a taken port: exit 1");
  t.match(upstream.stderrText(), /^meshproxy: -upstream: upstream "db" listener 127\.0\.0\.1:\d+: address already in use/, `stderr names -upstream: ${upstream.stderrText().trim()}`);
});

t.test("stray arguments name the argument; a command group alone prints its help on stderr, exit 2", async (t) => {
  const dir = await tempDir(t);
  const state = join(dir, "state");
  const cases: Array<{ args: string[]; message: RegExp }> = [
    // A misspelt command, and a second value after a flag (-upstream a:1 b:2).
    { args: ["intentions", "list"], message: /^meshproxy: unexpected argument "intentions": the proxy takes only flags .*the commands are intention, config, ca, demo, canary/ },
    { args: ["-service", "web", "-upstream", "db:8181", "api:9191"], message: /^meshproxy: unexpected argument "api:9191": .*repeat it for another, e\.g\. -upstream db:8181 -upstream api:9191/ },
    { args: ["intention", "create", "-deny", "web", "db", "extra", "-data-dir", state], message: /^meshproxy: intention create: unexpected argument "extra" \(it takes <source> <destination>; run meshproxy intention create -h\)$/ },
    { args: ["intention", "list", "extra", "-data-dir", state], message: /^meshproxy: intention list: unexpected argument "extra" \(it takes no arguments, only flags; / },
    // The proxy's flags before a command are read by no command: it used ./.meshproxy (made it,
    // and wrote the intention there) while the user named another directory.
    { args: ["-data-dir", state, "intention", "create", "-deny", "web", "db"], message: /^meshproxy: -data-dir before the command "intention" is a proxy flag, not read by it; put a command's flags after it \(meshproxy intention \.\.\. -data-dir <value>\)$/ },
    { args: ["-log-level", "debug", "-data-dir", state, "ca", "roots"], message: /^meshproxy: -log-level, -data-dir before the command "ca" are proxy flags, not read by it; / },
  ];
  for (const c of cases) {
    const p = runMeshproxy(t, c.args, CLEAN_ENV);
    const name = c.args.join(" ");
    t.equal(await p.exited, 2, `${name}: exit 2`);
    const lines = p.stderrText().split("\n").filter((l) => l !== "");
    t.equal(lines.length, 1, `${name}: one line on stderr`);
    t.match(lines[0], c.message, `${name}: ${lines[0]}`);
  }
  for (const group of ["intention", "config", "ca"]) {
    const p = runMeshproxy(t, [group], CLEAN_ENV);
    t.equal(await p.exited, 2, `${group} alone: exit 2 (it was 0, printing nothing)`);
    t.match(p.stderrText(), new RegExp(`^Usage: meshproxy ${group} \\[options\\] \\[command\\]`), `${group} alone: its usage on stderr`);
    t.equal(p.stdoutText(), "", `${group} alone: nothing on stdout`);
  }
  t.notOk(existsSync(state), "no run created the data directory");
});

t.test("a sidecar with nothing else holding it (no admin API, no listener) runs until SIGTERM", async (t) => {
  const dir = await tempDir(t);
  const ready = (l: LogLine) => l["@message"] === "proxy ready";
  const p = runMeshproxy(t, ["-service", "web", "-data-dir", dir, "-log-json", "-admin-addr", ""], CLEAN_ENV);
  await p.waitForLog(ready);
  await new Promise((r) => setTimeout(r, 1500));
  t.equal(p.child.exitCode, null, "still running 1.5 s after ready (it ended with code 13 at once)");
  t.equal(await p.stop(), 0, "SIGTERM: exit 0");

  // Waiting for a broken intentions.json to be fixed, with no admin API: it waits, as documented.
  await writeFile(join(dir, "intentions.json"), "{ not json", { mode: 0o644 });
  const waiting = runMeshproxy(t, ["-service", "web", "-upstream", "db:0", "-data-dir", dir, "-log-json", "-admin-addr", ""], CLEAN_ENV);
  await waiting.waitForLog((l) => /not serving/.test(String(l["@message"])));
  await new Promise((r) => setTimeout(r, 1500));
  t.equal(waiting.child.exitCode, null, "still waiting for the fix");
  await writeFile(join(dir, "intentions.json"), JSON.stringify({ default_action: "allow", intentions: [] }), { mode: 0o644 });
  await waiting.waitForLog(ready);
  t.equal(await waiting.stop(), 0, "started once fixed; SIGTERM: exit 0");
});
