// The static control plane: the parser's messages name the field, a good file becomes the
// expected Snapshot, and the live behaviour with real files (edit, break, fix, rotate).
import t from "tap";
import { mkdir, readFile, rename, rm, truncate, writeFile } from "node:fs/promises";
import { execFileSync } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { join, resolve } from "node:path";
import { createRootCa, issueLeaf, type CaMaterial, type IssuedLeaf } from "../src/identity/ca.js";
import { serviceSni, serviceSpiffeId } from "../src/identity/spiffe.js";
import { parseStaticConfig, StaticConfigError, type StaticConfig } from "../src/controlplane/static/config.js";
import { StaticControlPlane } from "../src/controlplane/static/static.js";
import { MAX_CONTROL_PLANE_FILE_BYTES as MAX_STATIC_FILE_BYTES } from "../src/controlplane/read-file.js";
import { ControlPlaneError } from "../src/controlplane/controlplane.js";
import { validateSnapshot } from "../src/config/validate.js";
import type { Snapshot } from "../src/config/snapshot.js";
import { createLogger } from "../src/telemetry/log.js";
import { runCli, type ProxyCommand } from "../src/cli/program.js";
import { ROOT, tempDir, type Teardown } from "./helpers/mesh.js";

const TD = "11111111-2222-3333-4444-555555555555.consul";

type Json = Record<string, unknown>;

/** A valid config for `web` with two upstreams; tests override parts of it. */
function base(): Json {
  return {
    service: "web",
    identity: { cert_file: "certs/web.pem", key_file: "certs/web.key" },
    roots_files: ["certs/root.pem"],
    public_listener: { bind: "0.0.0.0:21000", local_app: "127.0.0.1:8080" },
    upstreams: [
      { name: "db", bind: "127.0.0.1:8181", endpoints: ["10.0.0.5:21000", { address: "10.0.0.6", port: 21000 }] },
      { name: "cache", bind: "127.0.0.1:8282", endpoints: ["10.0.0.9:21000"] },
    ],
  };
}

function parse(v: unknown, file = "proxy.json"): StaticConfig {
  return parseStaticConfig(typeof v === "string" ? v : JSON.stringify(v), file);
}

function upstreams(...u: Json[]): Json {
  return { ...base(), upstreams: u };
}

const db = (extra: Json = {}): Json => ({ name: "db", bind: "127.0.0.1:8181", endpoints: ["10.0.0.5:21000"], ...extra });

t.test("parser: a complete file becomes the expected StaticConfig", async (t) => {
  const cfg = parse(
    {
      service: "web",
      datacenter: "dc2",
      trust_domain: TD.toUpperCase(),
      identity: { cert_file: "certs/web.pem", key_file: "/abs/web.key" },
      roots_files: ["certs/root.pem", "../shared/old-root.pem"],
      public_listener: { bind: ":21000", local_app: ":8080", protocol: "http", handshake_timeout_ms: 2000, local_connect_timeout_ms: 300, idle_timeout_ms: 60000 },
      upstreams: [
        {
          name: "db",
          bind: "127.0.0.1:8181",
          datacenter: "dc3",
          connect_timeout_ms: 700,
          idle_timeout_ms: 9000,
          endpoints: ["10.0.0.5:21000", { address: "10.0.0.6", port: 21001, healthy: false, meta: { version: "v2" } }, "[fd00::1]:21002"],
          sni: "db.example",
          spiffe_id: `spiffe://${TD}/ns/default/dc/dc3/svc/db`,
        },
        { name: "cache", bind: ":0", endpoints: [{ address: "cache.internal", port: 21000 }] },
      ],
      intentions: {
        default_action: "deny",
        intentions: [
          { source: "frontend", destination: "web", action: "allow", description: "UI" },
          { source: "*", destination: "web", action: "deny" },
        ],
      },
    },
    "/etc/mesh/proxy.json",
  );
  t.same(cfg, {
    service: "web",
    datacenter: "dc2",
    trustDomain: TD,
    identity: { certFile: "/etc/mesh/certs/web.pem", keyFile: "/abs/web.key" },
    rootsFiles: ["/etc/mesh/certs/root.pem", "/etc/shared/old-root.pem"],
    publicListener: {
      bind: { host: "0.0.0.0", port: 21000 },
      localApp: { host: "127.0.0.1", port: 8080 },
      protocol: "http",
      handshakeTimeoutMs: 2000,
      localConnectTimeoutMs: 300,
      idleTimeoutMs: 60000,
    },
    upstreams: [
      {
        name: "db",
        bind: { host: "127.0.0.1", port: 8181 },
        datacenter: "dc3",
        connectTimeoutMs: 700,
        idleTimeoutMs: 9000,
        endpoints: [
          { host: "10.0.0.5", port: 21000, healthy: true, id: "10.0.0.5:21000", meta: {} },
          { host: "10.0.0.6", port: 21001, healthy: false, id: "10.0.0.6:21001", meta: { version: "v2" } },
          { host: "fd00::1", port: 21002, healthy: true, id: "[fd00::1]:21002", meta: {} },
        ],
        sni: "db.example",
        spiffeId: `spiffe://${TD}/ns/default/dc/dc3/svc/db`,
      },
      {
        name: "cache",
        bind: { host: "127.0.0.1", port: 0 },
        datacenter: "dc2",
        connectTimeoutMs: 5000,
        idleTimeoutMs: 3_600_000,
        endpoints: [{ host: "cache.internal", port: 21000, healthy: true, id: "cache.internal:21000", meta: {} }],
      },
    ],
    intentions: {
      defaultAction: "deny",
      intentions: [
        { source: "frontend", destination: "web", action: "allow", description: "UI" },
        { source: "*", destination: "web", action: "deny" },
      ],
    },
  });
});

