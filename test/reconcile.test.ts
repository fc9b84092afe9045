// Reconciliation: what a provider holds under Berth's labels (here the local driver's
// labelled workspaces) against the resource records. An object no live record knows,
// older than the grace period, is destroyed with one activity row; one a live record
// knows, one of another environment, one younger than the grace, and an unlabelled
// directory are left alone.
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { localDriver, LABEL_FILE } from '../src/drivers/local/driver.js';
import { startRuntime, type Runtime } from '../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from './support/db.js';
import { collectRuntimeErrors } from './support/runtime-errors.js';
import { waitFor } from './support/wait.js';

const root = mkdtempSync(join(tmpdir(), 'berth-reconcile-'));
let t: TestDb;
let runtime: Runtime;
const runtimeErrors = collectRuntimeErrors();

beforeAll(async () => {
  t = await openTestDb();
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  await t?.close();
  rmSync(root, { recursive: true, force: true });
});

function plant(labels: Record<string, string>, opts: { ageSeconds: number; labelled?: boolean }): string {
  const dir = join(root, labels['berth.resource'] ?? randomUUID());
  mkdirSync(dir, { recursive: true });
  if (opts.labelled !== false) writeFileSync(join(dir, LABEL_FILE), JSON.stringify(labels));
  const then = new Date(Date.now() - opts.ageSeconds * 1000);
  utimesSync(dir, then, then);
  return dir;
}

it('destroys an old labelled object no live record knows, with one activity row; leaves the rest', async () => {
  const co = await t.services.companies.create({ name: 'Reconcile Co' });
  const env = await t.services.environments.ensureLocalEnvironment(co.id);
  const other = await t.services.companies.create({ name: 'Other Co' });
  const otherEnv = await t.services.environments.ensureLocalEnvironment(other.id);
  // A live record: a reserved resource of a lease on this environment.
  const { lease } = await t.services.leases.acquire(co.id, { environmentId: env.id, ttlSeconds: 600 }, undefined, { driver: 'local', reserveResource: true });
  const labels = (id: string, envId = env.id, companyId = co.id) => ({ 'berth.resource': id, 'berth.environment': envId, 'berth.company': companyId });
  const orphan = plant(labels(randomUUID()), { ageSeconds: 3600 });
  const known = plant(labels(lease.resourceId!), { ageSeconds: 3600 });
  const young = plant(labels(randomUUID()), { ageSeconds: 0 });
  const elsewhere = plant(labels(randomUUID(), otherEnv.id, other.id), { ageSeconds: 3600 });
  const unlabelled = plant({}, { ageSeconds: 3600, labelled: false });

  runtime = await startRuntime({
    services: t.services,
    db: t.db,
    drivers: new Map([['local', localDriver({ workspaceRoot: root })]]),
    apiUrl: 'http://127.0.0.1:9',
    pollMs: 50,
    sweepMs: 200,
    heartbeatMs: 100,
    reconcileMs: 200,
    orphanResourceGraceSeconds: 600,
    onError: runtimeErrors.onError,
  });
  await waitFor('the orphan to be destroyed', async () => !existsSync(orphan), 10_000);
  // Another few rounds: nothing else goes.
  await new Promise((r) => setTimeout(r, 1000));
  expect(existsSync(known)).toBe(true);
  expect(existsSync(young)).toBe(true);
  expect(existsSync(unlabelled)).toBe(true);
  // The other company's environment is reconciled too, against its own records: its orphan goes, by its own row.
  await waitFor('the other environment\'s orphan to be destroyed', async () => !existsSync(elsewhere), 10_000);
  const acts = (await t.services.activity.list(co.id, { action: 'environment.resource_orphan_destroyed' })).items;
  expect(acts).toHaveLength(1);
  expect(acts[0]).toMatchObject({ entityId: env.id, details: { providerId: orphan, done: { removed: orphan } } });
  const otherActs = (await t.services.activity.list(other.id, { action: 'environment.resource_orphan_destroyed' })).items;
  expect(otherActs).toHaveLength(1);
  expect(otherActs[0]).toMatchObject({ entityId: otherEnv.id });
});
