// The sidecar image as a container runtime runs it: deploy/rootfs.sh builds the image's root
// filesystem, deploy/rootfs-run.sh starts its entrypoint chrooted, as uid 10001, as PID 1 of its
// own PID namespace. Two "pods" are two network namespaces joined by a veth pair; in each, the app
// and its sidecar share the pod's network namespace, as containers of one pod do. The two
// sidecars share the image's state volume (/var/lib/meshproxy), which is their dev control plane.
// Needs root (ip netns, unshare, chroot): skipped otherwise.
import t from "tap";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { promisify } from "node:util";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { ROOT, tempDir, type LogLine, type Teardown } from "../helpers/mesh.js";
import { runCommand } from "../helpers/peers.js";
import { ignoreRejection } from "../helpers/ignore.js";

const execFileAsync = promisify(execFile);

const ROOTFS_SH = join(ROOT, "deploy", "rootfs.sh");
const RUN_SH = join(ROOT, "deploy", "rootfs-run.sh");
const WEB_IP = "10.77.0.1";
const DB_IP = "10.77.0.2";
// The Dockerfile's HEALTHCHECK, verbatim.
const HEALTHCHECK = "fetch('http://127.0.0.1:19000/ready').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))";

const isRoot = process.getuid?.() === 0;

interface PodProcess {
  readonly child: ChildProcess;
  readonly logs: LogLine[];
  readonly out: () => string;
  /** Everything written to stderr. */
  readonly err: () => string;
  waitFor(pred: (l: LogLine) => boolean, what: string, timeoutMs?: number): Promise<LogLine>;
  readonly exited: Promise<number | null>;
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    /* already gone */
  }
}

async function descendants(pid: number): Promise<number[]> {
  let children: number[];
  try {
    children = (await readFile(`/proc/${pid}/task/${pid}/children`, "utf8")).split(" ").filter(Boolean).map(Number);
  } catch {
    return [];
  }
  const below = await Promise.all(children.map(descendants));
  return [...children, ...below.flat()];
}

/**
 * Runs `args` in network namespace `ns`. JSON lines on stdout (the image logs there) are
 * collected as logs, other stdout lines as text; stderr is kept apart.
 */
