// A server SIGKILLed while its warm-pool refill provisions leaves no member that no record
// owns: the member's record (written before the driver made anything) is found by another
// server's refill, whose maker is gone, retired, and destroyed by resource GC; the other
// server then refills the pool itself. Every workspace left on disk has a live record.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { openDatabase, queryRows, type Database } from '../../src/db/client.js';
import { localDriver } from '../../src/drivers/local/driver.js';
import { startRuntime } from '../../src/heartbeat/runtime.js';
import { createServices, type Services } from '../../src/services/index.js';
import { createScratchDatabase } from '../support/db.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { waitFor } from '../support/wait.js';

const repo = join(import.meta.dirname, '../..');
const root = mkdtempSync(join(tmpdir(), 'berth-pool-crash-'));
let scratch: { url: string; drop: () => Promise<void> };
let database: Database;
let s: Services;
const runtimeErrors = collectRuntimeErrors();

beforeAll(async () => {
  scratch = await createScratchDatabase();
  database = await openDatabase({ databaseUrl: scratch.url, poolSize: 4 });
  s = createServices(database.db);
});
afterAll(async () => {
  await database?.close();
  await scratch?.drop();
  rmSync(root, { recursive: true, force: true });
});

it('a refill SIGKILLed mid-provision leaves records another server finishes; no workspace without a live record', async () => {
  const co = await s.companies.create({ name: 'Pool crash' });
  const env = await s.environments.ensureLocalEnvironment(co.id);
  await s.environments.update(co.id, env.id, { capacity: 4, pool: { minReady: 3 } });
  const marker = join(root, 'held.marker');
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/postgres/pool-refill-crash-server.ts'], {
    cwd: repo,
    env: { ...process.env, POOL_DATABASE_URL: scratch.url, POOL_WORKSPACE_ROOT: root, POOL_MARKER: marker, POOL_SERVER_ID: 'srv_pool_doomed', POOL_HOLD_AFTER: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d));
  child.stderr!.on('data', (d: Buffer) => (out += d));
  const exited = new Promise((r) => child.once('exit', r));
  try {
    await waitFor('the refill to stop inside provision', async () => existsSync(marker) || (child.exitCode !== null && Promise.reject(new Error(out))), 60_000, 20);
  } finally {
    child.kill('SIGKILL');
    await exited;
  }
  const held = readFileSync(marker, 'utf8');
  // What the dead server left: 3 write-ahead records (provisioning, made by it), workspaces on disk for some.
  const left = await queryRows(database.db, sql`SELECT id, status, made_by FROM provider_resources WHERE environment_id = ${env.id} AND pool_member`);
  expect(left).toHaveLength(3);
  for (const r of left) expect(r).toMatchObject({ status: 'provisioning', made_by: 'srv_pool_doomed' });
  expect(left.map((r) => String(r.id))).toContain(held);
  expect(existsSync(join(root, held))).toBe(true);
  rmSync(marker);

  const b = await startRuntime({
    services: s,
    db: database.db,
    serverId: 'srv_pool_survivor',
    drivers: new Map([['local', localDriver({ workspaceRoot: root })]]),
    apiUrl: 'http://127.0.0.1:9',
    sweepMs: 100,
    heartbeatMs: 200,
    staleSeconds: 2,
    poolRefillMs: 100,
    onError: runtimeErrors.onError,
  });
  try {
    await waitFor('the dead server\'s members destroyed', async () => {
      const rows = await queryRows(database.db, sql`SELECT status FROM provider_resources WHERE id = ANY (${`{${left.map((r) => r.id).join(',')}}`}::uuid[])`);
      return rows.every((r) => r.status === 'destroyed');
    }, 30_000);
    await waitFor('3 ready members made by the survivor', async () => {
      const rows = await queryRows(database.db, sql`SELECT made_by FROM provider_resources WHERE environment_id = ${env.id} AND pool_member AND status = 'ready'`);
      return rows.length === 3 && rows.every((r) => r.made_by === 'srv_pool_survivor');
    }, 30_000);
    const live = new Set((await queryRows(database.db, sql`SELECT id FROM provider_resources WHERE status NOT IN ('destroyed', 'lost')`)).map((r) => String(r.id)));
    const dirs = readdirSync(root).filter((d) => /^[0-9a-f-]{36}$/.test(d));
    expect(dirs).toHaveLength(3);
    for (const d of dirs) expect(live.has(d), `workspace ${d} has a live record`).toBe(true);
    // The placeholders of the retired members are gone; only the survivor's 3 hold places.
    const [{ n }] = (await queryRows(database.db, sql`SELECT count(*)::int AS n FROM environment_leases WHERE environment_id = ${env.id} AND status = 'pooled'`)) as [{ n: number }];
    expect(n).toBe(3);
  } finally {
    await s.environments.update(co.id, env.id, { pool: null });
    await waitFor('the pool drained', async () => (await queryRows(database.db, sql`SELECT 1 FROM provider_resources WHERE environment_id = ${env.id} AND status NOT IN ('destroyed', 'lost')`)).length === 0, 30_000);
    await b.stop({ graceMs: 0 });
  }
});
