// Periodic maintenance as named tasks, each with a gate and a deadline.
//
// - overlap 'skip': a tick that comes while the task's last run is still going is skipped,
//   so a slow sweep never piles up on itself.
// - gate 'any': every server runs the task on its own schedule (work the statements
//   themselves share out, or work about this server's own runs).
// - gate 'one': one server wins each interval across all servers sharing the database.
//   The winner is the one whose UPDATE moves the task's berth_task_runs.last_run_at (a row
//   inserted on first use); the others skip that tick without running anything.
// - timeoutMs: a run still going at its deadline is reported through onError, its signal
//   aborted, and left behind, so the next tick may start the task again. At most one run is
//   in progress per task on this server; one run past its deadline may linger behind it,
//   never more (a second overrun waits until the first one ends).
// - when: a check in memory (no statement): a tick where it says false is skipped. The
//   runtime uses it to skip sweeps its heartbeat's due-check found nothing for.
import { sql } from 'drizzle-orm';
import { queryRows, type Db } from '../db/client.js';
import type { Metrics } from '../metrics/index.js';

/** Where a task's runs are counted: their duration and result, and their overruns. */
export type TaskMetrics = Pick<Metrics, 'taskRan' | 'taskOverran'>;

export interface Task {
  readonly name: string;
  /** Run now through the task's gate (or wait for the run in progress), then keep the schedule. */
  runNow(): Promise<void>;
  /** Resolves when no run is in progress (a run past its deadline included). */
  idle(): Promise<void>;
  stop(): void;
}

export interface TaskOptions {
  gate: 'any' | 'one';
  overlap?: 'skip';
  /** A run still going after this is reported and no longer holds the task back. */
  timeoutMs?: number;
  /** Checked (in memory) at each tick; false skips the tick. runNow ignores it. */
  when?: () => boolean;
}

export type TaskFn = (ctx: { signal: AbortSignal }) => Promise<unknown>;

export class TaskDeadlineError extends Error {
  constructor(
    readonly task: string,
    readonly timeoutMs: number,
  ) {
    super(`task ${task} overran its deadline of ${timeoutMs} ms: reported and left behind; the task runs again at its next tick`);
    this.name = 'TaskDeadlineError';
  }
}

export interface SchedulerOptions {
  /** Where gate 'one' tasks take their turns (berth_task_runs); required only by them. */
  db?: Db;
  /** Recorded as the winner of a gate 'one' interval. */
  serverId?: string;
  onError: (task: string, err: unknown) => void;
  metrics?: TaskMetrics;
}

export interface Scheduler {
  every(name: string, ms: number, opts: TaskOptions, fn: TaskFn): Task;
  get(name: string): Task;
  /** Stop every task's schedule (runs in progress go on; await idle()). */
  stop(): void;
  idle(): Promise<void>;
}

export function createScheduler(opts: SchedulerOptions): Scheduler {
  const tasks = new Map<string, Task>();
  return {
    every(name, ms, taskOpts, fn) {
      if (tasks.has(name)) throw new Error(`task ${name} is already scheduled`);
      const gate = taskOpts.gate === 'one' ? oneServerGate(opts, name, ms) : null;
      const t = schedule(name, ms, taskOpts, fn, (err) => opts.onError(name, err), gate, opts.metrics);
      tasks.set(name, t);
      return t;
    },
    get(name) {
      const t = tasks.get(name);
      if (!t) throw new Error(`no task ${name}`);
      return t;
    },
    stop() {
      for (const t of tasks.values()) t.stop();
    },
    async idle() {
      await Promise.all([...tasks.values()].map((t) => t.idle()));
    },
  };
}

/**
 * True when this server won the task's current interval. An interval is taken as 90% of
 * `ms`, so a server ticking every `ms` is not turned away by a few ms of jitter, while
 * two servers never both win one interval.
 */
function oneServerGate(opts: SchedulerOptions, name: string, ms: number): () => Promise<boolean> {
  const { db } = opts;
  if (!db) throw new Error(`task ${name} has gate 'one': the scheduler needs a database`);
  const seconds = (ms * 0.9) / 1000;
  return async () => {
    // One statement: the insert wins on first use (the update sees no row in its snapshot);
    // later, the update wins when the interval has passed. Concurrent updates wait on the
    // row lock and then re-check last_run_at, which the winner has just moved.
    const rows = await queryRows(
      db,
      sql`WITH ins AS (
            INSERT INTO berth_task_runs (name, last_run_at, server_id) VALUES (${name}, now(), ${opts.serverId ?? null})
            ON CONFLICT (name) DO NOTHING RETURNING name),
          upd AS (
            UPDATE berth_task_runs SET last_run_at = now(), server_id = ${opts.serverId ?? null}
            WHERE name = ${name} AND last_run_at <= now() - make_interval(secs => ${seconds}::float8) RETURNING name)
          SELECT name FROM ins UNION ALL SELECT name FROM upd`,
    );
    return rows.length > 0;
  };
}

/** One task of its own, without a scheduler (gate 'any'). */
export function schedule(
  name: string,
  ms: number,
  o: TaskOptions,
  fn: TaskFn,
  report: (err: unknown) => void,
  gate: (() => Promise<boolean>) | null,
  metrics?: TaskMetrics,
): Task {
  let current: Promise<void> | null = null;
  let lingering: Promise<void> | null = null;
  let stopped = false;

  const run = (): Promise<void> => {
    if (current) return current;
    const abort = new AbortController();
    const work = Promise.resolve()
      .then(async () => {
        if (gate && !(await gate())) return;
        // Timed from when the task's own work begins (a tick the gate turned away is not a run).
        const started = performance.now();
        try {
          await fn({ signal: abort.signal });
        } catch (err) {
          metrics?.taskRan(name, false, (performance.now() - started) / 1000);
          throw err;
        }
        metrics?.taskRan(name, true, (performance.now() - started) / 1000);
      })
      .then(
        () => {},
        (err: unknown) => report(err),
      );
    let timer: NodeJS.Timeout | undefined;
    const mine: Promise<void> = new Promise<void>((resolve) => {
      void work.finally(() => {
        clearTimeout(timer);
        if (current === mine) current = null;
        if (lingering === work) lingering = null;
        resolve();
      });
      if (o.timeoutMs !== undefined) {
        timer = setTimeout(() => {
          metrics?.taskOverran(name);
          report(new TaskDeadlineError(name, o.timeoutMs!));
          abort.abort(new TaskDeadlineError(name, o.timeoutMs!));
          // Left behind only if no earlier overrun still lingers: never more than two at once.
          if (lingering === null && current === mine) {
            lingering = work;
            current = null;
            resolve();
          }
        }, o.timeoutMs);
        timer.unref();
      }
    });
    current = mine;
    return mine;
  };

  const timer = setInterval(() => {
    if (stopped || current) return;
    if (o.when && !o.when()) return;
    void run();
  }, ms);

  return {
    name,
    runNow: run,
    async idle() {
      while (current || lingering) await Promise.all([current, lingering]);
    },
    stop() {
      stopped = true;
      clearInterval(timer);
    },
  };
}
