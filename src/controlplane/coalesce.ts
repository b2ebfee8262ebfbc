// Re-reading a control plane's sources when something changed: one read at a time, and any
// number of change notices during a read make exactly one more read after it (a rename is
// several filesystem events; they must not become several reads, nor be lost).
export class CoalescedRun {
  private running: Promise<void> | null = null;
  private again = false;

  constructor(
    private readonly job: () => Promise<void>,
    private readonly stopped: () => boolean,
  ) {}

  run(): Promise<void> {
    if (this.stopped()) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.job();
      } while (this.again && !this.stopped());
    })().finally(() => (this.running = null));
    return this.running;
  }

  /** Resolves when the read in progress (if any) is done. */
  async settled(): Promise<void> {
    await this.running;
  }
}