function inPod(t: Teardown, ns: string, args: readonly string[], stdin: "pipe" | "ignore" = "ignore"): PodProcess {
  const child = spawn("ip", ["netns", "exec", ns, ...args], { stdio: [stdin, "pipe", "pipe"] });
  const logs: LogLine[] = [];
  let text = "";
  let errText = "";
  let partial = "";
  const waiters = new Set<() => void>();
  child.stderr?.setEncoding("utf8").on("data", (d: string) => {
    errText += d;
  });
  child.stdout?.setEncoding("utf8").on("data", (d: string) => {
    partial += d;
    let nl: number;
    while ((nl = partial.indexOf("\n")) >= 0) {
      const line = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      try {
        const v: unknown = JSON.parse(line);
        if (v !== null && typeof v === "object" && "@message" in v && typeof v["@message"] === "string") logs.push({ "@level": "", ...v, "@message": v["@message"] });
        else text += line + "\n";
      } catch {
        text += line + "\n";
      }
    }
    for (const w of waiters) w();
  });
  const exited = new Promise<number | null>((resolve) => child.once("close", (code) => resolve(code)));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      // The whole tree: chroot --userspec changes the uid, which clears the parent-death signal
      // that unshare's --kill-child relies on.
      for (const pid of await descendants(child.pid!)) killQuietly(pid);
      child.kill("SIGKILL");
      await exited;
    }
  });
  return {
    child,
    logs,
    out: () => text,
    err: () => errText,
    exited,
    waitFor(pred, what, timeoutMs = 30_000) {
      return new Promise<LogLine>((resolve, reject) => {
        const check = (): void => {
          const hit = logs.find(pred);
          if (!hit) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve(hit);
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no log line "${what}" in ${timeoutMs} ms; output:\n${text}\nstderr:\n${errText}\nlogs:\n${logs.map((l) => JSON.stringify(l)).join("\n")}`));
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
  };
}

/** Resolves once `pred(stdout)` holds. */
function stdoutMatches(p: PodProcess, re: RegExp, timeoutMs = 30_000): Promise<void> {
  const start = Date.now();
  return new Promise<void>((resolve, reject) => {
    const tick = (): void => {
      if (re.test(p.out())) resolve();
      else if (Date.now() - start > timeoutMs) reject(new Error(`stdout never matched ${re}:\n${p.out()}`));
      else setTimeout(tick, 50);
    };
    tick();
  });
}

/** The host PID of PID 1 in the pod's PID namespace: the only child of `unshare --fork`. */
async function podInit(p: PodProcess): Promise<number> {
  const pid = p.child.pid!;
  const children = (await readFile(`/proc/${pid}/task/${pid}/children`, "utf8")).trim();
  const init = Number(children.split(" ")[0]);
  if (!Number.isInteger(init) || init <= 0) throw new Error(`unshare (${pid}) has no child yet`);
  return init;
}

// The app of the db pod: holds each /slow request until "release" arrives on stdin, so the test
// controls exactly which requests are in flight when the sidecar is told to stop.
const APP = `
const http = require("node:http");
const held = [];
process.stdin.setEncoding("utf8").on("data", (d) => { if (d.includes("release")) for (const r of held.splice(0)) r.end("done " + r.req.url + "\\n"); });
http.createServer((req, res) => {
  res.req = req;
  if (req.url.startsWith("/slow")) { held.push(res); console.log("held " + held.length); return; }
  res.end("hello from db\\n");
}).listen(8080, "127.0.0.1", () => console.log("app listening"));
`;

// A client in the web pod: n requests at once through web's upstream listener, one connection each.
const CLIENT = `
const http = require("node:http");
const n = Number(process.argv[1]);
const one = (i) => new Promise((resolve) => {
  const req = http.get({ host: "127.0.0.1", port: 9191, path: "/slow/" + i, agent: false, headers: { connection: "close" } }, (res) => {
    let body = ""; res.setEncoding("utf8").on("data", (d) => (body += d)).on("end", () => resolve({ status: res.statusCode, body }));
  });
  req.on("error", (e) => resolve({ status: 0, body: e.message }));
});
Promise.all(Array.from({ length: n }, (_, i) => one(i))).then((r) => console.log(JSON.stringify(r)));
`;

async function netns(t: Teardown): Promise<{ web: string; db: string }> {
  const web = `mpweb${process.pid}`;
  const db = `mpdb${process.pid}`;
  const sh = async (...args: string[]) => {
    const r = await runCommand(t, "ip", args);
    if (r.code !== 0) throw new Error(`ip ${args.join(" ")}: ${r.stderr}`);
  };
  t.teardown(async () => {
    // As a runtime ends a pod: every process in it is killed (a chrooted process that changed its
    // uid is not taken along by unshare's --kill-child), then the namespace goes, and with it the veth pair.
    for (const ns of [web, db]) {
      let pids: string;
      try {
        pids = (await execFileAsync("ip", ["netns", "pids", ns])).stdout;
      } catch {
        continue; // never created
      }
      for (const pid of pids.split(/\s+/).filter(Boolean)) killQuietly(Number(pid));
      await execFileAsync("ip", ["netns", "del", ns]).catch(ignoreRejection(`netns ${ns} may not have been created`));
    }
  });
  await sh("netns", "add", web);
  await sh("netns", "add", db);
  const vw = `vw${process.pid}`.slice(0, 15);
  const vd = `vd${process.pid}`.slice(0, 15);
  await sh("link", "add", vw, "netns", web, "type", "veth", "peer", "name", vd, "netns", db);
  await sh("-n", web, "addr", "add", `${WEB_IP}/30`, "dev", vw);
  await sh("-n", db, "addr", "add", `${DB_IP}/30`, "dev", vd);
  for (const [ns, dev] of [[web, vw], [db, vd]] as const) {
    await sh("-n", ns, "link", "set", "lo", "up");
    await sh("-n", ns, "link", "set", dev, "up");
  }
  return { web, db };
}

t.test("the sidecar image in two pods: mTLS only between them, /ready gating, SIGTERM as PID 1 loses no request in flight", { skip: isRoot ? false : "needs root for ip netns, unshare and chroot", timeout: 170_000 }, async (t) => {
  const dir = await tempDir(t, "meshproxy-rootfs-");
  const rootfs = join(dir, "rootfs");
  const built = await runCommand(t, ROOTFS_SH, [rootfs], { timeoutMs: 120_000 });
  t.equal(built.code, 0, `deploy/rootfs.sh builds the image's root filesystem ${built.stderr}`);
  const { web, db } = await netns(t);
  const healthy = async (ns: string) => (await runCommand(t, "ip", ["netns", "exec", ns, RUN_SH, rootfs, "--exec", "/usr/local/bin/node", "-e", HEALTHCHECK])).code === 0;

  const app = inPod(t, db, ["node", "-e", APP], "pipe");
  await stdoutMatches(app, /app listening/);
  const dbSidecar = inPod(t, db, [RUN_SH, rootfs, "-service", "db", "-listen", `${DB_IP}:21000`, "-service-addr", "127.0.0.1:8080", "-admin-addr", "127.0.0.1:19000", "-drain-timeout", "30s"]);
  await dbSidecar.waitFor((l) => l["@message"] === "proxy ready", "proxy ready (db)");
  const webSidecar = inPod(t, web, [RUN_SH, rootfs, "-service", "web", "-upstream", "db:9191", "-admin-addr", "127.0.0.1:19000"]);
  await webSidecar.waitFor((l) => l["@message"] === "proxy ready", "proxy ready (web)");
  t.ok(await healthy(db), "the image's HEALTHCHECK passes in the db pod once its sidecar is ready");
  t.ok(await healthy(web), "and in the web pod");

  const dbInit = await podInit(dbSidecar);
  t.equal((await readFile(`/proc/${dbInit}/status`, "utf8")).match(/^NSpid:\s+\d+\s+(\d+)/m)?.[1], "1", "the sidecar is PID 1 of its PID namespace");
  t.match(await readFile(`/proc/${dbInit}/status`, "utf8"), /^Uid:\s+10001\s/m, "and runs as uid 10001, not root");
  t.match(await readFile(`/proc/${dbInit}/maps`, "utf8"), /libjemalloc\.so\.2/, "on jemalloc, as the Dockerfile preloads it");

  // Only mTLS crosses between the pods.
  const probe = (addr: string, port: number) =>
    runCommand(t, "ip", ["netns", "exec", web, "node", "-e", `const s=require("node:net").connect(${port},"${addr}");let got="";s.on("connect",()=>s.write("GET / HTTP/1.0\\r\\n\\r\\n"));s.on("data",d=>got+=d);s.on("error",e=>{console.log("error "+e.code);});s.on("close",()=>{console.log("got "+JSON.stringify(got));});s.setTimeout(3000,()=>s.destroy());`]);
  t.match((await probe(DB_IP, 8080)).stdout, /error ECONNREFUSED/, "the db app's port is unreachable from the web pod (it listens on the pod's loopback)");
  t.match((await probe(DB_IP, 21000)).stdout, /^got ""\n$/, "plaintext HTTP to db's public listener gets no answer (mTLS or nothing)");
  const hello = await runCommand(t, "ip", ["netns", "exec", web, "curl", "-sS", "--max-time", "10", "http://127.0.0.1:9191/"]);
  t.equal(hello.stdout, "hello from db\n", `the web pod reaches the db app through both sidecars over the veth pair ${hello.stderr}`);

  // SIGTERM with requests in flight.
  const n = 20;
  const client = inPod(t, web, ["node", "-e", CLIENT, String(n)]);
  await stdoutMatches(app, new RegExp(`held ${n}\\b`));
  process.kill(dbInit, "SIGTERM");
  await dbSidecar.waitFor((l) => l["@message"] === "shutting down" && l["signal"] === "SIGTERM", "shutting down on SIGTERM");
  t.notOk(await healthy(db), "while draining, the HEALTHCHECK fails (/ready is 503), so the pod leaves the load balancers");
  app.child.stdin?.write("release\n");
  await stdoutMatches(client, /^\[/);
  const results: unknown = JSON.parse(client.out());
  t.same(
    results,
    Array.from({ length: n }, (_, i) => ({ status: 200, body: `done /slow/${i}\n` })),
    `all ${n} requests in flight at SIGTERM complete with the app's answer`,
  );
  t.equal(await dbSidecar.exited, 0, "the sidecar, PID 1, drains and exits 0");
  t.ok(dbSidecar.logs.some((l) => l["@message"] === "proxy ready") && dbSidecar.logs.every((l) => typeof l["@timestamp"] === "string"), "its log is JSON lines on stdout");
  t.equal(dbSidecar.err(), "", "and nothing on stderr");
  t.notOk(await healthy(db), "and the db pod's HEALTHCHECK stays failed once it is gone");
});
