// One factory for the database: PGlite in BERTH_HOME by default, PostgreSQL when
// DATABASE_URL is set. Migrations apply on open, on both.
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PGlite } from '@electric-sql/pglite';
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite';
import { migrate as migratePglite } from 'drizzle-orm/pglite/migrator';
import { drizzle as drizzlePg } from 'drizzle-orm/node-postgres';
import { migrate as migratePg } from 'drizzle-orm/node-postgres/migrator';
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core';
import { fillPlaceholders, sql, type SQL } from 'drizzle-orm';
import pg from 'pg';
import * as schema from './schema.js';
import { isBerthError } from '../domain/errors.js';
import { lockDataDir } from './lock.js';
import { berthHome } from '../home.js';
import { pgErrorOf, PG_FEATURE_NOT_SUPPORTED } from './errors.js';
import { pgListen, pgliteListen, type Listen } from './notify.js';

export type Db = PgDatabase<PgQueryResultHKT, typeof schema>;

export interface Database {
  db: Db;
  kind: 'pglite' | 'postgres';
  /** Where the data lives: a data dir for PGlite, the URL without password for PostgreSQL. */
  location: string;
  /**
   * A connection of its own for the server heartbeat (PostgreSQL): a pool busy with run work
   * must never delay it, or another server would take this one for dead. PGlite has one
   * session: there it is `db`.
   */
  heartbeatDb: Db;
  /** Wake-ups (src/db/notify.ts): a connection of its own that LISTENs (PostgreSQL), PGlite's session in-process. */
  listen: Listen;
  /** The connection pools' state now, for the metrics (PostgreSQL: `main` and `heartbeat`); PGlite has none. */
  pools(): Array<{ pool: string; total: number; idle: number; waiting: number; max: number }>;
  close(): Promise<void>;
}

export const migrationsFolder = fileURLToPath(new URL('./migrations', import.meta.url));

/** Serializes migrations of several servers starting at once on one PostgreSQL. */
const MIGRATION_LOCK_KEY = 0x62657274; // 'bert'

export { berthHome };

export interface OpenOptions {
  /** PostgreSQL URL; default `process.env.DATABASE_URL`. */
  databaseUrl?: string | undefined;
  /** PGlite data dir; default `$BERTH_HOME/db`. Use 'memory://' for a throwaway database. */
  dataDir?: string;
  /** Pool size for PostgreSQL. */
  poolSize?: number;
}

export async function openDatabase(opts: OpenOptions = {}): Promise<Database> {
  const url = opts.databaseUrl ?? process.env.DATABASE_URL;
  return url ? openPostgres(url, opts.poolSize ?? 10) : openPglite(opts.dataDir ?? join(berthHome(), 'db'));
}

async function openPglite(dataDir: string): Promise<Database> {
  const inMemory = dataDir.startsWith('memory://');
  let lock: ReturnType<typeof lockDataDir> | undefined;
  if (!inMemory) {
    mkdirSync(join(dataDir, '..'), { recursive: true, mode: 0o700 });
    lock = lockDataDir(dataDir);
  }
  try {
    const client = await PGlite.create(inMemory ? undefined : dataDir);
    const db = drizzlePglite({ client, schema });
    await migratePglite(db, { migrationsFolder });
    return {
      db: db as unknown as Db,
      heartbeatDb: db as unknown as Db,
      listen: pgliteListen(client),
      kind: 'pglite',
      location: inMemory ? 'memory' : dataDir,
      pools: () => [],
      async close() {
        await client.close();
        lock?.release();
      },
    };
  } catch (err) {
    lock?.release();
    throw err;
  }
}

/**
 * Every connection's limits: no statement runs past 30 s, and no transaction sits idle for
 * more than 60 s holding its locks (a bug or a stuck driver call would otherwise hold a row
 * lock forever); connecting gives up after 10 s.
 */
export const POOL_LIMITS = { statement_timeout: 30_000, idle_in_transaction_session_timeout: 60_000, connectionTimeoutMillis: 10_000 } as const;

async function openPostgres(url: string, poolSize: number): Promise<Database> {
  const pool = new pg.Pool({ connectionString: url, max: poolSize, ...POOL_LIMITS });
  const heartbeatPool = new pg.Pool({ connectionString: url, max: 1, ...POOL_LIMITS, statement_timeout: 5_000 });
  for (const p of [pool, heartbeatPool]) {
    // A client whose connection is cut (the database restarts) must not crash the process:
    // idle ones report on the pool, checked-out ones on themselves (their query fails anyway).
    p.on('error', () => {});
    p.on('connect', (client) => client.on('error', () => {}));
  }
  const db = drizzlePg({ client: pool, schema });
  db.transaction = pooledTransaction(pool) as typeof db.transaction;
  const conn = await pool.connect();
  try {
    await conn.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
    try {
      await migratePg(drizzlePg({ client: conn, schema }), { migrationsFolder });
    } finally {
      await conn.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]);
    }
  } catch (err) {
    conn.release();
    await pool.end();
    await heartbeatPool.end();
    throw err;
  }
  conn.release();
  return {
    db: db as unknown as Db,
    heartbeatDb: drizzlePg({ client: heartbeatPool, schema }) as unknown as Db,
    listen: pgListen(url),
    kind: 'postgres',
    location: redactUrl(url),
    pools: () => [poolStats('main', pool, poolSize), poolStats('heartbeat', heartbeatPool, 1)],
    async close() {
      await pool.end();
      await heartbeatPool.end();
    },
  };
}

