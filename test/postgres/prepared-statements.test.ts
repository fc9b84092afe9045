// Named prepared statements survive a schema change made by another server
// (a rolling upgrade migrating while this one runs).
import { afterAll, beforeAll, expect, it } from 'vitest';
import pg from 'pg';
import { openDatabase, type Database } from '../../src/db/client.js';
import { createServices } from '../../src/services/index.js';
import { createScratchDatabase } from '../support/db.js';

let scratch: Awaited<ReturnType<typeof createScratchDatabase>>;
let database: Database;
beforeAll(async () => {
  scratch = await createScratchDatabase();
  database = await openDatabase({ databaseUrl: scratch.url, poolSize: 1 });
});
afterAll(async () => {
  await database?.close();
  await scratch?.drop();
});

it('a prepared SELECT * keeps working after another server adds a column', async () => {
  const s = createServices(database.db);
  const company = await s.companies.create({ name: 'Upgrade Co' });
  const env = await s.environments.ensureLocalEnvironment(company.id);
  const { lease } = await s.leases.acquire(company.id, { environmentId: env.id });
  await s.leases.get(company.id, lease.id); // prepared on the pool's one connection
  const other = new pg.Client({ connectionString: scratch.url });
  await other.connect();
  await other.query('ALTER TABLE environment_leases ADD COLUMN added_by_newer_version text');
  await other.end();
  expect((await s.leases.get(company.id, lease.id)).id).toBe(lease.id);
  expect((await s.leases.release(company.id, lease.id, { fence: lease.fence })).lease.status).toBe('released');
});
