// A busy pool cannot make another server take this one for dead (REVIEW C-2 interim): the
// server heartbeat has a connection of its own. Here every connection of the pool is held
// by slow statements for 4 s while the heartbeat must keep landing every 100 ms.
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { queryRows } from '../../src/db/client.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';

const runtimeErrors = collectRuntimeErrors();
let t: TestDb;
let runtime: Runtime;
beforeAll(async () => {
  t = await openTestDb({ poolSize: 2 });
  runtime = await startRuntime({
    services: t.services,
    db: t.db,
    heartbeatDb: t.heartbeatDb,
    apiUrl: 'http://127.0.0.1:9',
    heartbeatMs: 100,
    sweepMs: 60_000,
    pollMs: 60_000,
    onError: runtimeErrors.onError,
  });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  await t?.close();
});

it('keeps heartbeating while every pooled connection is busy', async () => {
  const beats = async () => {
    const [row] = await queryRows<{ at: Date }>(t.heartbeatDb, sql`SELECT heartbeat_at AS at FROM berth_servers WHERE id = ${runtime.serverId}`);
    return new Date(row!.at).getTime();
  };
  // Both pool connections sleep 4 s: anything sent through the pool waits behind them.
  const busy = Promise.all([1, 2].map(() => queryRows(t.db, sql`SELECT pg_sleep(4)`)));
  await new Promise((r) => setTimeout(r, 500));
  const seen = new Set<number>();
  for (let i = 0; i < 10; i++) {
    seen.add(await beats());
    await new Promise((r) => setTimeout(r, 250));
  }
  await busy;
  // The heartbeat moved on many times meanwhile (it would have stood still behind the pool).
  expect(seen.size).toBeGreaterThanOrEqual(5);
  // The cancel check that shares the heartbeat's tick went through the busy pool and waited: no error.
  expect(runtimeErrors.seen).toEqual([]);
});
