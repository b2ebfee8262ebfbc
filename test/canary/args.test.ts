// `meshproxy canary`'s flags: the contract's flags and defaults, the config-entry form, and a
// usage error (exit 2) for each bad value.
import t from "tap";
import { join } from "node:path";
import { runCli, type Handlers } from "../../src/cli/program.js";
import type { CanaryCommand } from "../../src/cli/canary-args.js";
import { ROOT } from "../helpers/mesh.js";

async function parse(argv: string[]): Promise<{ code: number; cmd: CanaryCommand | null; err: string }> {
  let cmd: CanaryCommand | null = null;
  let err = "";
  const h: Handlers = {
    proxy: async () => 0,
    intention: async () => 0,
    demo: async () => 0,
    config: async () => 0,
    ca: async () => 0,
    canary: async (c) => {
      cmd = c;
      return 0;
    },
  };
  const code = await runCli(argv, h, (s) => {
    err += s;
  });
  return { code, cmd, err };
}

t.test("the issue's command line", async (t) => {
  const { code, cmd } = await parse(["canary", "-service", "api", "-from", "v1", "-to", "v2", "-steps", "5,25,50,100", "-interval", "30s", "-max-error-rate", "0.01", "-max-p99", "250ms", "-min-requests", "50"]);
  t.equal(code, 0);
  t.same(cmd?.plan, { service: "api", from: "v1", to: "v2", steps: [5, 25, 50, 100], intervalMs: 30_000, thresholds: { maxErrorRate: 0.01, maxP99Ms: 250, minRequests: 50 }, restart: false });
  t.equal(cmd?.action, "run");
});

t.test("the config-entry form, with flags winning", async (t) => {
  const file = join(ROOT, "examples", "canary", "rollout", "api-v2.json");
  const { code, cmd } = await parse(["canary", "-config", file, "-interval", "5s"]);
  t.equal(code, 0);
  t.same(cmd?.plan.steps, [5, 25, 50, 100]);
  t.equal(cmd?.plan.to, "v2");
  t.equal(cmd?.plan.intervalMs, 5000, "the flag wins over the file's 30s");
  t.equal(cmd?.plan.thresholds.maxP99Ms, 250);
});

t.test("-pause, -resume, -abort and -status need only -service", async (t) => {
  for (const a of ["pause", "resume", "abort", "status"]) {
    const { code, cmd } = await parse(["canary", "-service", "api", `-${a}`]);
    t.equal(code, 0, a);
    t.equal(cmd?.action, a);
  }
});

t.test("bad flags exit 2 with one line naming the flag", async (t) => {
  const base = ["canary", "-service", "api", "-from", "v1", "-to", "v2"];
  const cases: Array<[string[], RegExp]> = [
    [["canary", "-from", "v1", "-to", "v2"], /-service/],
    [["canary", "-service", "api", "-to", "v2"], /-from is required/],
    [["canary", "-service", "api", "-from", "v1", "-to", "v1"], /two subsets/],
    [[...base, "-steps", "50,25,100"], /must increase/],
    [[...base, "-steps", "5,25"], /last step must be 100/],
    [[...base, "-steps", "0,100"], /above 0/],
    [[...base, "-interval", "soon"], /-interval/],
    [[...base, "-max-error-rate", "5"], /-max-error-rate "5"/],
    [[...base, "-max-error-rate", ""], /-max-error-rate/],
    [[...base, "-max-p99", "fast"], /-max-p99/],
    [[...base, "-min-requests", "0"], /-min-requests/],
    [[...base, "-min-requests", "1.5"], /-min-requests/],
    [["canary", "-service", "api", "-pause", "-abort"], /one action at a time/],
    [[...base, "-bogus"], /unknown flag -bogus/],
    [["canary", "-config", "/nonexistent/canary.json"], /-config/],
  ];
  for (const [argv, want] of cases) {
    const { code, err } = await parse(argv);
    t.equal(code, 2, argv.join(" "));
    t.match(err, want, argv.join(" "));
    t.equal(err.trim().split("\n").length, 1, "one line");
  }
});
