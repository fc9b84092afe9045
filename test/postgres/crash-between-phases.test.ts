// A server SIGKILLed between any two phases of a run's start (reserve -> provision ->
// activate -> exec) leaves records another server's sweeps finish: after them no lease is
// active without its run, every resource record is destroyed, no workspace is left on disk
// and no process the run started survives. On real PostgreSQL, with the killed server a
// process of its own.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, queryRows, type Database } from '../../src/db/client.js';
import { localDriver } from '../../src/drivers/local/driver.js';
import { createServices, type Services } from '../../src/services/index.js';
import { createScratchDatabase } from '../support/db.js';
import { spawnPhaseServer, startRecoveringRuntime } from '../support/phase-server.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { waitFor } from '../support/wait.js';

let scratch: { url: string; drop: () => Promise<void> };
let database: Database;
let s: Services;
const root = mkdtempSync(join(tmpdir(), 'berth-crash-ws-'));
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

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe.each(['reserved', 'provisioned', 'activated', 'started'] as const)('killed after %s', (phase) => {
  it('another server finds and finishes everything the run left', async () => {
    const co = await s.companies.create({ name: `Crash ${phase}` });
    const agent = await s.agents.create(co.id, { name: 'sleeper', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', 'echo $$ > pid; sleep 60'] } });
    const marker = join(root, `${phase}.marker`);
    const server = spawnPhaseServer({ databaseUrl: scratch.url, workspaceRoot: root, phase, marker });
    try {
      const run = await s.runs.invoke(co.id, agent.id);
      await server.reached();
      expect(readFileSync(marker, 'utf8')).toBe(run.id);
      // The write-ahead record is there before anything is made.
      const [lease] = await queryRows(database.db, sql`SELECT * FROM environment_leases WHERE heartbeat_run_id = ${run.id}`);
      expect(lease).toBeDefined();
      expect(lease!.status).toBe('active');
      const [resource] = await queryRows(database.db, sql`SELECT * FROM provider_resources WHERE lease_id = ${lease!.id}`);
      expect(resource).toBeDefined();
      expect(resource!.status).toBe(phase === 'reserved' || phase === 'provisioned' ? 'provisioning' : 'leased');
      const workspace = join(root, String(resource!.id));
      expect(existsSync(workspace)).toBe(phase !== 'reserved');
      let pid: number | null = null;
      if (phase === 'started') {
        await waitFor('the process to write its pid', async () => existsSync(join(workspace, 'pid')), 10_000, 20);
        pid = Number(readFileSync(join(workspace, 'pid'), 'utf8').trim());
        expect(alive(pid)).toBe(true);
      }

      await server.kill();

      // Another server: its sweeps (recovery, resource GC) finish what the dead one left.
      const b = await startRecoveringRuntime(s, database.db, new Map([['local', localDriver({ workspaceRoot: root })]]), runtimeErrors.onError);
      try {
        const done = await waitFor('the run to be finalized and its resource destroyed', async () => {
          const r = await s.runs.get(co.id, run.id);
          const [res] = await queryRows(database.db, sql`SELECT status FROM provider_resources WHERE id = ${resource!.id}`);
          return r.finishedAt && res!.status === 'destroyed' ? r : null;
        }, 30_000, 100);
        expect(done.status).toBe('failed');
        expect(done.errorCode).toBe('process_lost');
      } finally {
        await b.stop({ graceMs: 0 });
      }
      const active = await queryRows(database.db, sql`SELECT id FROM environment_leases WHERE company_id = ${co.id} AND status = 'active'`);
      expect(active).toEqual([]);
      const notDestroyed = await queryRows(database.db, sql`SELECT id, status FROM provider_resources WHERE company_id = ${co.id} AND status <> 'destroyed'`);
      expect(notDestroyed).toEqual([]);
      expect(existsSync(workspace)).toBe(false);
      if (pid !== null) await waitFor('the run\'s process to be gone', async () => !alive(pid!), 10_000, 50);
      expect(readdirSync(root).filter((n) => !n.endsWith('.marker'))).toEqual([]);
    } finally {
      await server.kill();
    }
  }, 120_000);
});
