// Periodic maintenance as named tasks: each runs every `ms`, and a tick that comes while
// the last run is still going is skipped, so a slow sweep never piles up on itself.

export interface Task {
  readonly name: string;
  /** Run now (or wait for the run in progress), then keep the schedule. */
  runNow(): Promise<void>;
  /** Resolves when no run is in progress. */
  idle(): Promise<void>;
  stop(): void;
}

export function every(name: string, ms: number, fn: () => Promise<unknown>, onError: (err: unknown) => void): Task {
  let current: Promise<void> | null = null;
  let stopped = false;
  const run = (): Promise<void> => {
    if (current) return current;
    current = Promise.resolve()
      .then(fn)
      .then(
        () => {},
        (err: unknown) => onError(err),
      )
      .finally(() => {
        current = null;
      });
    return current;
  };
  const timer = setInterval(() => {
    if (!stopped && !current) void run();
  }, ms);
  return {
    name,
    runNow: run,
    idle: () => current ?? Promise.resolve(),
    stop() {
      stopped = true;
      clearInterval(timer);
    },
  };
}
