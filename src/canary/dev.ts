// The dev control plane's side of a rollout: the splitter file under <data-dir>/config/, written
// with the same check-and-set Consul has (its version is a digest of the file), and the sidecars
// to read from <data-dir>/sidecars/ (every running sidecar lists its admin address there).
import { readEntryVersioned, writeEntryCas, StateError } from "../controlplane/dev/state.js";
import { EntryError, parseEntry } from "../controlplane/chain/entries.js";
import { LockError } from "../controlplane/dev/lock.js";
import { listSidecars } from "../controlplane/dev/sidecars.js";
import { ControlPlaneUnavailable, SplitterError, type SplitterRecord, type SplitterStore } from "./store.js";
import type { TargetDirectory, TargetList } from "./observe.js";

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

export class DevSplitterStore implements SplitterStore {
  readonly where: string;

  constructor(
    private readonly dataDir: string,
    private readonly service: string,
  ) {
    this.where = `the dev state directory ${dataDir}`;
  }

  async read(): Promise<SplitterRecord | null> {
    try {
      const r = await readEntryVersioned(this.dataDir, "service-splitter", this.service);
      if (r === null) return null;
      if (!isRecord(r.raw)) throw new SplitterError(`service-splitter "${this.service}" in ${this.where} is not a JSON object`);
      return { raw: r.raw, version: r.version };
    } catch (e) {
      if (e instanceof StateError && e.message.includes("cannot be read")) throw new ControlPlaneUnavailable(e.message);
      if (e instanceof StateError) throw new SplitterError(e.message);
      throw e;
    }
  }

  async subsets(): Promise<readonly string[] | null> {
    try {
      const r = await readEntryVersioned(this.dataDir, "service-resolver", this.service);
      if (r === null) return null;
      const e = parseEntry(r.raw, `service-resolver "${this.service}"`);
      return e.kind === "service-resolver" ? Object.keys(e.subsets) : null;
    } catch (e) {
      if (e instanceof StateError && e.message.includes("cannot be read")) throw new ControlPlaneUnavailable(e.message);
      if (e instanceof StateError || e instanceof EntryError) throw new SplitterError(e.message);
      throw e;
    }
  }

  async write(raw: Record<string, unknown>, version: string | null): Promise<boolean> {
    try {
      return (await writeEntryCas(this.dataDir, raw, `service-splitter "${this.service}"`, { version })).written;
    } catch (e) {
      if (e instanceof EntryError) throw new SplitterError(e.message);
      if (e instanceof LockError || e instanceof StateError || (e instanceof Error && "code" in e)) throw new ControlPlaneUnavailable(e.message);
      throw e;
    }
  }
}

export class DevTargets implements TargetDirectory {
  constructor(private readonly dataDir: string) {}

  async list(): Promise<TargetList> {
    const { sidecars, problems } = await listSidecars(this.dataDir);
    return { targets: sidecars.map((s) => ({ id: s.id, url: `http://${s.admin}/stats/prometheus` })), problems };
  }
}
