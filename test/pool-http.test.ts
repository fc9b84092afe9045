// Warm pools over HTTP: PATCH sets and validates `pool` (4xx naming the field), and
// GET /api/environments/:id and the company's environment list show the pool and what it
// holds now (poolState: size, ready, provisioning, claimed, refill failures).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { openTestDb, type TestDb } from './support/db.js';
import { startTestApi, type TestApi } from './support/http.js';

const workspaceRoot = mkdtempSync(join(tmpdir(), 'berth-pool-http-'));
let t: TestDb;
let api: TestApi;

beforeAll(async () => {
  t = await openTestDb();
  api = await startTestApi(t, { workspaceRoot });
});
afterAll(async () => {
  await api?.close();
  await t?.close();
  rmSync(workspaceRoot, { recursive: true, force: true });
});

it('PATCH validates the pool with field-named errors; GET shows it and its state', async () => {
  const co = await api.company('Pool HTTP');
  const call = (method: string, path: string, body?: unknown) => api.call(method, path, { key: co.key, ...(body !== undefined ? { body } : {}) });
  const created = await call('POST', `/api/companies/${co.id}/environments`, { name: 'pooled', driver: 'ssh', config: { host: 'h.example', username: 'u', remoteWorkspacePath: '/tmp/berth-w', strictHostKeyChecking: false }, capacity: 4 });
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  expect(created.body.pool).toBeNull();
  const id = created.body.id as string;

  const bad = async (body: unknown, path: string) => {
    const r = await call('PATCH', `/api/environments/${id}`, body);
    expect(r.status, JSON.stringify(r.body)).toBe(422);
    expect(r.body.error.code).toBe('invalid');
    expect(r.body.error.fields.map((f: { path: string }) => f.path)).toEqual([path]);
  };
  await bad({ pool: { minReady: 2, maxReady: 1 } }, 'pool.maxReady');
  await bad({ pool: { minReady: 5 } }, 'pool.minReady');
  await bad({ pool: { minReady: 'two' } }, 'pool.minReady');
  await bad({ pool: { minReady: 1, maxAgeSeconds: -5 } }, 'pool.maxAgeSeconds');
  await bad({ capacity: 1, pool: { minReady: 2 } }, 'pool.minReady');

  const ok = await call('PATCH', `/api/environments/${id}`, { pool: { minReady: 2, maxReady: 3, maxAgeSeconds: 120 } });
  expect(ok.status, JSON.stringify(ok.body)).toBe(200);
  expect(ok.body.pool).toEqual({ minReady: 2, maxReady: 3, maxAgeSeconds: 120 });
  await bad({ capacity: 1 }, 'pool.minReady');

  const one = await call('GET', `/api/environments/${id}`);
  expect(one.status).toBe(200);
  expect(one.body.pool).toEqual({ minReady: 2, maxReady: 3, maxAgeSeconds: 120 });
  expect(one.body.poolState).toEqual({ size: 0, ready: 0, provisioning: 0, claimed: 0, refillFailures: 0, lastError: null, lastErrorAt: null });
  const list = await call('GET', `/api/companies/${co.id}/environments`);
  expect(list.body.find((e: { id: string }) => e.id === id).poolState).toMatchObject({ size: 0, ready: 0 });

  // Reserved members show as provisioning; a refill failure is counted with its error.
  const [m1, m2] = await t.services.pools.reserve(id, 'srv_http_test');
  await t.services.pools.markFailed(m2!.resourceId, id, 'no such host h.example');
  const after = await call('GET', `/api/environments/${id}`);
  expect(after.body.poolState).toMatchObject({ size: 1, ready: 0, provisioning: 1, refillFailures: 1, lastError: 'no such host h.example' });
  expect(typeof after.body.poolState.lastErrorAt).toBe('string');
  await t.services.pools.markReady(m1!.resourceId, { providerId: null, state: {}, cwd: '/w', details: {} });
  expect((await call('GET', `/api/environments/${id}`)).body.poolState).toMatchObject({ size: 1, ready: 1, provisioning: 0 });

  // Removing the pool: PATCH null.
  const off = await call('PATCH', `/api/environments/${id}`, { pool: null });
  expect(off.body.pool).toBeNull();
  expect((await call('GET', `/api/environments/${id}`)).body.poolState).toBeUndefined();
});
