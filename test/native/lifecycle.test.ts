// The library's lifecycle in a process of its own: importing it does nothing, a Service registers
// its server in the catalog while it serves and removes it on close, and after close() nothing is
// left to keep the process alive (it exits by itself, with no process.exit()).
import t from "tap";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { writeFile } from "node:fs/promises";
import { ROOT, tempDir, type Teardown } from "../helpers/mesh.js";

const DIST = join(ROOT, "dist", "index.js");

/** Runs `script` as an ES module file in a plain node process (no test loaders). */
async function runScript(t: Teardown, script: string, timeoutMs = 20_000): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  const file = join(await tempDir(t), "app.mjs");
  await writeFile(file, script);
  const started = performance.now();
  const env: NodeJS.ProcessEnv = { ...process.env, CONSUL_HTTP_ADDR: "" };
  delete env["NODE_OPTIONS"];
  const child = spawn(process.execPath, [file], { stdio: ["ignore", "pipe", "pipe"], env });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [code] = (await once(child, "exit")) as [number | null];
  clearTimeout(timer);
  return { code, stdout, stderr, ms: performance.now() - started };
}

t.test("importing the package parses no flags, installs no handlers and starts no timers", async (t) => {
  const r = await runScript(t, `
    const before = { sigterm: process.listenerCount("SIGTERM"), sigint: process.listenerCount("SIGINT"), exit: process.listenerCount("exit") };
    const m = await import(${JSON.stringify(DIST)});
    const after = { sigterm: process.listenerCount("SIGTERM"), sigint: process.listenerCount("SIGINT"), exit: process.listenerCount("exit") };
    console.log(JSON.stringify({ same: JSON.stringify(before) === JSON.stringify(after), handles: process._getActiveHandles().filter((h) => h !== process.stdout && h !== process.stderr && h !== process.stdin).length, service: typeof m.Service.create }));
  `);
  t.equal(r.code, 0, `exits 0 by itself ${r.stderr}`);
  t.same(JSON.parse(r.stdout), { same: true, handles: 0, service: "function" }, "no signal or exit handlers, no open handles, the Service API is there");
});

t.test("a served Service is in the catalog; after close() it is not, and the process exits on its own", async (t) => {
  const dir = await tempDir(t);
  const r = await runScript(t, `
    import { readdirSync } from "node:fs";
    const { Service, createLogger } = await import(${JSON.stringify(DIST)});
    const logger = createLogger({ level: "error" });
    const dir = ${JSON.stringify(dir)};
    const api = await Service.create({ name: "api", dataDir: dir, logger });
    const web = await Service.create({ name: "web", dataDir: dir, logger });
    const server = api.createServer((req, res) => res.end("hello " + api.peerOf(req).service));
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    let body = "";
    for (let i = 0; i < 200; i++) {
      try { body = await (await fetch("https://api.service.consul/", { dispatcher: web.dispatcher() })).text(); break; }
      catch { await new Promise((r) => setTimeout(r, 50)); }
    }
    const during = readdirSync(dir + "/catalog").filter((f) => f.endsWith(".json"));
    await web.close();
    await api.close();
    const after = readdirSync(dir + "/catalog").filter((f) => f.endsWith(".json"));
    server.close();
    server.closeAllConnections();
    console.log(JSON.stringify({ body, during, after }));
  `);
  t.equal(r.code, 0, `the process exits 0 by itself once the Service and its server are closed ${r.stderr}`);
  const out = JSON.parse(r.stdout) as { body: string; during: string[]; after: string[] };
  t.equal(out.body, "hello web", "a request went through first (Node's own fetch takes the dispatcher)");
  t.equal(out.during.length, 1, "api's server was in the catalog while it served");
  t.match(out.during[0], /^api-native-\d+-1\.json$/, "under an id naming the native instance");
  t.same(out.after, [], "close() removed it");
});

t.test("a Service starts in an app run with node --input-type=module -e (the dev CA's worker does not inherit the flag)", async (t) => {
  const dir = await tempDir(t);
  const env: NodeJS.ProcessEnv = { ...process.env, CONSUL_HTTP_ADDR: "" };
  delete env["NODE_OPTIONS"];
  const script = `const { Service, createLogger } = await import(${JSON.stringify(DIST)});
    const svc = await Service.create({ name: "api", dataDir: ${JSON.stringify(dir)}, logger: createLogger({ level: "error" }) });
    console.log(svc.spiffeId);
    await svc.close();`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "pipe"], env });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const [code] = (await once(child, "exit")) as [number | null];
  t.equal(code, 0, `exits 0 ${stderr}`);
  t.match(stdout, /^spiffe:\/\/.+\/svc\/api\n$/, "the Service got its leaf");
});