t.test("parser: defaults", async (t) => {
  const cfg = parse({ service: "web", identity: { cert_file: "w.pem", key_file: "w.key" }, roots_files: ["r.pem"] }, "dir/p.json");
  t.equal(cfg.datacenter, "dc1");
  t.equal(cfg.trustDomain, null, "trust domain comes from the leaf later");
  t.equal(cfg.publicListener, null);
  t.same(cfg.upstreams, []);
  t.same(cfg.intentions, { defaultAction: "allow", intentions: [] }, "allow all, as Consul with ACLs off");
  t.equal(cfg.identity.certFile, resolve("dir", "w.pem"), "relative to the config file's directory");
  const pl = parse({ ...base(), public_listener: { bind: "0.0.0.0:21000", local_app: "127.0.0.1:8080" } }).publicListener;
  t.same(pl, { bind: { host: "0.0.0.0", port: 21000 }, localApp: { host: "127.0.0.1", port: 8080 }, protocol: "tcp", handshakeTimeoutMs: 10_000, localConnectTimeoutMs: 1000, idleTimeoutMs: 3_600_000 });
  const u = parse({ ...base(), datacenter: "east" }).upstreams[0];
  t.equal(u?.datacenter, "east", "upstreams inherit the top-level datacenter");
  t.equal(u?.connectTimeoutMs, 5000);
  t.equal(u?.sni, undefined, "SNI is left to the Snapshot builder (it needs the trust domain)");
});

t.test("parser: the shipped example is valid", async (t) => {
  const file = join(ROOT, "examples", "static", "proxy.json");
  const cfg = parseStaticConfig(await readFile(file, "utf8"), file);
  t.equal(cfg.service, "web");
  t.equal(cfg.upstreams.length, 3);
  t.equal(cfg.identity.certFile, join(ROOT, "examples", "static", "certs", "web.pem"));
});

