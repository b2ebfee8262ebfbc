// The VM unit: systemd's own offline checker accepts it, it keeps the hardening the README
// promises, and the checker is shown able to fail (a unit naming a missing program).
import t from "tap";
import { copyFile, readFile, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ROOT, tempDir } from "../helpers/mesh.js";
import { runCommand } from "../helpers/peers.js";

const UNIT = join(ROOT, "deploy", "systemd", "meshproxy@.service");
const hasAnalyze = existsSync("/usr/bin/systemd-analyze");

t.test("systemd-analyze verify accepts meshproxy@web.service", { skip: hasAnalyze ? false : "systemd-analyze is not installed" }, async (t) => {
  const dir = await tempDir(t, "meshproxy-unit-");
  const unit = join(dir, "meshproxy@web.service");
  await copyFile(UNIT, unit);
  const ok = await runCommand(t, "systemd-analyze", ["verify", unit], { env: { SYSTEMD_LOG_COLOR: "0" } });
  t.equal(ok.code, 0, `verify exits 0 ${ok.stderr}`);
  t.equal(ok.stderr.trim(), "", "with nothing to say about the unit");

  const broken = join(dir, "meshproxy@db.service");
  await writeFile(broken, (await readFile(UNIT, "utf8")).replace("ExecStart=/usr/bin/env", "ExecStart=/nonexistent/meshproxy"));
  const bad = await runCommand(t, "systemd-analyze", ["verify", broken]);
  t.not(bad.code, 0, "the same check fails a unit whose program does not exist");
  t.match(bad.stderr, /nonexistent/, "and names it");
});

t.test("the unit keeps its hardening and its drain fits in the stop timeout", async (t) => {
  const text = await readFile(UNIT, "utf8");
  const directive = (k: string): string | undefined => new RegExp(`^${k}=(.*)$`, "m").exec(text)?.[1];
  for (const [k, v] of [
    ["DynamicUser", "yes"],
    ["NoNewPrivileges", "yes"],
    ["ProtectSystem", "strict"],
    ["ProtectHome", "yes"],
    ["PrivateTmp", "yes"],
    ["CapabilityBoundingSet", ""],
    ["StateDirectory", "meshproxy/%i"],
    ["KillSignal", "SIGTERM"],
    // Log rotation: SIGUSR1 reopens the -access-log file (deploy/systemd/meshproxy.logrotate).
    ["ExecReload", "/bin/kill -USR1 $MAINPID"],
    ["LogsDirectory", "meshproxy/%i"],
  ] as const) {
    t.equal(directive(k), v, `${k}=${v}`);
  }
  t.match(directive("Environment") ?? "", /^MESHPROXY_DATA_DIR=%S\/meshproxy\/%i$/, "the dev state (if used) lives in the StateDirectory, the one writable place");
  const drain = /-drain-timeout (\d+)s/.exec(await readFile(join(ROOT, "deploy", "systemd", "meshproxy.env"), "utf8"))?.[1];
  const stop = /^TimeoutStopSec=(\d+)s$/m.exec(text)?.[1];
  t.ok(drain !== undefined && stop !== undefined && Number(stop) > Number(drain), `TimeoutStopSec (${stop}s) outlasts -drain-timeout (${drain}s), so systemd never SIGKILLs a drain`);
});
