// A run that fails after its process started and before it is watched (here: the step
// after exec throws) still kills that process: nothing a run started outlives it.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { localDriver } from '../src/drivers/local/driver.js';
import { startRuntime, type Runtime } from '../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from './support/db.js';
import { collectRuntimeErrors } from './support/runtime-errors.js';
import { waitFor } from './support/wait.js';

const root = mkdtempSync(join(tmpdir(), 'berth-exec-failure-'));
let t: TestDb;
let runtime: Runtime;
const runtimeErrors = collectRuntimeErrors();

beforeAll(async () => {
  t = await openTestDb();
  runtime = await startRuntime({
    services: t.services,
    db: t.db,
    drivers: new Map([['local', localDriver({ workspaceRoot: join(root, 'ws') })]]),
    apiUrl: 'http://127.0.0.1:9',
    pollMs: 50,
    sweepMs: 200,
    heartbeatMs: 100,
    onError: runtimeErrors.onError,
    onPhase: (phase) => {
      if (phase === 'started') throw Object.assign(new Error('injected failure after exec'), { code: 'injected' });
    },
  });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  await t?.close();
  rmSync(root, { recursive: true, force: true });
});

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

it('kills the process of a run that failed between exec and watch, and cleans up its lease and workspace', async () => {
  const co = await t.services.companies.create({ name: 'Exec Failure Co' });
  const pidFile = join(root, 'pid');
  const agent = await t.services.agents.create(co.id, { name: 'sleeper', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', `echo $$ > ${pidFile}; exec sleep 30`] } });
  const run = await t.services.runs.invoke(co.id, agent.id);
  runtime.poke();
  const done = await waitFor('the run to end', async () => {
    const r = await t.services.runs.get(co.id, run.id);
    return r.finishedAt ? r : null;
  }, 20_000);
  expect(done).toMatchObject({ status: 'failed', errorCode: 'injected' });
  // It did start (the pid file), and it is gone.
  await waitFor('the pid file', async () => existsSync(pidFile), 5_000);
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  await waitFor('the process to be gone', async () => !alive(pid), 5_000);
  const lease = await t.services.leases.get(co.id, done.leaseId!);
  expect(lease).toMatchObject({ status: 'failed', cleanupStatus: 'success' });
  expect(existsSync(join(root, 'ws', lease.resourceId!))).toBe(false);
});
