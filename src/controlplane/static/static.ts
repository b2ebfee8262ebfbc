// The static control plane: one JSON file (plus the PEM files it names) is the whole truth.
// Both are watched; a good edit becomes a new Snapshot, a broken one is reported once and
// ignored, so the proxy keeps serving on the last good configuration. It fails closed: when the
// first read is bad, start() reports it and waits (the proxy binds nothing and is not ready)
// until the files are fixed, then starts without a restart.
import { CoalescedRun } from "../coalesce.js";
import { watch, type FSWatcher } from "node:fs";
import { stat } from "node:fs/promises";
import { NotAFileError, readRegularFile } from "../read-file.js";
import { setTimeout as sleep } from "node:timers/promises";
import { createHash, type Hash } from "node:crypto";
import { dirname } from "node:path";
import { ControlPlaneError, type Announcement, type ControlPlane, type ControlPlaneHandlers } from "../controlplane.js";
import type { Snapshot } from "../../config/snapshot.js";
import { logRejection, type Logger } from "../../telemetry/log.js";
import { parseStaticConfig, StaticConfigError, type StaticConfig } from "./config.js";
import { buildMaterial } from "./material.js";
import { buildStaticSnapshot } from "./build.js";

export interface StaticControlPlaneOptions {
  /** The config file; PEM paths inside it are relative to its directory. */
  readonly file: string;
  readonly logger: Logger;
  /** Fallback poll for filesystems where fs.watch misses events. Default 1000 ms. */
  readonly pollMs?: number;
}

/**
 * Editors and `cp` write a file in several steps, and a rotation rewrites cert and key one
 * after the other: wait this long after the first event so one re-read sees the finished set.
 */
const SETTLE_MS = 100;

type Load =
  | { readonly ok: true; readonly inputs: string; readonly snapshot: Snapshot; readonly warnings: readonly string[] }
  | { readonly ok: false; readonly inputs: string; readonly problem: string };

export class StaticControlPlane implements ControlPlane {
  readonly kind = "static";
  private readonly log: Logger;
  private handlers: ControlPlaneHandlers | null = null;
  private version = 0;
  /** The last Snapshot delivered, minus its version: only a real change makes a new one. */
  private lastFingerprint = "";
  /** Hash of the file contents last processed: a touched-but-unchanged set is skipped. */
  private lastInputs = "";
  /** The config file and the PEM files named by the last config that parsed. */
  private files: readonly string[];
  private lastStat = "";
  private readonly watchers = new Map<string, FSWatcher>();
  private poll: NodeJS.Timeout | null = null;
  private settle: NodeJS.Timeout | null = null;
  private readonly refresher = new CoalescedRun(() => this.reload(), () => this.stopped);
  private stopped = false;
  /** Problems already reported since the last good load: each is said once, not every poll. */
  private readonly reported = new Set<string>();
  private readonly warned = new Set<string>();
  /** Settles start(): the first Snapshot delivered, or stop() before one could be. */
  private first: { resolve: () => void; reject: (e: Error) => void } | null = null;

  constructor(private readonly opts: StaticControlPlaneOptions) {
    this.log = opts.logger.child("static-cp");
    this.files = [opts.file];
  }

  async start(handlers: ControlPlaneHandlers): Promise<void> {
    this.handlers = handlers;
    const delivered = new Promise<void>((resolve, reject) => (this.first = { resolve, reject }));
    // stop() may settle it before start() awaits it: that is not an unhandled rejection.
    delivered.catch((e: unknown) => this.log.debug("stopped while waiting for a first valid configuration", { error: e instanceof Error ? e.message : String(e) }));
    const first = await this.load();
    this.lastInputs = first.inputs;
    if (first.ok) {
      this.warn(first.warnings);
      this.deliver(first.snapshot);
    } else {
      // Not fatal: the operator fixes the file and the proxy starts, as it would on a later edit.
      this.reported.add(first.problem);
      handlers.error(new ControlPlaneError(this.kind, `${first.problem}; the proxy is not serving (not ready, no listeners) until the file is fixed`));
    }
    this.syncWatchers();
    // lastStat stays empty, so the first poll re-reads: an edit made between the read above and
    // the watches starting is not lost (and an unchanged set costs one hash comparison).
    this.poll = setInterval(() => {
      this.checkStat().catch(logRejection(this.log, `checking ${this.opts.file} for changes`));
    }, this.opts.pollMs ?? 1000);
    this.poll.unref();
    if (this.stopped) this.first?.reject(new ControlPlaneError(this.kind, "stopped before the first snapshot", true));
    await delivered;
  }