t.test("parser: every error names the field and says what a good value is", async (t) => {
  const cases: Array<[string, unknown, string, RegExp]> = [
    ["broken JSON", '{\n  "service": "web",\n  oops\n}', "", /not valid JSON .*line 3 column 3/],
    ["not an object", "[]", "", /must be an object/],
    ["typo in a top-level key", { ...base(), upstream: [] }, "upstream", /unknown key; did you mean "upstreams"\?/],
    ["unknown top-level key", { ...base(), tls: {} }, "tls", /unknown key \(known keys: service, datacenter/],
    ["service missing", { ...base(), service: undefined }, "service", /missing; want the name of the service/],
    ["service not a string", { ...base(), service: 42 }, "service", /^42: must be a non-empty string/],
    ["service not a name", { ...base(), service: "web app" }, "service", /"web app": not a valid service name/],
    ["datacenter empty", { ...base(), datacenter: "" }, "datacenter", /must be a non-empty string/],
    ["trust domain not DNS-like", { ...base(), trust_domain: "my domain" }, "trust_domain", /not a DNS-like name/],
    ["identity missing", { ...base(), identity: undefined }, "identity", /missing/],
    ["identity key_file missing", { ...base(), identity: { cert_file: "a.pem" } }, "identity.key_file", /missing; want the path/],
    ["identity unknown key", { ...base(), identity: { cert_file: "a", key_file: "b", ca_file: "c" } }, "identity.ca_file", /unknown key/],
    ["roots_files empty", { ...base(), roots_files: [] }, "roots_files", /non-empty list/],
    ["roots_files a string", { ...base(), roots_files: "root.pem" }, "roots_files", /non-empty list/],
    ["roots_files entry not a string", { ...base(), roots_files: ["a.pem", 5] }, "roots_files[1]", /^5: must be a non-empty string/],
    ["public bind port", { ...base(), public_listener: { bind: "0.0.0.0:99999", local_app: "127.0.0.1:8080" } }, "public_listener.bind", /"0.0.0.0:99999": port out of range/],
    ["public bind without port", { ...base(), public_listener: { bind: "0.0.0.0", local_app: "127.0.0.1:8080" } }, "public_listener.bind", /want host:port/],
    ["public bind IPv6 without brackets", { ...base(), public_listener: { bind: "::1:21000", local_app: "127.0.0.1:8080" } }, "public_listener.bind", /needs brackets/],
    ["local_app port 0", { ...base(), public_listener: { bind: "0.0.0.0:1", local_app: "127.0.0.1:0" } }, "public_listener.local_app", /port out of range \(1-65535\)/],
    ["local_app missing", { ...base(), public_listener: { bind: "0.0.0.0:1" } }, "public_listener.local_app", /missing/],
    ["protocol", { ...base(), public_listener: { bind: ":1", local_app: ":2", protocol: "udp" } }, "public_listener.protocol", /"udp": must be one of tcp, http, http2, grpc/],
    ["timeout zero", { ...base(), public_listener: { bind: ":1", local_app: ":2", handshake_timeout_ms: 0 } }, "public_listener.handshake_timeout_ms", /whole number of milliseconds/],
    ["timeout a duration string", { ...base(), public_listener: { bind: ":1", local_app: ":2", idle_timeout_ms: "1h" } }, "public_listener.idle_timeout_ms", /"1h": must be a whole number of milliseconds/],
    ["timeout beyond timers", { ...base(), public_listener: { bind: ":1", local_app: ":2", idle_timeout_ms: 2 ** 31 } }, "public_listener.idle_timeout_ms", /from 1 to 2147483647/],
    ["upstreams not a list", { ...base(), upstreams: { db: {} } }, "upstreams", /must be a list/],
    ["upstream port", upstreams(db(), { name: "cache", bind: "127.0.0.1:99999", endpoints: [] }), "upstreams[1].bind", /^"127.0.0.1:99999": port out of range/],
    ["upstream port not a number", upstreams(db({ bind: "127.0.0.1:http" })), "upstreams[0].bind", /port "http" is not a number/],
    ["upstream name missing", upstreams({ bind: "127.0.0.1:1", endpoints: [] }), "upstreams[0].name", /missing/],
    ["upstream name repeated", upstreams(db(), db({ bind: "127.0.0.1:2" })), "upstreams[1].name", /upstreams\[0\] has the same name/],
    ["upstream bind repeated", upstreams(db(), { name: "cache", bind: "127.0.0.1:8181", endpoints: [] }), "upstreams[1].bind", /upstreams\[0\] binds the same address/],
    ["upstream key typo", upstreams(db({ conect_timeout_ms: 1 })), "upstreams[0].conect_timeout_ms", /did you mean "connect_timeout_ms"/],
    ["upstream datacenter", upstreams(db({ datacenter: 1 })), "upstreams[0].datacenter", /must be a non-empty string/],
    ["upstream sni empty", upstreams(db({ sni: "" })), "upstreams[0].sni", /must be a non-empty string/],
    ["upstream spiffe_id", upstreams(db({ spiffe_id: "db" })), "upstreams[0].spiffe_id", /must be a spiffe:\/\/ URI/],
    ["endpoints missing", upstreams({ name: "db", bind: "127.0.0.1:1" }), "upstreams[0].endpoints", /missing/],
    ["endpoint without port", upstreams(db({ endpoints: ["10.0.0.5"] })), "upstreams[0].endpoints[0]", /want host:port/],
    ["endpoint without host", upstreams(db({ endpoints: [":21000"] })), "upstreams[0].endpoints[0]", /the host is missing/],
    ["endpoint port 0", upstreams(db({ endpoints: ["10.0.0.5:0"] })), "upstreams[0].endpoints[0]", /port out of range \(1-65535\)/],
    ["endpoint object port", upstreams(db({ endpoints: ["10.0.0.5:1", { address: "10.0.0.6", port: 70000 }] })), "upstreams[0].endpoints[1].port", /70000: port out of range/],
    ["endpoint object port as string", upstreams(db({ endpoints: [{ address: "10.0.0.6", port: "21000" }] })), "upstreams[0].endpoints[0].port", /must be a number/],
    ["endpoint address with port", upstreams(db({ endpoints: [{ address: "10.0.0.6:21000", port: 21000 }] })), "upstreams[0].endpoints[0].address", /not an IP address or host name/],
    ["endpoint healthy", upstreams(db({ endpoints: [{ address: "10.0.0.6", port: 1, healthy: "yes" }] })), "upstreams[0].endpoints[0].healthy", /must be true or false/],
    ["endpoint meta value", upstreams(db({ endpoints: [{ address: "10.0.0.6", port: 1, meta: { version: 2 } }] })), "upstreams[0].endpoints[0].meta.version", /must be strings/],
    ["endpoint unknown key", upstreams(db({ endpoints: [{ address: "10.0.0.6", port: 1, weight: 3 }] })), "upstreams[0].endpoints[0].weight", /unknown key/],
    ["endpoint repeated", upstreams(db({ endpoints: ["10.0.0.6:1", { address: "10.0.0.6", port: 1 }] })), "upstreams[0].endpoints[1]", /the same address as endpoints\[0\]/],
    ["intentions a list", { ...base(), intentions: [] }, "intentions", /must be an object/],
    ["default action", { ...base(), intentions: { default_action: "permit" } }, "intentions.default_action", /"permit": must be "allow" or "deny"/],
    ["intention source", { ...base(), intentions: { intentions: [{ source: "web app", destination: "db", action: "allow" }] } }, "intentions.intentions[0].source", /service name or "\*"/],
    ["intention action missing", { ...base(), intentions: { intentions: [{ source: "a", destination: "b" }] } }, "intentions.intentions[0].action", /missing/],
    [
      "intention repeated",
      { ...base(), intentions: { intentions: [{ source: "a", destination: "b", action: "allow" }, { source: "a", destination: "b", action: "deny" }] } },
      "intentions.intentions[1]",
      /a second intention for a => b/,
    ],
  ];
  for (const [name, input, path, reason] of cases) {
    let err: unknown = null;
    try {
      parse(input);
    } catch (e) {
      err = e;
    }
    if (!(err instanceof StaticConfigError)) {
      t.fail(`${name}: expected a StaticConfigError, got ${String(err)}`);
      continue;
    }
    t.equal(err.path, path, `${name}: names ${path || "the document"}`);
    t.match(err.reason, reason, `${name}: says why`);
    t.equal(err.message, path ? `proxy.json: ${path}: ${err.reason}` : `proxy.json: ${err.reason}`, `${name}: message is file: field: reason`);
  }
  t.throws(() => parse(upstreams(db(), { name: "cache", bind: "127.0.0.1:99999", endpoints: [] })), {
    message: 'proxy.json: upstreams[1].bind: "127.0.0.1:99999": port out of range (0-65535; 0 picks a free port)',
  });
});

// ---- with real files ----

interface Pki {
  readonly dir: string;
  readonly ca: CaMaterial;
  readonly leaves: Record<string, IssuedLeaf>;
  issue(service: string, opts?: { ca?: CaMaterial; dc?: string; spiffeId?: string }): Promise<IssuedLeaf>;
}

/** A temp dir with certs/root.pem and a leaf + key per service. */
async function pki(t: Teardown, services: string[] = ["web"]): Promise<Pki> {
  const dir = await tempDir(t, "meshproxy-static-");
  await mkdir(join(dir, "certs"));
  const ca = await createRootCa(TD);
  await writeFile(join(dir, "certs", "root.pem"), ca.certPem);
  const leaves: Record<string, IssuedLeaf> = {};
  const issue = async (service: string, opts: { ca?: CaMaterial; dc?: string; spiffeId?: string } = {}): Promise<IssuedLeaf> => {
    const spiffeId = opts.spiffeId ?? serviceSpiffeId({ trustDomain: TD, namespace: "default", datacenter: opts.dc ?? "dc1", service });
    return issueLeaf(opts.ca ?? ca, { spiffeId, commonName: service, ttlMs: 3600_000 });
  };
  for (const s of services) {
    const leaf = await issue(s);
    leaves[s] = leaf;
    await writeFile(join(dir, "certs", `${s}.pem`), leaf.certPem);
    await writeFile(join(dir, "certs", `${s}.key`), leaf.keyPem);
  }
  return { dir, ca, leaves, issue };
}

type Event = { kind: "snapshot"; snapshot: Snapshot } | { kind: "error"; error: ControlPlaneError } | { kind: "log"; message: string; level: string };

/** Records everything the control plane does, and lets a test wait for the next thing, never for a sleep. */
class Recorder {
  readonly events: Event[] = [];
  private waiters: Array<{ from: number; pred: (e: Event) => boolean; resolve: (e: Event) => void }> = [];
  readonly logger = createLogger({
    level: "debug",
    json: true,
    write: (line) => {
      const v: unknown = JSON.parse(line);
      if (typeof v !== "object" || v === null) return;
      const message = "@message" in v && typeof v["@message"] === "string" ? v["@message"] : "";
      const level = "@level" in v && typeof v["@level"] === "string" ? v["@level"] : "";
      this.push({ kind: "log", message, level });
    },
  });
  readonly handlers = {
    snapshot: (snapshot: Snapshot) => this.push({ kind: "snapshot", snapshot }),
    error: (error: ControlPlaneError) => this.push({ kind: "error", error }),
  };

  private push(e: Event): void {
    this.events.push(e);
    const i = this.events.length - 1;
    for (const w of [...this.waiters]) {
      if (i >= w.from && w.pred(e)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(e);
      }
    }
  }

  mark(): number {
    return this.events.length;
  }

  /** The first event at or after `from` that matches. */
  wait(from: number, pred: (e: Event) => boolean, what: string, timeoutMs = 10_000): Promise<Event> {
    const hit = this.events.slice(from).find(pred);
    if (hit) return Promise.resolve(hit);
    return new Promise<Event>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}; events: ${JSON.stringify(this.events.slice(from).map(describe))}`)), timeoutMs);
      this.waiters.push({ from, pred, resolve: (e) => (clearTimeout(timer), resolve(e)) });
    });
  }

  async nextChange(from: number): Promise<Event> {
    return this.wait(from, (e) => e.kind !== "log", "a snapshot or an error");
  }

  async log(from: number, message: string): Promise<void> {
    await this.wait(from, (e) => e.kind === "log" && e.message === message, `log "${message}"`);
  }

  /** Snapshots and errors since `from`. */
  changes(from: number): Event[] {
    return this.events.slice(from).filter((e) => e.kind !== "log");
  }
}

function describe(e: Event): string {
  if (e.kind === "snapshot") return `snapshot v${e.snapshot.version}`;
  if (e.kind === "error") return `error ${e.error.message}`;
  return `log ${e.message}`;
}

function snapshotOf(e: Event): Snapshot {
  if (e.kind !== "snapshot") throw new Error(`expected a snapshot, got ${describe(e)}`);
  return e.snapshot;
}

function errorOf(e: Event): ControlPlaneError {
  if (e.kind !== "error") throw new Error(`expected an error, got ${describe(e)}`);
  return e.error;
}

async function writeConfig(dir: string, cfg: Json | string, name = "proxy.json"): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, typeof cfg === "string" ? cfg : JSON.stringify(cfg, null, 2));
  return file;
}

async function started(t: Teardown, file: string): Promise<{ cp: StaticControlPlane; rec: Recorder; first: Snapshot }> {
  const rec = new Recorder();
  const cp = new StaticControlPlane({ file, logger: rec.logger, pollMs: 200 });
  t.teardown(() => cp.stop());
  await cp.start(rec.handlers);
  return { cp, rec, first: snapshotOf(await rec.nextChange(0)) };
}

/**
 * A bad first read: start() neither resolves nor rejects (the proxy waits, not ready), the
 * problem is reported as an error, and no Snapshot is delivered. stop() ends the wait.
 */
async function startError(t: Teardown, file: string): Promise<{ error: ControlPlaneError; pending: boolean; snapshots: number; stopped: unknown }> {
  const rec = new Recorder();
  const cp = new StaticControlPlane({ file, logger: rec.logger, pollMs: 50 });
  t.teardown(() => cp.stop());
  let settled = false;
  // The outcome is taken at once: stop() rejects start(), and a rejection nobody has handled yet
  // when stop() settles it would be reported as unhandled.
  const outcome: Promise<unknown> = cp
    .start(rec.handlers)
    .then(
      () => "resolved",
      (e: unknown) => e,
    )
    .finally(() => (settled = true));
  const error = errorOf(await rec.nextChange(0));
  // A few polls later it is still waiting: the bad file never became a Snapshot.
  await new Promise((r) => setTimeout(r, 200));
  const pending = !settled;
  const snapshots = rec.changes(0).filter((e) => e.kind === "snapshot").length;
  await cp.stop();
  const stopped = await outcome;
  return { error, pending, snapshots, stopped };
}

t.test("a good file becomes a valid Snapshot with the leaf's identity", async (t) => {
  const p = await pki(t);
  const other = await createRootCa(TD, { commonName: "old root" });
  await writeFile(join(p.dir, "certs", "old-roots.pem"), other.certPem + (await createRootCa(TD)).certPem);
  const file = await writeConfig(p.dir, {
    ...upstreams(db(), { name: "alias", bind: "127.0.0.1:0", datacenter: "dc2", endpoints: ["127.0.0.1:1"], sni: "x.example", spiffe_id: `spiffe://${TD}/ns/default/dc/dc2/svc/db` }),
    roots_files: ["certs/root.pem", "certs/old-roots.pem"],
    intentions: { default_action: "deny", intentions: [{ source: "api", destination: "web", action: "allow" }] },
  });
  const { cp, first: s, rec } = await started(t, file);
  const leaf = p.leaves["web"]!;
  t.equal(s.version, 1);
  t.equal(s.source, "static");
  t.equal(s.identity.service, "web");
  t.equal(s.identity.namespace, "default");
  t.equal(s.identity.datacenter, "dc1");
  t.equal(s.identity.trustDomain, TD, "trust domain from the leaf's SPIFFE ID");
  t.equal(s.identity.spiffeId, `spiffe://${TD}/ns/default/dc/dc1/svc/web`);
  t.equal(s.identity.serial, leaf.serial, "Consul colon-hex serial");
  t.equal(Math.floor(s.identity.notAfter.getTime() / 1000), Math.floor(leaf.notAfter.getTime() / 1000));
  t.equal(Math.floor(s.identity.notBefore.getTime() / 1000), Math.floor(leaf.notBefore.getTime() / 1000));
  t.equal(s.identity.certChainPem, leaf.certPem);
  t.equal(s.trust.trustDomain, TD);
  t.equal(s.trust.rootsPem.length, 3, "every certificate in every roots file is trusted");
  t.same(s.publicListener?.bind, { host: "0.0.0.0", port: 21000 });
  t.same(
    s.upstreams.map((u) => [u.name, u.cluster, u.bind.port]),
    [
      ["db", "db", 8181],
      ["alias", "alias", 0],
    ],
  );
  t.equal(s.clusters["db"]?.sni, serviceSni("db", "default", "dc1", TD), "Consul-format SNI by default");
  t.equal(s.clusters["db"]?.expectedSpiffeId, `spiffe://${TD}/ns/default/dc/dc1/svc/db`);
  t.same(s.clusters["db"]?.endpoints.map((e) => e.id), ["10.0.0.5:21000"]);
  t.equal(s.clusters["alias"]?.sni, "x.example", "sni override");
  t.equal(s.clusters["alias"]?.expectedSpiffeId, `spiffe://${TD}/ns/default/dc/dc2/svc/db`, "spiffe_id override");
  t.equal(s.clusters["alias"]?.datacenter, "dc2");
  t.same(s.intentions, { defaultAction: "deny", intentions: [{ source: "api", destination: "web", action: "allow" }] });
  t.doesNotThrow(() => validateSnapshot(s), "passes the proxy's validation");
  await t.resolves(cp.announce({ address: "127.0.0.1", port: 21000, protocol: "tcp" }), "announce is a no-op");
  await t.resolves(cp.withdraw(), "withdraw is a no-op");
  t.equal(rec.changes(0).length, 1, "one snapshot, no errors");
});

