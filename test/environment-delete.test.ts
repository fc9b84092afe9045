// Deleting an environment is refused while any of its leases still owes cleanup
// (pending_cleanup, retained, or a terminal lease with its cleanup still due), not only
// while leases are active: once the environment is gone its cleanup could only fail.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openTestDb, type TestDb } from './support/db.js';
import { startTestApi, type TestApi } from './support/http.js';
import { waitFor } from './support/wait.js';

let t: TestDb;
let api: TestApi;
let co: { id: string; key: string };

beforeAll(async () => {
  t = await openTestDb();
  api = await startTestApi(t);
  co = await api.company('Delete Co');
});
afterAll(async () => {
  await api?.close();
  await t?.close();
});

const call = (method: string, path: string, body?: unknown) => api.call(method, path, { key: co.key, ...(body !== undefined ? { body } : {}) });

async function newEnv(name: string): Promise<string> {
  const r = await call('POST', `/api/companies/${co.id}/environments`, { name, driver: 'sandbox', config: { provider: 'p' } });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body.id;
}

async function acquire(envId: string, body: Record<string, unknown> = {}): Promise<{ id: string; fence: number }> {
  const r = await call('POST', `/api/environments/${envId}/leases`, body);
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body.lease;
}

function expectRefused(r: { status: number; body: any }, reason: RegExp) {
  expect(r.status, JSON.stringify(r.body)).toBe(409);
  expect(r.body.error.code).toBe('conflict');
  expect(r.body.error.message).toMatch(reason);
}

async function cleanUp(leaseId: string): Promise<void> {
  const lease = await t.services.leases.get(co.id, leaseId);
  await t.services.leases.recordCleanupAttempt(co.id, leaseId, { fence: lease.fence, ok: true });
}

describe('DELETE /api/environments/:id', () => {
  it('is refused while a resource a driver made in it is not destroyed, and works once it is', async () => {
    const env = await newEnv('resource-live');
    const { lease } = await t.services.leases.acquire(co.id, { environmentId: env, ttlSeconds: 60 }, undefined, { driver: 'sandbox', reserveResource: true });
    expect(lease.resourceId).toEqual(expect.any(String));
    // The lease ends; its resource is owed a destroy (no sandbox driver here to do it).
    await t.services.leases.release(co.id, lease.id, { fence: lease.fence, status: 'released' });
    expect((await t.services.resources.get(lease.resourceId!)).status).toBe('destroying');
    // Only a server with the resource's driver sees it as its work (resource GC wakes for it).
    expect((await t.services.due.heartbeat('srv_none', { staleSeconds: 5, drivers: ['local', 'ssh'] })).cleanups).toBe(false);
    expect((await t.services.due.heartbeat('srv_none', { staleSeconds: 5, drivers: ['sandbox'] })).cleanups).toBe(true);
    expectRefused(await call('DELETE', `/api/environments/${env}`), /provider resources not yet destroyed \(1 destroying\)/);
    expect((await call('GET', `/api/environments/${env}`)).status).toBe(200);
    await t.services.resources.recordDestroyAttempt(lease.resourceId!, { ok: true, done: { removed: 'x' } });
    expect((await t.services.resources.get(lease.resourceId!)).status).toBe('destroyed');
    expect((await call('DELETE', `/api/environments/${env}`)).status).toBe(200);
  });

  it('is refused while an expired lease still owes cleanup, and works once the cleanup succeeded', async () => {
    const env = await newEnv('expired-pending');
    // Taken as a run's executor takes it: a driver will make resources for it, so it owes cleanup.
    const { lease } = await t.services.leases.acquire(co.id, { environmentId: env, ttlSeconds: 0.1 }, undefined, { driver: 'sandbox' });
    await waitFor('the lease to expire', async () => (await t.services.leases.expireDue()).some((l) => l.id === lease.id) || (await t.services.leases.get(co.id, lease.id)).status === 'expired');
    const expired = await t.services.leases.get(co.id, lease.id);
    expect(expired).toMatchObject({ status: 'expired', cleanupStatus: 'pending' });
    expect(expired.nextCleanupAt).not.toBeNull();

    expectRefused(await call('DELETE', `/api/environments/${env}`), /still owe cleanup \(1 expired\)/);
    expect((await call('GET', `/api/environments/${env}`)).status).toBe(200);
    expect((await t.services.leases.get(co.id, lease.id)).environmentId).toBe(env);

    await cleanUp(lease.id);
    const deleted = await call('DELETE', `/api/environments/${env}`);
    expect(deleted.status, JSON.stringify(deleted.body)).toBe(200);
    expect((await call('GET', `/api/environments/${env}`)).status).toBe(404);
  });

  it('is refused while a lease is pending_cleanup (a failed cleanup being retried)', async () => {
    const env = await newEnv('pending-cleanup');
    const lease = await acquire(env);
    const r = await call('POST', `/api/environment-leases/${lease.id}/release`, { fence: lease.fence, cleanupStatus: 'failed' });
    expect(r.body.lease?.status ?? r.body.status, JSON.stringify(r.body)).toBe('pending_cleanup');
    expectRefused(await call('DELETE', `/api/environments/${env}`), /1 pending_cleanup/);
    await cleanUp(lease.id);
    expect((await call('DELETE', `/api/environments/${env}`)).status).toBe(200);
  });

  it('is refused while a released lease has its cleanup pending', async () => {
    const env = await newEnv('released-pending');
    const lease = await acquire(env);
    await call('POST', `/api/environment-leases/${lease.id}/release`, { fence: lease.fence, cleanupStatus: 'pending' });
    expect(await t.services.leases.get(co.id, lease.id)).toMatchObject({ status: 'released', cleanupStatus: 'pending' });
    expectRefused(await call('DELETE', `/api/environments/${env}`), /still owe cleanup \(1 released\)/);
    await cleanUp(lease.id);
    expect((await call('DELETE', `/api/environments/${env}`)).status).toBe(200);
  });

  it('is refused while a lease is retained', async () => {
    const env = await newEnv('retained');
    const lease = await acquire(env, { policy: 'retain_on_failure' });
    await call('POST', `/api/environment-leases/${lease.id}/release`, { fence: lease.fence, status: 'failed' });
    expect((await t.services.leases.get(co.id, lease.id)).status).toBe('retained');
    expectRefused(await call('DELETE', `/api/environments/${env}`), /1 retained/);
  });
});
