#!/usr/bin/env node
// The `meshproxy` binary.
import { runCli } from "./program.js";

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
