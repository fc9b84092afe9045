// A run is never declared lost while it is alive, and never killed by mistake (REVIEW C-6,
// C-8, C-15): renewal survives passing errors, recovery signals only the very process it
// recorded, a run finalized elsewhere is never started, and a run a live server no longer
// executes does not stay `running`.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queryRows } from '../src/db/client.js';
import { BerthError } from '../src/domain/errors.js';
import { localDriver } from '../src/drivers/local/driver.js';
import type { EnvironmentDriver } from '../src/drivers/contract.js';
import { keepLeaseAlive } from '../src/heartbeat/run/keepalive.js';
import { isSameProcess, processIdentity } from '../src/drivers/local/process-identity.js';
import { startRuntime, type Runtime } from '../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from './support/db.js';
import { collectRuntimeErrors } from './support/runtime-errors.js';
import { isAlive, waitFor } from './support/wait.js';

const root = mkdtempSync(join(tmpdir(), 'berth-safety-'));
let t: TestDb;
let runtime: Runtime;
let companyId: string;
let n = 0;
/** Set by a test: the local driver's prepareWorkspace waits for it. */
let holdPrepare: Promise<void> | null = null;
const slowLocal: EnvironmentDriver = {
  ...localDriver({ workspaceRoot: root }),
  async provision(env, req, signal) {
    if (holdPrepare) await holdPrepare;
    return localDriver({ workspaceRoot: root }).provision(env, req, signal);
  },
};

const runtimeErrors = collectRuntimeErrors();
beforeAll(async () => {
  t = await openTestDb();
  companyId = (await t.services.companies.create({ name: 'Safety Co' })).id;
  runtime = await startRuntime({
    services: t.services,
    db: t.db,
    drivers: new Map([['local', slowLocal]]),
    apiUrl: 'http://127.0.0.1:9',
    pollMs: 50,
    sweepMs: 200,
    heartbeatMs: 100,
    orphanGraceSeconds: 1,
    onError: runtimeErrors.onError,
  });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  await t?.close();
  rmSync(root, { recursive: true, force: true });
});

describe('lease keepalive', () => {
  it('retries a renewal that failed for a passing reason; stops only when the lease is lost', async () => {
    let calls = 0;
    const transient: number[] = [];
    let lost: unknown = null;
    const ka = keepLeaseAlive({
      renew: async () => {
        calls += 1;
        if (calls <= 2) throw Object.assign(new Error('Connection terminated unexpectedly'), { code: 'ECONNRESET' });
        if (calls === 4) throw new BerthError('stale_fence', 'lease is held under fence 9; fence 3 is stale');
      },
      everyMs: 20,
      retryMs: 10,
      onLost: (err) => (lost = err),
      onTransient: (_err, inARow) => transient.push(inARow),
    });
    await waitFor('the keepalive to give up', async () => lost, 5_000, 5);
    ka.stop();
    expect(transient).toEqual([1, 2]);
    expect(calls).toBe(4);
    expect((lost as BerthError).code).toBe('stale_fence');
    await new Promise((r) => setTimeout(r, 60));
    expect(calls).toBe(4); // nothing after the loss
  });
});

describe('process identity', () => {
  it('matches only the very process: same boot, pid namespace and start time', async () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      await waitFor('the child to start', async () => child.pid !== undefined && processIdentity(child.pid!));
      const id = processIdentity(child.pid!)!;
      expect(id.bootId).toMatch(/^[0-9a-f-]{36}$/);
      expect(isSameProcess(child.pid!, id)).toBe(true);
      expect(isSameProcess(child.pid!, { ...id, startTime: String(Number(id.startTime) - 1) })).toBe(false);
      expect(isSameProcess(child.pid!, { ...id, bootId: '00000000-0000-0000-0000-000000000000' })).toBe(false);
      expect(isSameProcess(child.pid!, { ...id, pidNamespace: 'pid:[1]' })).toBe(false);
      expect(isSameProcess(child.pid!, null)).toBe(false);
    } finally {
      child.kill('SIGKILL');
    }
  });
});

