#!/usr/bin/env node
// The `meshproxy` binary.
import { runCli } from "./program.js";
import { runProxy } from "./run-proxy.js";
import { runIntention } from "./intention.js";
import { runDemo } from "./demo.js";
import { runConfig } from "./config.js";

const code = await runCli(process.argv.slice(2), {
  proxy: runProxy,
  intention: (action, args, opts) => runIntention(action, args, opts),
  demo: runDemo,
  config: (action, args) => runConfig(action, args),
}).catch((e: Error) => {
  process.stderr.write(`meshproxy: ${e.stack ?? e.message}\n`);
  return 1;
});
process.exitCode = code;
// Nothing should keep the process alive after the command is done; make sure of it.
setTimeout(() => process.exit(code), 100).unref();
