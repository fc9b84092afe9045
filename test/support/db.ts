// A fresh database per test file: in-memory PGlite, or a new PostgreSQL database
// (dropped afterwards) on TEST_DATABASE_URL. A PostgreSQL test without a server fails loudly.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { openDatabase, type Database } from '../../src/db/client.js';
import { createServices, type Services } from '../../src/services/index.js';

export type Backend = 'pglite' | 'postgres';

export function testBackend(): Backend {
  const b = process.env.BERTH_TEST_BACKEND ?? 'pglite';
  if (b !== 'pglite' && b !== 'postgres') throw new Error(`BERTH_TEST_BACKEND must be pglite or postgres, not ${b}`);
  return b;
}

export function adminUrl(): string {
  const url = process.env.TEST_DATABASE_URL;
  if (!url) {
    throw new Error('TEST_DATABASE_URL is not set: PostgreSQL tests need a server. Run them with `npm test`, which provides one.');
  }
  return url;
}

export interface TestDb extends Database {
  services: Services;
  /** For PostgreSQL: the URL of this file's own database (for extra clients). */
  url?: string;
}

/** A new empty PostgreSQL database; returns its URL and a function that drops it. */
export async function createScratchDatabase(): Promise<{ url: string; drop: () => Promise<void> }> {
  const admin = adminUrl();
  const name = `berth_t_${randomBytes(6).toString('hex')}`;
  const client = new pg.Client({ connectionString: admin });
  await client.connect();
  await client.query(`CREATE DATABASE ${name}`);
  await client.end();
  const u = new URL(admin);
  u.pathname = `/${name}`;
  return {
    url: u.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: admin });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}

export async function openTestDb(opts: { poolSize?: number } = {}): Promise<TestDb> {
  if (testBackend() === 'pglite') {
    const database = await openDatabase({ databaseUrl: '', dataDir: 'memory://' });
    return { ...database, services: createServices(database.db) };
  }
  const scratch = await createScratchDatabase();
  const database = await openDatabase({ databaseUrl: scratch.url, poolSize: opts.poolSize ?? 10 });
  return {
    ...database,
    url: scratch.url,
    services: createServices(database.db),
    async close() {
      await database.close();
      await scratch.drop();
    },
  };
}