function poolStats(name: string, p: pg.Pool, max: number) {
  return { pool: name, total: p.totalCount, idle: p.idleCount, waiting: p.waitingCount, max };
}

/**
 * Transactions on a pool that always give their connection back. drizzle's own (0.45) checks
 * a client out and sends BEGIN before its try/finally, so a BEGIN that fails (the database
 * restarting) leaks the connection for good, and the pool shrinks with every outage. Here
 * the client is released in any case, and destroyed when it failed for another reason than
 * an SQL error (a cut connection must not go back to the pool).
 */
function pooledTransaction(pool: pg.Pool) {
  return async (work: (tx: unknown) => Promise<unknown>, config?: unknown): Promise<unknown> => {
    const client = await pool.connect();
    let broken: Error | undefined;
    try {
      const one = drizzlePg({ client, schema });
      return await one.transaction(work as Parameters<typeof one.transaction>[0], config as Parameters<typeof one.transaction>[1]);
    } catch (err) {
      if (!pgErrorOf(err) && !isBerthError(err)) broken = err as Error;
      throw err;
    } finally {
      client.release(broken);
    }
  };
}

/**
 * A parenthesised SQL list of constant words (the project's own status vocabularies, never
 * input), inlined so the statement's text, and its plan, stays the same.
 */
export function sqlWordList(words: readonly string[]): SQL {
  for (const w of words) if (!/^[a-z_]+$/.test(w)) throw new Error(`not a word for an SQL list: ${JSON.stringify(w)}`);
  return sql.raw(`(${words.map((w) => `'${w}'`).join(', ')})`);
}

/** A text[] literal of names (driver kinds), passed as one parameter: `= ANY ($1::text[])`. */
export function textArrayLiteral(names: readonly string[]): string {
  for (const n of names) if (!/^[A-Za-z0-9_.:-]+$/.test(n)) throw new Error(`not a name for a text array: ${JSON.stringify(n)}`);
  return `{${names.map((n) => `"${n}"`).join(',')}}`;
}

export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'postgres://(unparseable url)';
  }
}

type Conn = Db | Parameters<Parameters<Db['transaction']>[0]>[0];

interface CompiledQuery {
  sql: string;
  params: unknown[];
}
interface SessionInternals {
  dialect: { sqlToQuery(q: SQL): CompiledQuery };
  session: { prepareQuery(q: CompiledQuery, fields: undefined, name: string | undefined, arrayMode: boolean): { execute(): Promise<unknown> } };
}

function statementName(text: string): string {
  return `berth_${createHash('sha1').update(text).digest('hex').slice(0, 16)}_${statementGeneration}`;
}
let statementGeneration = 0;
const statementNames = new Map<string, string>();
const compiledStatements = new Map<string, CompiledQuery & { name: string }>();

async function execute<T>(db: Conn, query: CompiledQuery, name: string, retry: () => Promise<T[]>): Promise<T[]> {
  try {
    const result = (await (db as unknown as SessionInternals).session.prepareQuery(query, undefined, name, false).execute()) as { rows: T[] };
    return result.rows;
  } catch (err) {
    // Another server migrated the schema under a prepared `SELECT *`: prepare anew
    // under fresh names (a retry is safe: the failed statement did nothing).
    const text = `${(err as Error).message} ${(err as { cause?: Error }).cause?.message ?? ''}`;
    if (pgErrorOf(err)?.code !== PG_FEATURE_NOT_SUPPORTED || !text.includes('cached plan')) throw err;
    statementGeneration++;
    statementNames.clear();
    compiledStatements.clear();
    return retry();
  }
}

/**
 * Run raw SQL and return its rows, the same way on both drivers. On PostgreSQL
 * each distinct SQL text becomes a named prepared statement on each connection,
 * so the server parses and plans it once per connection, not once per call
 * (the lease statements are CTEs whose planning costs more than their execution).
 */
export async function queryRows<T = Record<string, unknown>>(db: Conn, query: SQL): Promise<T[]> {
  const compiled = (db as unknown as SessionInternals).dialect.sqlToQuery(query);
  let name = statementNames.get(compiled.sql);
  if (name === undefined) {
    name = statementName(compiled.sql);
    if (statementNames.size < 10_000) statementNames.set(compiled.sql, name);
  }
  return execute<T>(db, compiled, name, () => queryRows<T>(db, query));
}

/**
 * For the hot paths: `build` writes the statement with `sql.placeholder(name)` for
 * every value and is called once per `shape` (a key naming everything that changes
 * the SQL text); later calls only fill in `values`.
 */
export async function runStatement<T = Record<string, unknown>>(
  db: Conn,
  shape: string,
  build: () => SQL,
  values: Record<string, unknown>,
): Promise<T[]> {
  let st = compiledStatements.get(shape);
  if (st === undefined) {
    const compiled = (db as unknown as SessionInternals).dialect.sqlToQuery(build());
    st = { ...compiled, name: statementName(compiled.sql) };
    compiledStatements.set(shape, st);
  }
  return execute<T>(db, { sql: st.sql, params: fillPlaceholders(st.params, values) }, st.name, () => runStatement<T>(db, shape, build, values));
}
