// -log-dest: the stream the log lines go to. stderr by default (where Consul and Envoy log, and
// where every other test reads them); stdout for containers, whose collectors are usually set up
// for "JSON logs on stdout".
import t from "tap";
import { runCli, type Handlers, type ProxyCommand } from "../src/cli/program.js";
import { createLogger } from "../src/telemetry/log.js";
import { runMeshproxy, tempDir, type LogLine } from "./helpers/mesh.js";

const CLEAN_ENV = { CONNECT_PROXY_ID: "", CONNECT_SIDECAR_FOR: "", MESHPROXY_DATA_DIR: "" };

async function parse(argv: string[]): Promise<{ code: number; cmd: ProxyCommand | null; err: string }> {
  let cmd: ProxyCommand | null = null;
  let err = "";
  const h: Handlers = {
    proxy: (c) => {
      cmd = c;
      return Promise.resolve(0);
    },
    intention: () => Promise.resolve(0),
    demo: () => Promise.resolve(0),
    canary: () => Promise.resolve(0),
    ca: () => Promise.resolve(0),
    config: () => Promise.resolve(0),
  };
  const code = await runCli(argv, h, (s) => {
    err += s;
  });
  return { code, cmd, err };
}

t.test("-log-dest: stderr by default, stdout on request, one or two dashes; anything else is a usage error", async (t) => {
  t.equal((await parse(["-service", "web"])).cmd?.logDest, "stderr", "default: stderr, as before");
  t.equal((await parse(["-service", "web", "-log-dest", "stdout"])).cmd?.logDest, "stdout");
  t.equal((await parse(["-service", "web", "--log-dest", "stdout"])).cmd?.logDest, "stdout", "--log-dest as -log-dest");
  t.equal((await parse(["-service", "web", "-log-dest=STDOUT"])).cmd?.logDest, "stdout", "-flag=value, any case");
  t.equal((await parse(["-service", "web", "-log-dest", "stderr"])).cmd?.logDest, "stderr");
  const bad = await parse(["-service", "web", "-log-dest", "/var/log/meshproxy.log"]);
  t.equal(bad.code, 2, "a file is refused: exit 2");
  t.equal(bad.cmd, null, "nothing started");
  t.equal(bad.err, 'meshproxy: -log-dest "/var/log/meshproxy.log": want stderr or stdout (a file is the runtime\'s or journald\'s job)\n');
});

t.test("createLogger writes to the chosen stream", async (t) => {
  const written: Record<"stdout" | "stderr", string> = { stdout: "", stderr: "" };
  const real = { stdout: process.stdout.write.bind(process.stdout), stderr: process.stderr.write.bind(process.stderr) };
  for (const s of ["stdout", "stderr"] as const) {
    t.teardown(() => void (process[s].write = real[s]));
    process[s].write = (chunk: string | Uint8Array): boolean => {
      const text = typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8");
      if (text.includes("log-dest probe")) written[s] += text;
      else real[s](chunk);
      return true;
    };
  }
  createLogger({ json: true, dest: "stdout" }).info("log-dest probe", { to: "stdout" });
  createLogger({ json: true }).info("log-dest probe", { to: "stderr" });
  process.stdout.write = real.stdout;
  process.stderr.write = real.stderr;
  t.match(JSON.parse(written.stdout), { "@message": "log-dest probe", to: "stdout" }, "dest stdout: the line is on stdout");
  t.match(JSON.parse(written.stderr), { "@message": "log-dest probe", to: "stderr" }, "no dest: the line is on stderr");
});

t.test("a proxy with -log-json -log-dest stdout writes JSON lines to stdout and nothing to stderr", async (t) => {
  const dir = await tempDir(t);
  const p = runMeshproxy(t, ["-service", "web", "-upstream", "db:0", "-data-dir", dir, "-log-json", "-log-dest", "stdout", "-admin-addr", "127.0.0.1:0"], CLEAN_ENV);
  const lines = (): LogLine[] =>
    p
      .stdoutText()
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => JSON.parse(l) as LogLine);
  // Every line on stdout is JSON (the parse throws otherwise); wait for readiness there.
  await new Promise<void>((resolve, reject) => {
    const check = (): void => {
      try {
        if (lines().some((l) => l["@message"] === "proxy ready")) return resolve();
      } catch (e) {
        return reject(e instanceof Error ? e : new Error(String(e)));
      }
    };
    p.child.stdout?.on("data", check);
    p.exited.then(() => reject(new Error(`exited before ready; stdout:\n${p.stdoutText()}\nstderr:\n${p.stderrText()}`)), reject);
    check();
  });
  t.equal(await p.stop(), 0, "SIGTERM: drained and exited 0");
  const all = lines();
  t.ok(all.length >= 3, `several JSON log lines on stdout (${all.length})`);
  t.ok(all.every((l) => typeof l["@timestamp"] === "string" && typeof l["@level"] === "string"), "each with @timestamp and @level");
  t.ok(all.some((l) => l["@message"] === "shutting down" && l["signal"] === "SIGTERM"), "including the drain on SIGTERM");
  t.equal(p.stderrText(), "", "nothing on stderr");
  t.equal(p.logs.length, 0, "no log line on stderr");
});
