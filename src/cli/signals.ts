// SIGTERM and SIGINT for a long-running command (a sidecar, a gateway): the first one starts a
// graceful drain, a second one exits at once with status 1 (an operator who asks twice means it,
// as with Envoy and `consul connect envoy`). The handlers are removed when the command ends, so
// a command run in-process (tests) leaves nothing behind.
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
