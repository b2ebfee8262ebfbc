#!/usr/bin/env node
// The `meshproxy` binary.
// Before anything else loads: a start's allocations are what grows V8's young generation.
import { governYoungGeneration, holdYoungGeneration, releaseYoungGeneration } from "./startup-heap.js";

holdYoungGeneration();
const { runCli } = await import("./program.js");

// A closed pipe on stdout or stderr (a log collector that died, `meshproxy ca roots | head`) makes
// Node emit 'error' on that stream, which unhandled ends the process. A proxy must go on serving
// without its log sink, as Envoy does (it ignores SIGPIPE); a CLI command's output has no reader
// left, so it stops writing. Either way nothing is lost that anyone could still read.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (e: NodeJS.ErrnoException) => {
    if (e.code !== "EPIPE" && e.code !== "EIO") throw e;
  });
}

// Each subcommand loads its own modules: a sidecar does not carry the demo's or the CLI tools'.

const code = await runCli(process.argv.slice(2), {
  proxy: async (cmd) => (governYoungGeneration(), cmd.gateway ? (await import("./run-gateway.js")).runGateway(cmd) : (await import("./run-proxy.js")).runProxy(cmd)),
  // Not a proxy: nothing to keep small at idle.
  intention: async (action, args, opts) => (releaseYoungGeneration(), (await import("./intention.js")).runIntention(action, args, opts)),
  demo: async (opts) => (releaseYoungGeneration(), (await import("./demo.js")).runDemo(opts)),
  config: async (action, args) => (releaseYoungGeneration(), (await import("./config.js")).runConfig(action, args)),
  canary: async (cmd) => (releaseYoungGeneration(), (await import("./canary.js")).runCanary(cmd)),
  ca: async (action, opts) => (releaseYoungGeneration(), (await import("./ca.js")).runCa(action, opts)),
}).catch((e: unknown) => {
  process.stderr.write(`meshproxy: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  return 1;
});
process.exitCode = code;
// Nothing should keep the process alive after the command is done; make sure of it.
setTimeout(() => process.exit(code), 100).unref();