  /** Reads and checks everything. A bad file is a value to report; only a bug throws. */
  private async load(): Promise<Load> {
    const hash = createHash("sha256");
    const file = this.opts.file;
    try {
      const text = await readText(hash, file, file, "", "");
      const cfg = parseStaticConfig(text, file);
      this.files = [file, cfg.identity.certFile, cfg.identity.keyFile, ...cfg.rootsFiles];
      const { certFile, keyFile } = cfg.identity;
      const cert = await readText(hash, certFile, file, "identity.cert_file", `${certFile}: `);
      const key = await readText(hash, keyFile, file, "identity.key_file", `${keyFile}: `);
      const roots: string[] = [];
      // One after the other: the hash must see the files in a fixed order.
      for (const [i, f] of cfg.rootsFiles.entries()) roots.push(await readText(hash, f, file, `roots_files[${i}]`, `${f}: `));
      const material = buildMaterial(cfg, { cert, key, roots }, file);
      return { ok: true, inputs: hash.digest("hex"), snapshot: buildStaticSnapshot(cfg, material, this.version + 1), warnings: material.warnings };
    } catch (e) {
      if (!(e instanceof StaticConfigError)) throw e;
      return { ok: false, inputs: hash.digest("hex"), problem: e.message };
    }
  }

  private deliver(s: Snapshot): boolean {
    const fingerprint = JSON.stringify({ ...s, version: 0 });
    if (fingerprint === this.lastFingerprint) return false;
    this.lastFingerprint = fingerprint;
    this.version = s.version;
    this.handlers?.snapshot(s);
    if (this.first) {
      this.log.info("loaded static configuration", { file: this.opts.file, service: s.identity.service, serial: s.identity.serial });
      this.first.resolve();
      this.first = null;
    }
    return true;
  }

  private warn(warnings: readonly string[]): void {
    for (const w of warnings) {
      if (this.warned.has(w)) continue;
      this.warned.add(w);
      this.log.warn(w, { file: this.opts.file });
    }
  }

  private async reload(): Promise<void> {
    let r = await this.load();
    if (!r.ok && r.inputs !== this.lastInputs) {
      // A file caught mid-write, or a cert written a moment before its key, looks broken but
      // heals itself: look again before reporting, so only a problem that stays is reported.
      await sleep(SETTLE_MS);
      if (this.stopped) return;
      r = await this.load();
    }
    if (this.stopped) return;
    this.syncWatchers();
    if (r.inputs === this.lastInputs) {
      this.log.debug("files re-read; contents unchanged", { file: this.opts.file });
      return;
    }
    this.lastInputs = r.inputs;
    if (!r.ok) {
      if (this.reported.has(r.problem)) {
        this.log.debug("files changed; the same problem as already reported", { file: this.opts.file });
        return;
      }
      this.reported.add(r.problem);
      this.handlers?.error(new ControlPlaneError(this.kind, r.problem));
      return;
    }
    const recovered = this.reported.size > 0;
    this.reported.clear();
    this.warn(r.warnings);
    const firstDelivery = this.first !== null;
    if (this.deliver(r.snapshot)) {
      if (firstDelivery) return;
      this.log.info("static configuration changed", { file: this.opts.file, version: r.snapshot.version, serial: r.snapshot.identity.serial });
    } else if (recovered) {
      // Back to what is already serving: say so, or the last word in the log is the error.
      this.log.info("static configuration is valid again; unchanged from the one serving", { file: this.opts.file, version: this.version });
    } else {
      this.log.debug("files changed; the resulting snapshot did not", { file: this.opts.file });
    }
  }

