// Wake-ups on one server, on both databases (PGlite delivers its own session's
// notifications in-process): a queued run is claimed and a cancel reaches its run without
// poke() and long before the runtime would poll (60 s here).
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startRuntime, type Runtime } from '../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from './support/db.js';
import { collectRuntimeErrors } from './support/runtime-errors.js';
import { waitFor } from './support/wait.js';

const runtimeErrors = collectRuntimeErrors();
let t: TestDb;
let runtime: Runtime;
let companyId: string;

beforeAll(async () => {
  t = await openTestDb();
  const never = 60_000;
  runtime = await startRuntime({
    services: t.services,
    db: t.db,
    heartbeatDb: t.heartbeatDb,
    listen: t.listen,
    apiUrl: 'http://127.0.0.1:9',
    pollMs: never,
    sweepMs: never,
    heartbeatMs: never,
    onError: runtimeErrors.onError,
  });
  companyId = (await t.services.companies.create({ name: 'Wake Co' })).id;
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  await t?.close();
});

it('claims a queued run on its wake-up and stops a running one on its cancel wake-up', async () => {
  const agent = await t.services.agents.create(companyId, { name: 'sleeper', adapterType: 'process', adapterConfig: { command: 'sleep', args: ['30'] } });
  const run = await t.services.runs.invoke(companyId, agent.id);
  await waitFor('the run to start', async () => (await t.services.runs.get(companyId, run.id)).pid);
  await t.services.runs.cancel(companyId, run.id);
  const done = await waitFor('the run to end', async () => {
    const r = await t.services.runs.get(companyId, run.id);
    return r.finishedAt ? r : null;
  });
  expect(done).toMatchObject({ status: 'cancelled', serverId: runtime.serverId });
});
