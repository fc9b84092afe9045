// Wake-ups between servers on one PostgreSQL (issue 11): a run queued through server A is
// claimed by server B at once, through B's LISTEN, not at B's next poll (60 s here, so only
// the wake-up can do it); B's listener, killed, reconnects and claims what was queued while
// it was gone; and a gate 'one' task runs on one server per interval.
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, queryRows, type Database } from '../../src/db/client.js';
import { pgListen } from '../../src/db/notify.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import { createScheduler } from '../../src/heartbeat/scheduler.js';
import { createServices, type Services } from '../../src/services/index.js';
import { createScratchDatabase } from '../support/db.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { waitFor } from '../support/wait.js';

const runtimeErrors = collectRuntimeErrors();
let scratch: Awaited<ReturnType<typeof createScratchDatabase>>;
let dbA: Database;
let dbB: Database;
let a: Services;
let serverA: Runtime;
let serverB: Runtime;
let companyId: string;
let agentId: string;

// Nothing but a wake-up (or B's one claim pass when its listener connects) makes B claim.
const never = 60_000;

beforeAll(async () => {
  scratch = await createScratchDatabase();
  dbA = await openDatabase({ databaseUrl: scratch.url, poolSize: 4 });
  dbB = await openDatabase({ databaseUrl: scratch.url, poolSize: 4 });
  a = createServices(dbA.db);
  const common = { apiUrl: 'http://127.0.0.1:9', onError: runtimeErrors.onError, pollMs: never, sweepMs: never };
  // A claims nothing (and listens for nothing): whatever runs, B claimed.
  serverA = await startRuntime({ ...common, services: a, db: dbA.db, heartbeatDb: dbA.heartbeatDb, maxConcurrentRuns: 0 });
  // B reconnects its listener after 1 s, so a run can be queued while it is surely gone.
  serverB = await startRuntime({ ...common, services: createServices(dbB.db), db: dbB.db, heartbeatDb: dbB.heartbeatDb, listen: pgListen(scratch.url, { minBackoffMs: 1_000 }) });
  companyId = (await a.companies.create({ name: 'Wake Co' })).id;
  agentId = (await a.agents.create(companyId, { name: 'quick', adapterType: 'process', adapterConfig: { command: 'true', args: [] } })).id;
});
afterAll(async () => {
  await serverA?.stop({ graceMs: 0 });
  await serverB?.stop({ graceMs: 0 });
  await dbA?.close();
  await dbB?.close();
  await scratch?.drop();
});

const claimedBy = (runId: string) =>
  waitFor(`run ${runId} to be claimed`, async () => (await a.runs.get(companyId, runId)).serverId, 15_000);
const finished = (runId: string) =>
  waitFor(`run ${runId} to finish`, async () => {
    const r = await a.runs.get(companyId, runId);
    return r.finishedAt ? r : null;
  }, 15_000);

describe('wake-ups', () => {
  it('a run queued through server A is claimed by server B at once, long before B would poll', async () => {
    const run = await a.runs.invoke(companyId, agentId);
    expect(await claimedBy(run.id)).toBe(serverB.serverId);
    expect(await finished(run.id)).toMatchObject({ status: 'succeeded' });
  });

  it("B's listener connection, killed, reconnects and claims what was queued while it was gone", async () => {
    const listeners = () =>
      queryRows<{ pid: number }>(dbA.db, sql`SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN berth_runs%'`);
    const [before, ...more] = await listeners();
    expect(more).toEqual([]);
    await queryRows(dbA.db, sql`SELECT pg_terminate_backend(${before!.pid})`);
    await waitFor('the listeners to be gone', async () => (await listeners()).length === 0);
    // Queued while nobody listens: its notification reaches no one.
    const run = await a.runs.invoke(companyId, agentId);
    expect(await claimedBy(run.id)).toBe(serverB.serverId);
    await finished(run.id);
    const [after] = await listeners();
    expect(after!.pid).not.toBe(before!.pid);
    // The lost connection was reported, once, then replaced.
    expect(runtimeErrors.take(/^wake-ups: /)).toHaveLength(1);
  });
});

describe("gate 'one'", () => {
  it('runs a task on one of two servers per interval', async () => {
    const errors: unknown[] = [];
    const ran: string[] = [];
    const [s1, s2] = (['srv_one', 'srv_two'] as const).map((serverId) => {
      const scheduler = createScheduler({ db: serverId === 'srv_one' ? dbA.db : dbB.db, serverId, onError: (_t, err) => errors.push(err) });
      return { serverId, scheduler, task: scheduler.every('gated', never, { gate: 'one' }, async () => void ran.push(serverId)) };
    });
    // Both ask at once, twice: the first interval goes to one of them, and nobody gets a second turn in it.
    await Promise.all([s1!.task.runNow(), s2!.task.runNow()]);
    expect(ran).toHaveLength(1);
    await Promise.all([s1!.task.runNow(), s2!.task.runNow()]);
    expect(ran).toHaveLength(1);
    // The interval has passed (as if a minute went by): again exactly one of them runs it.
    await queryRows(dbA.db, sql`UPDATE berth_task_runs SET last_run_at = last_run_at - interval '61 seconds' WHERE name = 'gated'`);
    await Promise.all([s1!.task.runNow(), s2!.task.runNow()]);
    expect(ran).toHaveLength(2);
    const [row] = await queryRows<{ server_id: string }>(dbA.db, sql`SELECT server_id FROM berth_task_runs WHERE name = 'gated'`);
    expect(row!.server_id).toBe(ran[1]);
    for (const s of [s1!, s2!]) {
      s.scheduler.stop();
      await s.scheduler.idle();
    }
    expect(errors).toEqual([]);
  });
});