  private refresh(): Promise<void> {
    return this.refresher.run();
  }

  private scheduleRefresh(): void {
    if (this.stopped || this.settle) return;
    this.settle = setTimeout(() => {
      this.settle = null;
      this.refresh().catch(logRejection(this.log, `re-reading the static configuration ${this.opts.file}`));
    }, SETTLE_MS);
    this.settle.unref();
  }

  /**
   * Watches the directories, not the files: editors and `mv` replace a file with a new inode,
   * and Kubernetes swaps a symlinked directory; a watch on the old file would go quiet. Any
   * event in the directory triggers a re-read; unchanged contents are skipped by hash.
   */
  private syncWatchers(): void {
    if (this.stopped) return;
    const dirs = new Set(this.files.map((f) => dirname(f)));
    for (const [dir, w] of this.watchers) {
      if (dirs.has(dir)) continue;
      w.close();
      this.watchers.delete(dir);
    }
    for (const dir of dirs) {
      if (this.watchers.has(dir)) continue;
      try {
        const w = watch(dir, { persistent: false }, () => this.scheduleRefresh());
        w.on("error", (e) => {
          this.log.debug("directory watch failed; relying on polling", { dir, error: e.message });
          w.close();
          if (this.watchers.get(dir) === w) this.watchers.delete(dir);
        });
        this.watchers.set(dir, w);
      } catch (e) {
        // A missing directory is normal until the operator creates it; the poll sees it appear.
        this.log.debug("cannot watch directory; relying on polling", { dir, error: e instanceof Error ? e.message : String(e) });
      }
    }
  }

  /** The poll: cheap stats, and a re-read only when one of them moved. */
  private async checkStat(): Promise<void> {
    if (this.stopped) return;
    const sig = await this.statSignature();
    if (sig === this.lastStat) return;
    this.lastStat = sig;
    this.scheduleRefresh();
  }

  private async statSignature(): Promise<string> {
    const parts = await Promise.all(
      this.files.map(async (f) => {
        try {
          const s = await stat(f);
          return `${f}:${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
        } catch (e) {
          return `${f}:${e instanceof Error && "code" in e ? String(e.code) : "error"}`;
        }
      }),
    );
    return parts.join("\n");
  }

  announce(a: Announcement): Promise<void> {
    this.log.debug("no catalog to register in; peers reach this proxy through their own static endpoints", { address: `${a.address}:${a.port}` });
    return Promise.resolve();
  }

  withdraw(): Promise<void> {
    this.log.debug("no catalog to deregister from");
    return Promise.resolve();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.first?.reject(new ControlPlaneError(this.kind, "stopped before the configuration file was valid", true));
    this.first = null;
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
    if (this.poll) clearInterval(this.poll);
    if (this.settle) clearTimeout(this.settle);
    this.poll = null;
    this.settle = null;
    await this.refresher.settled();
  }
}

/** Reads a file into the running hash; a read failure is a config error against `field`. */
async function readText(hash: Hash, path: string, configFile: string, field: string, prefix: string): Promise<string> {
  try {
    const text = await readRegularFile(path);
    hash.update(`${path}\0${text}\0`);
    return text;
  } catch (e) {
    const why = e instanceof NotAFileError && e.code !== "EISDIR" ? `cannot read: ${e.message}` : `cannot read (${e instanceof Error ? e.message : String(e)})`;
    hash.update(`${path}\0!${why}\0`);
    throw new StaticConfigError(configFile, field, `${prefix}${why}`);
  }
}

export type { StaticConfig };