describe('recovery', () => {
  /** A run as a server that is gone left it: running, with a pid and what the server knew of it. */
  async function lostRun(pid: number, identity: unknown) {
    const agent = await t.services.agents.create(companyId, { name: `lost-${++n}`, adapterType: 'process', adapterConfig: { command: 'true' } });
    const [row] = await queryRows<{ id: string }>(
      t.db,
      sql`WITH slot AS (UPDATE agents SET running_count = running_count + 1 WHERE id = ${agent.id} RETURNING id)
          INSERT INTO heartbeat_runs (company_id, agent_id, status, invocation_source, server_id, hostname, started_at, pid, process_identity)
          SELECT ${companyId}, slot.id, 'running', 'on_demand', 'srv_gone', 'this-host', now(), ${pid}, ${JSON.stringify(identity)}::jsonb FROM slot RETURNING id`,
    );
    return String(row!.id);
  }

  it('kills a lost run\'s pid only when it is still the process recorded; a reused pid is left alone', async () => {
    // Each its own process group, as a run's process is.
    const recorded = spawn('sleep', ['30'], { stdio: 'ignore', detached: true });
    const bystander = spawn('sleep', ['30'], { stdio: 'ignore', detached: true });
    try {
      await waitFor('both to start', async () => processIdentity(recorded.pid!) && processIdentity(bystander.pid!));
      const real = await lostRun(recorded.pid!, processIdentity(recorded.pid!));
      // The same pid number once named another process (a reboot ago, or in another container).
      const stale = await lostRun(bystander.pid!, { ...processIdentity(bystander.pid!)!, startTime: '1' });
      for (const id of [real, stale]) {
        await waitFor('recovery to finalize it', async () => (await t.services.runs.get(companyId, id)).status === 'failed');
        expect((await t.services.runs.get(companyId, id)).errorCode).toBe('process_lost');
      }
      await waitFor('the recorded process to be killed', async () => !isAlive(recorded.pid!));
      expect(isAlive(bystander.pid!)).toBe(true);
    } finally {
      recorded.kill('SIGKILL');
      bystander.kill('SIGKILL');
    }
  });
});

describe('a run finalized elsewhere', () => {
  it('is never started when recovery finalized it while its workspace was prepared; its lease is released', async () => {
    const marker = join(root, `started-${++n}`);
    const agent = await t.services.agents.create(companyId, { name: `late-${n}`, adapterType: 'process', adapterConfig: { command: 'touch', args: [marker] } });
    let release!: () => void;
    holdPrepare = new Promise<void>((r) => (release = r));
    try {
      const run = await t.services.runs.invoke(companyId, agent.id);
      runtime.poke();
      const lease = await waitFor('the run to hold its lease', async () => {
        const leases = await queryRows<{ id: string }>(t.db, sql`SELECT id FROM environment_leases WHERE heartbeat_run_id = ${run.id} AND status = 'active'`);
        return leases[0]?.id;
      });
      // Another server's recovery, as finalizeLostRuns writes it.
      await queryRows(t.db, sql`UPDATE heartbeat_runs SET status = 'failed', error_code = 'process_lost', finished_at = now() WHERE id = ${run.id}`);
      release();
      await waitFor('its lease to end', async () => (await t.services.leases.get(companyId, lease)).status !== 'active');
      await new Promise((r) => setTimeout(r, 300));
      expect(existsSync(marker)).toBe(false);
      const after = await t.services.runs.get(companyId, run.id);
      expect(after).toMatchObject({ status: 'failed', errorCode: 'process_lost', pid: null });
    } finally {
      holdPrepare = null;
      release?.();
    }
  });
});

describe('orphaned runs', () => {
  it("a run this live server holds as running but no longer executes is finalized execution_lost, freeing its agent's slot", async () => {
    const agent = await t.services.agents.create(companyId, { name: `orphan-${++n}`, adapterType: 'process', adapterConfig: { command: 'true' } });
    const [row] = await queryRows<{ id: string }>(
      t.db,
      sql`WITH slot AS (UPDATE agents SET running_count = running_count + 1 WHERE id = ${agent.id} RETURNING id)
          INSERT INTO heartbeat_runs (company_id, agent_id, status, invocation_source, server_id, hostname, started_at)
          SELECT ${companyId}, slot.id, 'running', 'on_demand', ${runtime.serverId}, 'this-host', now() - interval '10 seconds' FROM slot RETURNING id`,
    );
    const id = String(row!.id);
    const done = await waitFor('the orphan to be finalized', async () => {
      const r = await t.services.runs.get(companyId, id);
      return r.status !== 'running' ? r : null;
    }, 15_000);
    expect(done).toMatchObject({ status: 'failed', errorCode: 'execution_lost' });
    expect((await t.services.agents.get(companyId, agent.id)).runningCount).toBe(0);
    // Reported after the lease is released, a moment after the run's status changed.
    await waitFor('the orphan to be reported', async () => runtimeErrors.seen.some((e) => /execution_lost/.test(e)), 10_000);
    expect(runtimeErrors.take(/execution_lost/)).toHaveLength(1);
  });
});
