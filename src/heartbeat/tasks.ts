// A task without gate or deadline: every `ms`, skipping a tick while its last run is still
// going. The runtime's maintenance uses the scheduler (scheduler.ts) for gates and deadlines.
import { schedule, type Task } from './scheduler.js';

export type { Task };

export function every(name: string, ms: number, fn: () => Promise<unknown>, onError: (err: unknown) => void): Task {
  return schedule(name, ms, { gate: 'any' }, () => fn(), onError, null);
}
