#!/usr/bin/env node
// The `meshproxy` binary.
import { runCli } from "./program.js";

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
  proxy: async (cmd) => (cmd.gateway ? (await import("./run-gateway.js")).runGateway(cmd) : (await import("./run-proxy.js")).runProxy(cmd)),
  intention: async (action, args, opts) => (await import("./intention.js")).runIntention(action, args, opts),
  demo: async (opts) => (await import("./demo.js")).runDemo(opts),
  config: async (action, args) => (await import("./config.js")).runConfig(action, args),
  canary: async (cmd) => (await import("./canary.js")).runCanary(cmd),
  ca: async (action, opts) => (await import("./ca.js")).runCa(action, opts),
}).catch((e: unknown) => {
  process.stderr.write(`meshproxy: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  return 1;
});
process.exitCode = code;
// Nothing should keep the process alive after the command is done; make sure of it.
setTimeout(() => process.exit(code), 100).unref();
