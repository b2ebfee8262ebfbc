// Where a rollout lives: the service's `service-splitter` config entry, read with its
// ModifyIndex and written back only if nobody changed it since (check-and-set). The two control
// planes differ only in how; the controller sees this interface.
/** The splitter as stored (Consul's JSON) and the version a CAS write must name. */
export interface SplitterRecord {
  readonly raw: Record<string, unknown>;
  /** Consul's ModifyIndex, or the dev control plane's digest of the file. */
  readonly version: string;
}

/** The control plane did not answer (down, timing out, unreadable): worth waiting for, not a verdict. */
export class ControlPlaneUnavailable extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ControlPlaneUnavailable";
  }
}

/** The control plane answered, and the answer cannot be used (a malformed entry, a refused write). */
export class SplitterError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SplitterError";
  }
}

export interface SplitterStore {
  /** Where, for messages: "the dev state directory .meshproxy", "the Consul agent at …". */
  readonly where: string;
  read(): Promise<SplitterRecord | null>;
  /** The subsets the service's service-resolver defines; null when it has no resolver. */
  subsets(): Promise<readonly string[] | null>;
  /** CAS write: `version` null means "only if there is none". False when someone else wrote first. */
  write(raw: Record<string, unknown>, version: string | null): Promise<boolean>;
}
