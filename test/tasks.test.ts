// Maintenance never piles up (REVIEW C-14): a task whose run outlasts its interval skips
// the ticks that come meanwhile instead of starting a second run.
import { expect, it } from 'vitest';
import { every } from '../src/heartbeat/tasks.js';

it('never runs a task twice at once, and reports its errors', async () => {
  let running = 0;
  let peak = 0;
  let runs = 0;
  const errors: unknown[] = [];
  const task = every('slow', 10, async () => {
    running += 1;
    runs += 1;
    peak = Math.max(peak, running);
    await new Promise((r) => setTimeout(r, 60));
    running -= 1;
    if (runs === 2) throw new Error('second run fails');
  }, (err) => errors.push(err));
  await new Promise((r) => setTimeout(r, 400));
  task.stop();
  await task.idle();
  expect(peak).toBe(1);
  // About 400 / 60 runs, far fewer than the 40 ticks.
  expect(runs).toBeGreaterThanOrEqual(3);
  expect(runs).toBeLessThan(12);
  expect(errors.map((e) => (e as Error).message)).toEqual(['second run fails']);
});
