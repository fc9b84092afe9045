// The database going away is said plainly: /health answers 503 with the reason
// while PostgreSQL (a throwaway cluster of this test's own) is down, and 200 again
// once it is back; the rest of the server keeps running.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, type Database } from '../../src/db/client.js';
import { createServices } from '../../src/services/index.js';
import { startTestApi, type TestApi } from '../support/http.js';
import { startPgCluster, type PgCluster } from '../support/pg-cluster.js';
import { waitFor } from '../support/wait.js';

let cluster: PgCluster;
let database: Database;
let api: TestApi;
const stop = () => cluster.stop();
const start = () => cluster.start();

beforeAll(async () => {
  cluster = await startPgCluster('berth-outage-');
  database = await openDatabase({ databaseUrl: cluster.url, poolSize: 4 });
  api = await startTestApi({ ...database, services: createServices(database.db) }, { runtime: false });
});
afterAll(async () => {
  await api?.close();
  await database?.close();
  cluster?.destroy();
});

describe('database outage', () => {
  it('/health: 200, then 503 with the reason while the database is down, then 200 again', async () => {
    const up = await api.call('GET', '/health', { key: null });
    expect(up.status).toBe(200);
    expect(up.body).toMatchObject({ ok: true, database: 'postgres' });

    stop();
    const down = await api.call('GET', '/health', { key: null });
    expect(down.status).toBe(503);
    expect(down.body.error.code).toBe('database_unavailable');
    expect(down.body.error.message).toMatch(/database does not answer: .*(ECONNREFUSED|terminat|shut)/i);
    // The rest of the API says the same kind of thing, and the server is still up.
    const again = await api.call('GET', '/health', { key: null });
    expect(again.status).toBe(503);

    start();
    await waitFor('/health to answer 200 again', async () => (await api.call('GET', '/health', { key: null })).status === 200, 30_000, 200);
  });
});
