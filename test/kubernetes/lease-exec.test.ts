// Commands on a provisioned lease of a Kubernetes environment: each command is a pod of
// the lease's resource (its main process), one after another; a later command never takes
// an earlier one's pod for its own (its output and exit are its own); release has the pod
// and its Secret deleted by the resource GC.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SYSTEM_ACTOR } from '../../src/domain/types.js';
import { kubernetesDriver, podName } from '../../src/drivers/kubernetes/driver.js';
import { leaseWork, type LeaseWork } from '../../src/heartbeat/lease-work.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { waitFor } from '../support/wait.js';
import { testCluster } from './cluster.js';

process.env.BERTH_SECRET_KEY = randomBytes(32).toString('hex');
const cluster = testCluster();
let t: TestDb;
let runtime: Runtime;
let work: LeaseWork;
const runtimeErrors = collectRuntimeErrors();

beforeAll(async () => {
  t = await openTestDb();
  const drivers = new Map([['kubernetes', kubernetesDriver()]]);
  runtime = await startRuntime({ services: t.services, db: t.db, drivers, apiUrl: '', pollMs: 50, sweepMs: 200, heartbeatMs: 100, onError: runtimeErrors.onError });
  work = leaseWork({ services: t.services, drivers });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  await t?.close();
});

describe('a provisioned Kubernetes lease', () => {
  it('runs its commands one after another, each with its own output and exit; the pod is deleted after release', async () => {
    const co = await t.services.companies.create({ name: 'Kubernetes exec' });
    const env = await t.services.environments.create(co.id, { name: 'cluster', driver: 'kubernetes', config: cluster.config() } as never);
    const { lease } = await work.acquireProvisioned(co.id, { environmentId: env.id, ttlSeconds: 120 }, SYSTEM_ACTOR);
    const run = (command: string[]) => work.exec(co.id, lease.id, { fence: lease.fence, command }, SYSTEM_ACTOR);
    expect(await run(['sh', '-c', 'echo one; exit 3'])).toMatchObject({ exitCode: 3, stdout: 'one\n' });
    expect(await run(['sh', '-c', 'echo two; exit 5'])).toMatchObject({ exitCode: 5, stdout: 'two\n' });
    expect(await run(['echo', 'three'])).toMatchObject({ exitCode: 0, stdout: 'three\n' });

    await t.services.leases.release(co.id, lease.id, { fence: lease.fence }, SYSTEM_ACTOR);
    await waitFor('the pod to be deleted', async () => (await t.services.resources.get(lease.resourceId!)).status === 'destroyed', 60_000);
    expect(await cluster.pod(podName(lease.resourceId!))).toBeNull();
  }, 180_000);
});