t.test("await svc.dial('db') with no db yet: waits resolveTimeoutMs, keeping the process alive, then throws; no exit 13", async (t) => {
  const dir = await tempDir(t);
  const r = await runScript(t, `
    const { Service, createLogger } = await import(${JSON.stringify(DIST)});
    const svc = await Service.create({ name: "web", dataDir: ${JSON.stringify(dir)}, logger: createLogger({ level: "error" }), resolveTimeoutMs: 1500 });
    const started = performance.now();
    try {
      await svc.dial("db");
      console.log(JSON.stringify({ dialled: true }));
    } catch (e) {
      console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message, ms: performance.now() - started }));
    }
    await svc.close();
  `);
  t.equal(r.code, 0, `exits 0 by itself ${r.stderr}`);
  const out = JSON.parse(r.stdout) as { name: string; code: string; message: string; ms: number };
  t.equal(out.name, "NoHealthyUpstreamError");
  t.equal(out.code, "MESH_NO_HEALTHY_UPSTREAM");
  t.match(out.message, /^upstream "db": no healthy instances within 1500 ms \(cluster "db\.default\.dc1\.internal\.[^"]+": no instances registered\); start one, or raise resolveTimeoutMs$/, "says which upstream, how long, and why");
  t.ok(out.ms >= 1400 && out.ms < 5000, `it waited the timeout (${Math.round(out.ms)} ms), not forever`);
});

t.test("dial() waiting for db gets it once db starts serving", async (t) => {
  const dir = await tempDir(t);
  const r = await runScript(t, `
    const { Service, createLogger } = await import(${JSON.stringify(DIST)});
    const logger = createLogger({ level: "error" });
    const dir = ${JSON.stringify(dir)};
    const web = await Service.create({ name: "web", dataDir: dir, logger });
    const dialled = web.dial("db");
    // db comes up after the dial started (both start together in a deployment).
    await new Promise((r) => setTimeout(r, 300));
    const db = await Service.create({ name: "db", dataDir: dir, logger });
    const server = db.createServer((req, res) => res.end("db to " + db.peerOf(req).service));
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    const sock = await dialled;
    sock.end("GET / HTTP/1.1\\r\\nhost: db\\r\\nconnection: close\\r\\n\\r\\n");
    let raw = "";
    for await (const c of sock) raw += c;
    await web.close();
    await db.close();
    server.close();
    console.log(JSON.stringify({ answered: raw.includes("db to web") }));
  `);
  t.equal(r.code, 0, `exits 0 by itself ${r.stderr}`);
  t.same(JSON.parse(r.stdout), { answered: true }, "the waiting dial connected to db, which saw web");
});

t.test("a control plane that never resolves an upstream: the first call fails after resolveTimeoutMs instead of the process exiting 13", async (t) => {
  const r = await runScript(t, `
    const { Service, createRootCa, issueLeaf, createLogger } = await import(${JSON.stringify(DIST)});
    const logger = createLogger({ level: "error" });
    const td = "11111111-2222-3333-4444-555555555555.consul";
    const spiffeId = "spiffe://" + td + "/ns/default/dc/dc1/svc/web";
    const ca = await createRootCa(td);
    const leaf = await issueLeaf(ca, { spiffeId, commonName: "web", ttlMs: 3600000 });
    // Your own control plane, held in memory (no socket, no timer), slow to resolve: addUpstream is taken and nothing comes of it.
    const slow = {
      kind: "slow",
      start: async (h) => h.snapshot({
        version: 1, source: "slow",
        identity: { service: "web", namespace: "default", datacenter: "dc1", trustDomain: td, spiffeId, certChainPem: leaf.certPem, privateKeyPem: leaf.keyPem, serial: leaf.serial, notBefore: leaf.notBefore, notAfter: leaf.notAfter },
        trust: { trustDomain: td, rootsPem: [ca.certPem] },
        publicListener: null, upstreams: [], clusters: {}, intentions: { defaultAction: "allow", intentions: [] },
      }),
      announce: async () => {}, withdraw: async () => {}, stop: async () => {},
      addUpstream() {},
    };
    const svc = await Service.create({ name: "web", controlPlane: slow, logger, resolveTimeoutMs: 1000 });
    for (const call of [() => svc.dial("db"), () => fetch("https://api.service.consul/", { dispatcher: svc.dispatcher() })]) {
      try {
        await call();
        console.log("resolved?");
      } catch (e) {
        console.log((e.cause ?? e).message);
      }
    }
    await svc.close();
  `);
  t.equal(r.code, 0, `exits 0 by itself, not 13 (an unsettled top-level await) ${r.stderr}`);
  t.same(r.stdout.trim().split("\n"), [
    'upstream "db": the slow control plane did not resolve it within 1000 ms (is the configuration valid? see the control plane errors logged)',
    'upstream "api": the slow control plane did not resolve it within 1000 ms (is the configuration valid? see the control plane errors logged)',
  ], "both calls fail with why");
});
