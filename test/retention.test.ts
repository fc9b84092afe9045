// Tables have a retention story (REVIEW C-18): rows of servers gone for a day are pruned
// (never one a running run still names); run logs and activity are pruned only when the
// operator sets a retention, and then only what is older than it.
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queryRows } from '../src/db/client.js';
import { retentionFromEnv } from '../src/services/retention.js';
import { openTestDb, type TestDb } from './support/db.js';

let t: TestDb;
beforeAll(async () => {
  t = await openTestDb();
});
afterAll(async () => t?.close());

const count = async (q: ReturnType<typeof sql>) => Number((await queryRows<{ n: number }>(t.db, q))[0]!.n);

describe('retention', () => {
  it('prunes servers gone for a day, keeps live ones and those a running run still names', async () => {
    const co = await t.services.companies.create({ name: 'Ret Co' });
    const agent = await t.services.agents.create(co.id, { name: 'a', adapterType: 'process', adapterConfig: { command: 'true' } });
    await queryRows(t.db, sql`INSERT INTO berth_servers (id, hostname, pid, heartbeat_at, stopped_at) VALUES
      ('old-stopped', 'h', 1, now() - interval '3 days', now() - interval '2 days'),
      ('old-silent', 'h', 2, now() - interval '2 days', NULL),
      ('old-with-run', 'h', 3, now() - interval '2 days', NULL),
      ('recent', 'h', 4, now(), NULL)`);
    await queryRows(t.db, sql`INSERT INTO heartbeat_runs (company_id, agent_id, status, invocation_source, server_id, started_at)
      VALUES (${co.id}, ${agent.id}, 'running', 'on_demand', 'old-with-run', now())`);
    const r = await t.services.retention.prune({});
    expect(r).toMatchObject({ servers: 2, runLogs: 0, activity: 0 });
    const left = (await queryRows<{ id: string }>(t.db, sql`SELECT id FROM berth_servers ORDER BY id`)).map((x) => x.id);
    expect(left).toEqual(['old-with-run', 'recent']);
  });

  it('keeps run logs and activity by default; with a retention, deletes only what is older', async () => {
    const co = await t.services.companies.create({ name: 'Logs Co' });
    const agent = await t.services.agents.create(co.id, { name: 'b', adapterType: 'process', adapterConfig: { command: 'true' } });
    const [oldRun, newRun] = await Promise.all([t.services.runs.invoke(co.id, agent.id), t.services.runs.invoke(co.id, agent.id)]);
    await queryRows(t.db, sql`UPDATE heartbeat_runs SET status = 'succeeded', finished_at = now() - interval '10 days' WHERE id = ${oldRun!.id}`);
    await queryRows(t.db, sql`UPDATE heartbeat_runs SET status = 'succeeded', finished_at = now() WHERE id = ${newRun!.id}`);
    for (const r of [oldRun!, newRun!]) await t.services.runs.appendLog(r.id, [{ seq: 1, ts: new Date(), stream: 'stdout', chunk: 'x' }]);
    await queryRows(t.db, sql`UPDATE activity_log SET created_at = now() - interval '40 days' WHERE entity_id = ${oldRun!.id}`);
    const logs = () => count(sql`SELECT count(*)::int AS n FROM heartbeat_run_logs WHERE run_id IN (${oldRun!.id}, ${newRun!.id})`);
    const acts = () => count(sql`SELECT count(*)::int AS n FROM activity_log WHERE company_id = ${co.id}`);
    const actsBefore = await acts();

    await t.services.retention.prune(retentionFromEnv({}));
    expect(await logs()).toBe(2);
    expect(await acts()).toBe(actsBefore);

    const policy = retentionFromEnv({ BERTH_RUN_LOG_RETENTION_DAYS: '7', BERTH_ACTIVITY_RETENTION_DAYS: '30' });
    const r = await t.services.retention.prune(policy);
    expect(r.runLogs).toBe(1);
    expect(await logs()).toBe(1);
    expect(r.activity).toBeGreaterThan(0);
    expect(await acts()).toBe(actsBefore - r.activity);
    expect(await count(sql`SELECT count(*)::int AS n FROM activity_log WHERE entity_id = ${newRun!.id}`)).toBeGreaterThan(0);
  });

  it('refuses a retention that is not a number of days, naming the variable', () => {
    expect(() => retentionFromEnv({ BERTH_RUN_LOG_RETENTION_DAYS: 'a week' })).toThrow(/BERTH_RUN_LOG_RETENTION_DAYS must be a number of days/);
  });
});
