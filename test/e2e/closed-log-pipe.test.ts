// A sidecar whose log pipe closes (the collector reading its stderr died) goes on serving: Node
// turns the write into an 'error' event on process.stderr, which used to end the process. And a
// CLI command piped into `head` ends quietly rather than with a stack trace.
import t from "tap";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { request } from "node:http";
import { BIN, echoServer, roundTrip, startSidecar, tempDir } from "../helpers/mesh.js";

function ready(adminAddr: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(`http://${adminAddr}/ready`, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on("error", reject);
    req.end();
  });
}

t.test("a sidecar keeps serving after the reader of its log stream has gone", async (t) => {
  const dataDir = await tempDir(t);
  const app = await echoServer(t);
  const s = await startSidecar(t, dataDir, ["-service", "api", "-listen", "127.0.0.1:0", "-service-addr", `127.0.0.1:${app.port}`, "-log-level", "debug"]);
  const caller = await startSidecar(t, dataDir, ["-service", "web", "-upstream", "api:0"]);
  // The sidecar's next log line goes to a pipe nobody reads: EPIPE.
  s.child.stderr!.destroy();
  let exited = false;
  s.child.once("exit", () => (exited = true));
  // Connections through it make it log (debug: every accepted connection).
  for (let i = 0; i < 5; i++) t.equal((await roundTrip(caller.upstreams["api"]!, `ping ${i}`)).toString(), `ping ${i}`, `connection ${i} through the sidecar is served`);
  t.equal(await ready(s.adminAddr), 200, "its admin API still answers /ready");
  t.notOk(exited, "the process did not exit");
});

t.test("a CLI command whose output pipe closes early exits without a stack trace", async (t) => {
  const dataDir = await tempDir(t);
  const child = spawn(process.execPath, [BIN, "intention", "list", "-data-dir", dataDir], { stdio: ["ignore", "pipe", "pipe"] });
  child.stdout.destroy();
  let err = "";
  child.stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
  const [code] = (await once(child, "exit")) as [number | null];
  t.notMatch(err, /Unhandled 'error' event|EPIPE/, "no unhandled EPIPE on stderr");
  t.equal(code, 0, "exit code 0");
});
