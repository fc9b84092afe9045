// The scheduler's deadline (issue 11): a run that overruns is reported and left behind,
// so the task starts again; it never piles up (one run in progress, one overrun behind it).
import { expect, it } from 'vitest';
import { createScheduler, TaskDeadlineError } from '../src/heartbeat/scheduler.js';
import { waitFor } from './support/wait.js';

it('reports a run past its deadline, starts the task again, and never has more than one overrun behind the run in progress', async () => {
  const errors: unknown[] = [];
  const scheduler = createScheduler({ onError: (_task, err) => errors.push(err) });
  const releases: (() => void)[] = [];
  const signals: AbortSignal[] = [];
  let inFlight = 0;
  let peak = 0;
  scheduler.every('hangs', 10, { gate: 'any', timeoutMs: 50 }, async ({ signal }) => {
    signals.push(signal);
    inFlight += 1;
    peak = Math.max(peak, inFlight);
    await new Promise<void>((resolve) => releases.push(resolve));
    inFlight -= 1;
  });
  // The first run hangs past its deadline: reported, its signal aborted, and a second run starts.
  await waitFor('a second run', async () => releases.length >= 2);
  expect(errors[0]).toBeInstanceOf(TaskDeadlineError);
  expect(signals[0]!.aborted).toBe(true);
  // The second hangs too: reported, but with one overrun already behind it, no third run starts.
  await waitFor('the second overrun reported', async () => errors.length >= 2);
  await new Promise((r) => setTimeout(r, 200));
  expect(releases).toHaveLength(2);
  expect(peak).toBe(2);
  // Once they end, the schedule goes on, one run at a time again.
  for (const r of releases.splice(0)) r();
  await waitFor('a third run', async () => releases.length >= 1);
  expect(inFlight).toBe(1);
  scheduler.stop();
  for (const r of releases.splice(0)) r();
  await scheduler.idle();
  expect(errors.every((e) => e instanceof TaskDeadlineError)).toBe(true);
});

it('skips a tick its when() refuses, and runNow ignores it', async () => {
  const scheduler = createScheduler({ onError: (_t, err) => { throw err; } });
  let runs = 0;
  const task = scheduler.every('gated-locally', 5, { gate: 'any', when: () => false }, async () => void runs++);
  await new Promise((r) => setTimeout(r, 100));
  expect(runs).toBe(0);
  await task.runNow();
  expect(runs).toBe(1);
  scheduler.stop();
  await scheduler.idle();
});
