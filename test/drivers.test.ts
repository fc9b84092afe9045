// GET /api/drivers lists every descriptor once, says which this server runs, and gives a
// config schema the API's own validation agrees with; agents are refused on a driver whose
// descriptor does not run their adapter.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DRIVER_DESCRIPTORS, DRIVER_KINDS, driversForAdapter } from '../src/drivers/descriptors.js';
import { openTestDb, type TestDb } from './support/db.js';
import { startTestApi, type TestApi } from './support/http.js';

let t: TestDb;
let api: TestApi;
let co: { id: string; key: string };

beforeAll(async () => {
  t = await openTestDb();
  api = await startTestApi(t);
  co = await api.company('Drivers Co');
});
afterAll(async () => {
  await api?.close();
  await t?.close();
});

describe('GET /api/drivers', () => {
  it('lists every known driver once, with its schema, secret fields and whether this server runs it', async () => {
    const r = await api.call('GET', '/api/drivers', { key: co.key });
    expect(r.status).toBe(200);
    expect(r.body.map((d: { kind: string }) => d.kind)).toEqual(DRIVER_KINDS);
    const byKind = Object.fromEntries(r.body.map((d: { kind: string }) => [d.kind, d]));
    // The test server has only the local driver.
    expect(byKind.local.runs).toBe(true);
    expect(byKind.ssh.runs).toBe(false);
    expect(byKind.ssh.secretFields).toContain('privateKey');
    expect(byKind.ssh.configSchema.type).toBe('object');
    expect(byKind.ssh.configSchema.required).toEqual(expect.arrayContaining(['host', 'username']));
    expect(byKind.ssh.form.map((f: { path: string }) => f.path)).toContain('host');
    for (const d of r.body) expect(d.adapters).toEqual([...DRIVER_DESCRIPTORS[d.kind as keyof typeof DRIVER_DESCRIPTORS].adapters]);
  });

  it('needs a key', async () => {
    expect((await api.call('GET', '/api/drivers', { key: null })).status).toBe(401);
  });

  it('an environment listing filtered by an unknown driver is a 400 naming the known ones', async () => {
    const r = await api.call('GET', `/api/companies/${co.id}/environments?driver=nope`, { key: co.key });
    expect(r.status).toBe(400);
    expect(JSON.stringify(r.body)).toContain('driver');
    for (const k of DRIVER_KINDS) expect(JSON.stringify(r.body)).toContain(k);
  });

  it('creating an environment of an unknown driver is a 422 naming the known ones, and changes nothing', async () => {
    const before = (await api.call('GET', `/api/companies/${co.id}/environments`, { key: co.key })).body.length;
    const r = await api.call('POST', `/api/companies/${co.id}/environments`, { key: co.key, body: { name: 'x', driver: 'nope', config: {} } });
    expect(r.status).toBe(422);
    for (const k of DRIVER_KINDS) expect(JSON.stringify(r.body)).toContain(k);
    expect((await api.call('GET', `/api/companies/${co.id}/environments`, { key: co.key })).body.length).toBe(before);
  });
});

describe('adapters by descriptor', () => {
  it('an agent whose adapter the environment does not run is refused naming the usable drivers', async () => {
    expect(driversForAdapter('process')).toEqual(expect.arrayContaining(['local', 'ssh']));
    expect(driversForAdapter('process')).not.toContain('sandbox');
    const env = (await api.call('POST', `/api/companies/${co.id}/environments`, { key: co.key, body: { name: 'sb', driver: 'sandbox', config: { provider: 'p' } } })).body;
    const r = await api.call('POST', `/api/companies/${co.id}/agents`, {
      key: co.key,
      body: { name: 'a', adapterType: 'process', adapterConfig: { command: 'true' }, defaultEnvironmentId: env.id },
    });
    expect(r.status).toBe(422);
    expect(JSON.stringify(r.body)).toContain('defaultEnvironmentId');
    for (const k of driversForAdapter('process')) expect(JSON.stringify(r.body)).toContain(k);
  });
});
