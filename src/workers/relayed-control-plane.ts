// A worker's control plane: the Snapshots its primary relays. The primary runs the real one (dev,
// static file or Consul agent) once for all workers; the worker's proxy applies what arrives
// exactly as it would apply its own control plane's, compiling and validating each.
// Registration is the primary's: announce and withdraw do nothing here.
import type { Snapshot } from "../config/snapshot.js";
import type { ControlPlane, ControlPlaneHandlers } from "../controlplane/controlplane.js";

export class RelayedControlPlane implements ControlPlane {
  private handlers: ControlPlaneHandlers | null = null;
  /** A Snapshot that arrived before start(): delivered by start(). */
  private early: Snapshot | null = null;
  private delivered: (() => void) | null = null;

  constructor(readonly kind: string) {}

  /** Resolves with the first relayed Snapshot, as a control plane's start() does. */
  start(handlers: ControlPlaneHandlers): Promise<void> {
    this.handlers = handlers;
    return new Promise<void>((resolve) => {
      this.delivered = resolve;
      if (this.early) {
        const s = this.early;
        this.early = null;
        this.deliver(s);
      }
    });
  }

  deliver(s: Snapshot): void {
    if (!this.handlers) {
      this.early = s;
      return;
    }
    this.handlers.snapshot(s);
    this.delivered?.();
    this.delivered = null;
  }

  announce(): Promise<void> {
    return Promise.resolve();
  }

  withdraw(): Promise<void> {
    return Promise.resolve();
  }

  stop(): Promise<void> {
    this.delivered?.();
    return Promise.resolve();
  }
}
