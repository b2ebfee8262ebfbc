// A warning about something that can happen once per connection or request under attack (a
// listener at its limit, a hostile page hammering the admin API): one line per interval, not one
// per event, so a flood cannot turn into a flood of log lines. The counters carry exact numbers.
import type { Fields, Logger } from "./log.js";

export class RateLimitedWarning {
  private suppressed = 0;
  private last: Fields = {};
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly log: Logger,
    private readonly message: string,
    private readonly intervalMs = 10_000,
  ) {}

  /** The first event of an interval is logged at once; the rest are summed into one line at its end. */
  note(fields: Fields): void {
    if (this.timer === null) {
      this.log.warn(this.message, fields);
      this.timer = setTimeout(() => this.flush(), this.intervalMs);
      this.timer.unref();
      return;
    }
    this.suppressed++;
    this.last = fields;
  }

  private flush(): void {
    this.timer = null;
    if (this.suppressed === 0) return;
    const n = this.suppressed;
    this.suppressed = 0;
    this.log.warn(this.message, { ...this.last, more: n, interval_ms: this.intervalMs });
    this.timer = setTimeout(() => this.flush(), this.intervalMs);
    this.timer.unref();
  }

  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
