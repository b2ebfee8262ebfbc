// SIGTERM and SIGINT for a long-running command (a sidecar, a gateway): the first one starts a
// graceful drain, a second one exits at once with status 1 (an operator who asks twice means it,
// as with Envoy and `consul connect envoy`). The handlers are removed when the command ends, so
// a command run in-process (tests) leaves nothing behind.
//
// SIGHUP and SIGUSR1, as Envoy: SIGHUP is eaten with a warning (Node's default would end the
// proxy with no drain and no deregistration, leaving its catalog entry behind), and SIGUSR1
// reopens the access log for logrotate's `postrotate kill -USR1` (Envoy's hot restarter forwards
// it for "atomic move and reopen"). A listener on SIGUSR1 also stops Node from starting its
// inspector on it, which a proxy should not do on a log-rotation signal anyway.
import type { Logger } from "../telemetry/log.js";

export interface ShutdownSignals {
  /** Signals received so far. */
  readonly received: number;
  /** Resolves with the first signal. */
  readonly requested: Promise<NodeJS.Signals>;
  /** Removes the handlers; call once the command is done. */
  dispose(): void;
}

const SIGNALS: readonly NodeJS.Signals[] = ["SIGINT", "SIGTERM"];

/**
 * Installs the handlers. `onFirst` runs at the first signal (start draining); `exit` is how a
 * second signal ends the process (process.exit, or a stand-in in tests).
 */
export function handleShutdownSignals(log: Logger, onFirst: (signal: NodeJS.Signals) => void = () => undefined, exit: (code: number) => void = (code) => process.exit(code)): ShutdownSignals {
  let received = 0;
  let resolve: (s: NodeJS.Signals) => void = () => undefined;
  const requested = new Promise<NodeJS.Signals>((r) => (resolve = r));
  const onSignal = (signal: NodeJS.Signals): void => {
    received++;
    if (received > 1) {
      log.warn("second signal; exiting without draining", { signal });
      exit(1);
      return;
    }
    log.info("shutting down", { signal });
    resolve(signal);
    onFirst(signal);
  };
  for (const s of SIGNALS) process.on(s, onSignal);
  return {
    get received() {
      return received;
    },
    requested,
    dispose: () => {
      for (const s of SIGNALS) process.off(s, onSignal);
    },
  };
}

/** What SIGUSR1 reopened: the file, and under -concurrency how many workers were told to (each logs its own reopen). */
export interface ReopenedLog {
  readonly file: string;
  readonly workers?: number;
}

export interface ReopenSignals {
  /** Removes the handlers; call once the command is done. */
  dispose(): void;
}

/**
 * SIGHUP: a warning, nothing else. SIGUSR1: `reopen()` (resolves with the reopened file, null
 * when there is none, e.g. -access-log stdout), logged; a failure is logged and the proxy serves on.
 */
export function handleReopenSignals(log: Logger, reopen: () => Promise<ReopenedLog | null>): ReopenSignals {
  const onHup = (): void => log.warn("caught and eating SIGHUP; the proxy goes on serving (SIGUSR1 reopens the access log, SIGTERM drains and exits)", { signal: "SIGHUP" });
  const onUsr1 = (): void => {
    reopen().then(
      (r) => {
        if (r === null) log.info("SIGUSR1: no log file to reopen (-access-log is not a file)", { signal: "SIGUSR1" });
        else if (r.workers !== undefined) log.info("asked every worker to reopen the access log", { signal: "SIGUSR1", file: r.file, workers: r.workers });
        else log.info("access log reopened", { signal: "SIGUSR1", file: r.file });
      },
      (e: unknown) => log.warn("could not reopen the access log; its lines are dropped (meshproxy_access_log_dropped_total) until the next SIGUSR1", { signal: "SIGUSR1", error: e instanceof Error ? e.message : String(e) }),
    );
  };
  process.on("SIGHUP", onHup);
  process.on("SIGUSR1", onUsr1);
  return {
    dispose: () => {
      process.off("SIGHUP", onHup);
      process.off("SIGUSR1", onUsr1);
    },
  };
}
