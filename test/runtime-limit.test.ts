// The server-wide limit: one runtime never executes more runs at once than it may.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startRuntime, type Runtime } from '../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from './support/db.js';
import { collectRuntimeErrors } from './support/runtime-errors.js';

const runtimeErrors = collectRuntimeErrors();
let t: TestDb;
let runtime: Runtime;
beforeAll(async () => {
  t = await openTestDb();
  runtime = await startRuntime({ services: t.services, db: t.db, maxConcurrentRuns: 2, pollMs: 20, apiUrl: 'http://127.0.0.1:9', onError: runtimeErrors.onError });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  await t?.close();
});

it('runs at most maxConcurrentRuns at once, across agents, and finishes them all', async () => {
  const company = await t.services.companies.create({ name: 'Limit Co' });
  const agents = await Promise.all(
    [1, 2, 3, 4].map((i) => t.services.agents.create(company.id, { name: `a${i}`, adapterType: 'process', adapterConfig: { command: 'sleep', args: ['0.3'] } })),
  );
  const runs = [];
  for (const a of agents) for (let k = 0; k < 2; k++) runs.push(await t.services.runs.invoke(company.id, a.id));
  runtime.poke();
  let peak = 0;
  for (;;) {
    peak = Math.max(peak, runtime.inFlight());
    const running = (await t.services.runs.list(company.id, { status: 'running' })).length;
    expect(running).toBeLessThanOrEqual(2);
    const left = (await t.services.runs.list(company.id)).filter((r) => !r.finishedAt).length;
    if (left === 0) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  expect(peak).toBe(2);
  const all = await t.services.runs.list(company.id);
  expect(all.filter((r) => r.status === 'succeeded')).toHaveLength(8);
});