t.test("a bad first read: start() waits, no Snapshot, an error naming the field; stop() ends the wait", async (t) => {
  const expectRefused = async (name: string, file: string, pattern: RegExp) => {
    const r = await startError(t, file);
    t.equal(r.error.fatal, false, `${name}: not fatal (the proxy waits for a fix)`);
    t.equal(r.error.resource, "static");
    t.match(r.error.message, pattern, `${name}: ${r.error.message}`);
    t.match(r.error.message, /the proxy is not serving \(not ready, no listeners\) until the file is fixed$/, `${name}: says nothing is served`);
    t.ok(r.pending, `${name}: start() still waiting`);
    t.equal(r.snapshots, 0, `${name}: no Snapshot delivered`);
    t.ok(r.stopped instanceof ControlPlaneError, `${name}: stop() ends start() with an error`);
  };
  const p = await pki(t, ["web", "db"]);
  const cfg = (over: Json) => writeConfig(p.dir, { ...base(), ...over }, `c${Math.random().toString(36).slice(2)}.json`);

  await expectRefused("missing config", join(p.dir, "nope.json"), /^static: .*nope\.json: cannot read \(ENOENT/);
  await expectRefused("bad field", await cfg({ datacenter: "" }), /\.json: datacenter: "": must be a non-empty string/);
  await expectRefused("service does not match the leaf", await cfg({ identity: { cert_file: "certs/db.pem", key_file: "certs/db.key" } }), /: service: "web", but the leaf certificate .*db\.pem is for service "db"/);
  await expectRefused("key from another leaf", await cfg({ identity: { cert_file: "certs/web.pem", key_file: "certs/db.key" } }), /: identity\.key_file: .*db\.key: does not match the leaf certificate in .*web\.pem/);
  await expectRefused("missing cert", await cfg({ identity: { cert_file: "certs/nope.pem", key_file: "certs/web.key" } }), /: identity\.cert_file: .*nope\.pem: cannot read \(ENOENT/);
  await expectRefused("key not PEM", await cfg({ identity: { cert_file: "certs/web.pem", key_file: "certs/root.pem" } }), /: identity\.key_file: .*root\.pem: not a PEM private key/);
  await expectRefused("cert not PEM", await cfg({ identity: { cert_file: "certs/web.key", key_file: "certs/web.key" } }), /: identity\.cert_file: .*web\.key: no PEM certificate found/);
  await expectRefused("CA first in cert_file", await cfg({ identity: { cert_file: "certs/root.pem", key_file: "certs/web.key" } }), /: identity\.cert_file: .*the first certificate is a CA certificate/);
  await expectRefused("roots not PEM", await cfg({ roots_files: ["certs/web.key"] }), /: roots_files\[0\]: .*web\.key: no PEM certificate found/);

  const stranger = await createRootCa(TD, { commonName: "another CA" });
  await writeFile(join(p.dir, "certs", "stranger.pem"), stranger.certPem);
  await expectRefused("leaf from another CA", await cfg({ roots_files: ["certs/stranger.pem"] }), /: identity\.cert_file: .*web\.pem: the leaf \(issuer CN=meshproxy dev CA\) is not signed by any certificate in roots_files/);

  const dc2 = await p.issue("web", { dc: "dc2" });
  await writeFile(join(p.dir, "certs", "web-dc2.pem"), dc2.certPem);
  await writeFile(join(p.dir, "certs", "web-dc2.key"), dc2.keyPem);
  await expectRefused("leaf for another datacenter", await cfg({ identity: { cert_file: "certs/web-dc2.pem", key_file: "certs/web-dc2.key" } }), /: datacenter: "dc1", but the leaf certificate .* is for datacenter "dc2"/);

  const agent = await p.issue("web", { spiffeId: `spiffe://${TD}/agent/client/dc/dc1/id/node1` });
  await writeFile(join(p.dir, "certs", "agent.pem"), agent.certPem);
  await writeFile(join(p.dir, "certs", "agent.key"), agent.keyPem);
  await expectRefused("not a service identity", await cfg({ identity: { cert_file: "certs/agent.pem", key_file: "certs/agent.key" } }), /: identity\.cert_file: .*is not a SPIFFE service ID/);
});

t.test("fail closed: an unreadable intentions block at start serves nothing; the fix starts it", async (t) => {
  const p = await pki(t);
  // default_action deny with a typo in the list: the block cannot be read, so nothing may be
  // served (least of all with the allow-all default an absent block would mean).
  const file = await writeConfig(p.dir, { ...upstreams(db()), intentions: { default_action: "deny", intentions: [{ source: "api", destination: "web", action: "alow" }] } });
  const rec = new Recorder();
  const cp = new StaticControlPlane({ file, logger: rec.logger, pollMs: 50 });
  t.teardown(() => cp.stop());
  let settled = false;
  const start = cp.start(rec.handlers).finally(() => (settled = true));
  const e = errorOf(await rec.nextChange(0));
  t.match(e.message, /intentions\.intentions\[0\]\.action: "alow": must be "allow" or "deny"/, "the error names the field");
  t.equal(e.fatal, false, "not fatal: the proxy waits for a fix");
  t.notOk(settled, "start() is still waiting");

  const m = rec.mark();
  await writeConfig(p.dir, { ...upstreams(db()), intentions: { default_action: "deny", intentions: [{ source: "api", destination: "web", action: "allow" }] } });
  const s = snapshotOf(await rec.nextChange(m));
  await start;
  t.ok(settled, "the fix resolves start() without a restart");
  t.equal(s.version, 1, "the first Snapshot is the fixed file's");
  t.same(s.intentions, { defaultAction: "deny", intentions: [{ source: "api", destination: "web", action: "allow" }] }, "with the deny default in force");
  await rec.log(m, "loaded static configuration");
});

t.test("live: an edit becomes a new Snapshot; a touch or a reformat does not", async (t) => {
  const p = await pki(t);
  const cfg = upstreams(db());
  const file = await writeConfig(p.dir, cfg);
  const { rec } = await started(t, file);

  let m = rec.mark();
  await writeConfig(p.dir, upstreams(db({ endpoints: ["10.0.0.5:21000", "10.0.0.6:21000"] })));
  const s2 = snapshotOf(await rec.nextChange(m));
  t.equal(s2.version, 2);
  t.same(s2.clusters["db"]?.endpoints.map((e) => e.id), ["10.0.0.5:21000", "10.0.0.6:21000"], "the added endpoint is there");

  m = rec.mark();
  await writeConfig(p.dir, upstreams(db({ endpoints: ["10.0.0.5:21000", "10.0.0.6:21000"] })));
  await rec.log(m, "files re-read; contents unchanged");
  t.same(rec.changes(m), [], "rewriting the same bytes makes no Snapshot");

  m = rec.mark();
  await writeConfig(p.dir, JSON.stringify(upstreams(db({ endpoints: ["10.0.0.5:21000", "10.0.0.6:21000"] }))));
  await rec.log(m, "files changed; the resulting snapshot did not");
  t.same(rec.changes(m), [], "reformatting makes no Snapshot");

  m = rec.mark();
  await writeConfig(p.dir, { ...upstreams(db({ endpoints: ["10.0.0.5:21000", "10.0.0.6:21000"] })), intentions: { default_action: "deny" } });
  const s3 = snapshotOf(await rec.nextChange(m));
  t.equal(s3.version, 3, "versions count real changes only");
  t.equal(s3.intentions.defaultAction, "deny");
});

t.test("live: a broken edit is reported once and ignored; the fix applies", async (t) => {
  const p = await pki(t);
  const file = await writeConfig(p.dir, upstreams(db()));
  const { rec } = await started(t, file);

  let m = rec.mark();
  await writeConfig(p.dir, '{ "service": "web", ');
  const e1 = errorOf(await rec.nextChange(m));
  t.equal(e1.fatal, false, "not fatal once running");
  t.match(e1.message, /^static: .*proxy\.json: not valid JSON/);

  m = rec.mark();
  await writeConfig(p.dir, upstreams(db({ bind: "127.0.0.1:99999" })));
  const e2 = errorOf(await rec.nextChange(m));
  t.match(e2.message, /proxy\.json: upstreams\[0\]\.bind: "127\.0\.0\.1:99999": port out of range/, "a different problem is reported");

  m = rec.mark();
  await writeConfig(p.dir, upstreams(db({ bind: "127.0.0.1:99999", endpoints: ["10.0.0.7:1"] })));
  await rec.log(m, "files changed; the same problem as already reported");
  t.same(rec.changes(m), [], "the same problem is not reported again");

  m = rec.mark();
  await writeConfig(p.dir, upstreams(db({ endpoints: ["10.0.0.7:1"] })));
  const s = snapshotOf(await rec.nextChange(m));
  t.equal(s.version, 2, "no Snapshot came from the broken edits");
  t.same(s.clusters["db"]?.endpoints.map((e) => e.id), ["10.0.0.7:1"]);

  m = rec.mark();
  await writeConfig(p.dir, '{ "service": "web", ');
  t.match(errorOf(await rec.nextChange(m)).message, /not valid JSON/, "after a good load, an old problem is news again");

  m = rec.mark();
  await writeConfig(p.dir, upstreams(db({ endpoints: ["10.0.0.7:1"] })));
  await rec.log(m, "static configuration is valid again; unchanged from the one serving");
  t.same(rec.changes(m), [], "fixing back to the serving config makes no Snapshot, but says so");
});

t.test("live: rotating the leaf; a half-done rotation is reported until the pair is complete", async (t) => {
  const p = await pki(t);
  const file = await writeConfig(p.dir, upstreams(db()));
  const { rec, first } = await started(t, file);
  const certFile = join(p.dir, "certs", "web.pem");
  const keyFile = join(p.dir, "certs", "web.key");

  // Both files at once, each by rename, as a careful rotation tool writes them.
  const next = await p.issue("web");
  let m = rec.mark();
  await writeFile(`${keyFile}.tmp`, next.keyPem);
  await writeFile(`${certFile}.tmp`, next.certPem);
  await rename(`${keyFile}.tmp`, keyFile);
  await rename(`${certFile}.tmp`, certFile);
  const s2 = snapshotOf(await rec.wait(m, (e) => e.kind === "snapshot", "a snapshot"));
  t.not(s2.identity.serial, first.identity.serial);
  t.equal(s2.identity.serial, next.serial, "the new leaf's serial");
  t.equal(s2.identity.certChainPem, next.certPem);

  // The certificate alone: the key no longer matches, so the old pair keeps serving.
  const third = await p.issue("web");
  m = rec.mark();
  await writeFile(certFile, third.certPem);
  const e = errorOf(await rec.nextChange(m));
  t.match(e.message, /identity\.key_file: .*web\.key: does not match the leaf certificate/);
  m = rec.mark();
  await writeFile(keyFile, third.keyPem);
  const s3 = snapshotOf(await rec.nextChange(m));
  t.equal(s3.identity.serial, third.serial, "the completed pair applies");

  // A new root appended to the roots file (CA rotation): trusted alongside the old one.
  const newRoot = await createRootCa(TD, { commonName: "next root" });
  m = rec.mark();
  await writeFile(join(p.dir, "certs", "root.pem"), p.ca.certPem + newRoot.certPem);
  const s4 = snapshotOf(await rec.nextChange(m));
  t.equal(s4.trust.rootsPem.length, 2);
  t.equal(s4.identity.serial, third.serial, "the leaf is unchanged");
});

t.test("live: moving the PEM files to another directory moves the watch", async (t) => {
  const p = await pki(t);
  const file = await writeConfig(p.dir, upstreams(db()));
  const { rec } = await started(t, file);
  const elsewhere = join(p.dir, "elsewhere");
  await mkdir(elsewhere);
  const leaf = await p.issue("web");
  await writeFile(join(elsewhere, "web.pem"), leaf.certPem);
  await writeFile(join(elsewhere, "web.key"), leaf.keyPem);

  let m = rec.mark();
  await writeConfig(p.dir, { ...upstreams(db()), identity: { cert_file: "elsewhere/web.pem", key_file: "elsewhere/web.key" } });
  t.equal(snapshotOf(await rec.nextChange(m)).identity.serial, leaf.serial);

  const rotated = await p.issue("web");
  m = rec.mark();
  await writeFile(join(elsewhere, "web.key.tmp"), rotated.keyPem);
  await writeFile(join(elsewhere, "web.pem.tmp"), rotated.certPem);
  await rename(join(elsewhere, "web.key.tmp"), join(elsewhere, "web.key"));
  await rename(join(elsewhere, "web.pem.tmp"), join(elsewhere, "web.pem"));
  t.equal(snapshotOf(await rec.wait(m, (e) => e.kind === "snapshot", "a snapshot")).identity.serial, rotated.serial, "a change in the new directory is seen");
});

t.test("live: a PEM file that disappears is reported; its return applies", async (t) => {
  const p = await pki(t);
  const file = await writeConfig(p.dir, upstreams(db()));
  const { rec } = await started(t, file);
  const keyFile = join(p.dir, "certs", "web.key");
  const key = await readFile(keyFile, "utf8");

  let m = rec.mark();
  await rename(keyFile, `${keyFile}.bak`);
  t.match(errorOf(await rec.nextChange(m)).message, /identity\.key_file: .*web\.key: cannot read \(ENOENT/);

  const leaf = await p.issue("web");
  m = rec.mark();
  await writeFile(join(p.dir, "certs", "web.pem"), leaf.certPem);
  await writeFile(keyFile, leaf.keyPem);
  t.equal(snapshotOf(await rec.wait(m, (e) => e.kind === "snapshot", "a snapshot")).identity.serial, leaf.serial);
  t.not(key, leaf.keyPem);
});

t.test("live: a FIFO, a directory or a huge file in place of a PEM file is reported, never waited on; the fix applies and stop() returns", async (t) => {
  const p = await pki(t);
  const file = await writeConfig(p.dir, upstreams(db()));
  const { cp, rec } = await started(t, file);
  const certFile = join(p.dir, "certs", "web.pem");
  const good = await readFile(certFile, "utf8");
  const swap = async (make: (tmp: string) => Promise<void>): Promise<void> => {
    const tmp = join(p.dir, "certs", "swap.tmp");
    await make(tmp);
    await rm(certFile, { recursive: true, force: true });
    await rename(tmp, certFile);
  };

  let m = rec.mark();
  await swap(async (tmp) => void execFileSync("mkfifo", [tmp]));
  t.match(errorOf(await rec.nextChange(m)).message, /identity\.cert_file: .*web\.pem: cannot read: not a regular file \(a FIFO\)/, "a FIFO: reported, not opened for a writer that never comes");

  m = rec.mark();
  await swap((tmp) => mkdir(tmp));
  t.match(errorOf(await rec.nextChange(m)).message, /web\.pem: cannot read \(EISDIR/, "a directory");

  m = rec.mark();
  await swap(async (tmp) => {
    await writeFile(tmp, "");
    await truncate(tmp, MAX_STATIC_FILE_BYTES + 1);
  });
  t.match(errorOf(await rec.nextChange(m)).message, new RegExp(`web\\.pem: cannot read: ${MAX_STATIC_FILE_BYTES + 1} bytes, larger than ${MAX_STATIC_FILE_BYTES}`), "a file past the bound: refused unread");

  const leaf = await p.issue("web");
  m = rec.mark();
  await writeFile(join(p.dir, "certs", "web.key"), leaf.keyPem);
  await swap((tmp) => writeFile(tmp, leaf.certPem));
  t.equal(snapshotOf(await rec.wait(m, (e) => e.kind === "snapshot", "a snapshot")).identity.serial, leaf.serial, "the fix applies");
  t.not(good, leaf.certPem);

  await swap(async (tmp) => void execFileSync("mkfifo", [tmp]));
  await rec.wait(rec.mark(), (e) => e.kind === "error", "the FIFO reported again");
  const stopped = await Promise.race([cp.stop().then(() => "stopped"), sleep(5000).then(() => "stuck")]);
  t.equal(stopped, "stopped", "stop() returns");
});

t.test("CLI: -config-file selects the static control plane and stands alone", async (t) => {
  const saved = { ...process.env };
  for (const k of ["CONSUL_HTTP_ADDR", "CONNECT_PROXY_ID", "CONNECT_SIDECAR_FOR"]) delete process.env[k];
  t.teardown(() => {
    process.env = saved;
  });
  const run = async (argv: string[]): Promise<{ code: number; cmd: ProxyCommand | null; err: string }> => {
    let cmd: ProxyCommand | null = null;
    let err = "";
    const code = await runCli(
      argv,
      {
        proxy: async (c) => {
          cmd = c;
          return 0;
        },
        intention: async () => 0,
        demo: async () => 0,
        config: async () => 0,
        canary: async () => 0,
        ca: async () => 0,
      },
      (s) => {
        err += s;
      },
    );
    return { code, cmd, err };
  };

  const ok = await run(["-config-file", "proxy.json", "-data-dir", "/tmp/unused", "-log-level", "debug"]);
  t.equal(ok.code, 0, ok.err);
  t.equal(ok.cmd?.configFile, "proxy.json", "carried into ProxyCommand");
  t.equal(ok.cmd?.consul, null);

  const dflt = await run(["-service", "web"]);
  t.equal(dflt.cmd?.configFile, undefined, "absent without the flag");

  const clash = await run(["-config-file", "proxy.json", "-service", "web", "-upstream", "db:8181"]);
  t.equal(clash.code, 2);
  t.match(clash.err, /-config-file cannot be combined with -service, -upstream: the file sets/);

  const listen = await run(["-config-file", "proxy.json", "-listen", ":21000", "-service-addr", ":8080"]);
  t.equal(listen.code, 2);
  t.match(listen.err, /cannot be combined with -listen, -service-addr/);

  const consul = await run(["-config-file", "proxy.json", "-http-addr", "127.0.0.1:8500"]);
  t.equal(consul.code, 2);
  t.match(consul.err, /-config-file selects the static control plane and -http-addr .* the Consul one: give only one/);

  const empty = await run(["-config-file", ""]);
  t.equal(empty.code, 2);
  t.match(empty.err, /-config-file: give the path/);
});
