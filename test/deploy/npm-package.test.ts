// The npm package as a user gets it: `npm pack`, installed from the tarball into an empty
// directory with production dependencies only, then the `meshproxy` binary through npx and the
// library through a bare `import ... from "meshproxy"`, on the Node running this test (.ci/run
// runs it again on Node 22 and 24).
import t from "tap";
import { existsSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { ROOT, tempDir } from "../helpers/mesh.js";
import { runCommand } from "../helpers/peers.js";

interface PackedFile {
  readonly path: string;
}

t.test("npm pack → install the tarball → npx meshproxy and import from \"meshproxy\"", { timeout: 170_000 }, async (t) => {
  // The test's own Node first on PATH, so npm and npx run on the version under test.
  // NODE_OPTIONS emptied: tap's loaders are not the user's.
  const env = { PATH: `${dirname(process.execPath)}:${process.env["PATH"] ?? ""}`, NODE_OPTIONS: "" };
  const dir = await tempDir(t, "meshproxy-npm-");
  // --ignore-scripts: the suite built dist/ already; `prepare` would rebuild it under other tests' feet.
  const packed = await runCommand(t, "sh", ["-c", `cd "$1" && npm pack --json --ignore-scripts --pack-destination "$2"`, "npm", ROOT, dir], { env, timeoutMs: 60_000 });
  t.equal(packed.code, 0, `npm pack exits 0${packed.code === 0 ? "" : `: ${packed.stderr}`}`);
  const [info] = JSON.parse(packed.stdout) as Array<{ filename: string; files: PackedFile[] }>;
  const files = info!.files.map((f) => f.path);
  t.same(files.filter((f) => !f.startsWith("dist/")).sort(), ["README.md", "package.json"], "outside dist/ only package.json and the README are shipped");
  t.same(files.filter((f) => !/\.(js|d\.ts)$/.test(f) && f.startsWith("dist/")), [], "dist/ ships .js and .d.ts only (no source maps pointing at sources that are not shipped)");
  t.ok(files.includes("dist/index.d.ts") && files.includes("dist/cli/main.js"), "the types entry and the binary are in");
  t.notOk(files.some((f) => /(^|\/)(test|bench|src|examples|deploy)\//.test(f) || f.endsWith(".ts") && !f.endsWith(".d.ts")), "no tests, benchmarks, sources or deployment files");

  const app = join(dir, "app");
  await mkdir(app);
  await writeFile(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  // In the empty directory, never in this checkout (--omit=dev would prune its dev dependencies).
  const install = await runCommand(t, "sh", ["-c", `cd "$1" && npm install --omit=dev --no-audit --no-fund --prefer-offline "$2"`, "npm", app, join(dir, info!.filename)], { env, timeoutMs: 150_000 });
  t.equal(install.code, 0, `npm install of the tarball exits 0${install.code === 0 ? "" : `: ${install.stderr}`}`);
  t.notOk(existsSync(join(app, "node_modules", "typescript")) || existsSync(join(app, "node_modules", "tap")), "no dev dependency came along");

  const help = await runCommand(t, "sh", ["-c", `cd "$1" && npx --no-install meshproxy --help`, "npx", app], { env });
  t.equal(help.code, 0, `npx meshproxy --help exits 0 ${help.stderr}`);
  t.match(help.stdout, /^Usage: meshproxy /, "and prints the usage");

  await writeFile(
    join(app, "main.js"),
    `import { Service, createRootCa } from "meshproxy";\nconsole.log(typeof Service.create, typeof createRootCa, process.version);\n`,
  );
  const imported = await runCommand(t, process.execPath, [join(app, "main.js")], { env });
  t.equal(imported.code, 0, `import { Service } from "meshproxy" runs ${imported.stderr}`);
  t.equal(imported.stdout, `function function ${process.version}\n`, `Service.create and createRootCa are functions on Node ${process.version}`);
  const dts = await readFile(join(app, "node_modules", "meshproxy", "dist", "index.d.ts"), "utf8");
  t.match(dts, /\bService\b/, "index.d.ts declares Service for TypeScript users");
});
