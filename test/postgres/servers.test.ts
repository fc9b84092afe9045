// Several real server processes on one PostgreSQL: each run executes exactly once,
// and a server killed mid-run has its runs and leases finalized by another.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { openDatabase, type Database } from '../../src/db/client.js';
import { createServices, type Services } from '../../src/services/index.js';
import { createScratchDatabase } from '../support/db.js';
import { isAlive, waitFor } from '../support/wait.js';

let scratch: Awaited<ReturnType<typeof createScratchDatabase>>;
let database: Database;
let s: Services;
let companyId: string;
const home = mkdtempSync(join(tmpdir(), 'berth-servers-'));
const children: ChildProcess[] = [];

beforeAll(async () => {
  scratch = await createScratchDatabase();
  database = await openDatabase({ databaseUrl: scratch.url, poolSize: 4 });
  s = createServices(database.db);
  companyId = (await s.companies.create({ name: 'Fleet Co' })).id;
});
afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  await database?.close();
  await scratch?.drop();
  rmSync(home, { recursive: true, force: true });
});

function startServer(extraEnv: Record<string, string> = {}): Promise<{ child: ChildProcess; serverId: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/worker.ts'], {
    // These runs never call back: any public URL will do (a worker refuses to start without one).
    env: { ...process.env, DATABASE_URL: scratch.url, BERTH_HOME: home, BERTH_PUBLIC_URL: 'http://127.0.0.1:3710', ...extraEnv },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(child);
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /ready (\S+)/.exec(out);
      if (m) resolve({ child, serverId: m[1]! });
    });
    child.once('exit', (code) => reject(new Error(`server exited early with ${code}: ${out}`)));
  });
}


describe('servers sharing one PostgreSQL', () => {
  it('200 queued runs over two server processes: each executed exactly once, none lost, per-agent limits kept', async () => {
    const ledger = join(home, 'ledger');
    const agents = await Promise.all(
      [1, 2, 3, 4].map((i) =>
        s.agents.create(companyId, {
          name: `worker-${i}`,
          adapterType: 'process',
          maxConcurrentRuns: i, // agent i may run i at once
          adapterConfig: { command: 'sh', args: ['-c', `echo "$PAPERCLIP_RUN_ID start $(date +%s%N)" >> ${ledger}; sleep 0.05; echo "$PAPERCLIP_RUN_ID end $(date +%s%N)" >> ${ledger}`] },
        }),
      ),
    );
    // Both servers up before the runs are queued, and each may run at most 6 at once while the
    // agents together allow 10: neither can take every slot, so both must work (on a loaded
    // machine one server could otherwise finish all 200 before the other has started).
    const [a, b] = await Promise.all([startServer({ BERTH_MAX_RUNS: '6' }), startServer({ BERTH_MAX_RUNS: '6' })]);
    const runs = [];
    for (let i = 0; i < 200; i++) runs.push(await s.runs.invoke(companyId, agents[i % 4]!.id));
    const pool = new pg.Pool({ connectionString: scratch.url, max: 1 });
    pool.on('error', () => {}); // the scratch database is dropped at the end, connections or not
    let maxRunningPerAgent = new Map<string, number>();
    const done = await waitFor('all runs to finish', async () => {
      const { rows } = await pool.query(`SELECT agent_id, count(*)::int AS n FROM heartbeat_runs WHERE status = 'running' GROUP BY agent_id`);
      for (const r of rows) maxRunningPerAgent.set(r.agent_id, Math.max(maxRunningPerAgent.get(r.agent_id) ?? 0, r.n));
      const { rows: left } = await pool.query(`SELECT count(*)::int AS n FROM heartbeat_runs WHERE finished_at IS NULL`);
      return left[0].n === 0;
    }, 120_000, 50);
    expect(done).toBe(true);
    const { rows: statuses } = await pool.query(`SELECT status, server_id, count(*)::int AS n FROM heartbeat_runs GROUP BY 1, 2`);
    expect(statuses.filter((r) => r.status !== 'succeeded')).toEqual([]);
    const byServer = new Map(statuses.map((r) => [r.server_id, r.n]));
    expect((byServer.get(a.serverId) ?? 0) + (byServer.get(b.serverId) ?? 0)).toBe(200);
    expect(byServer.get(a.serverId) ?? 0).toBeGreaterThan(0);
    expect(byServer.get(b.serverId) ?? 0).toBeGreaterThan(0);
    // Exactly once: every run id starts once and ends once in the ledger its processes wrote.
    const lines = readFileSync(ledger, 'utf8').trim().split('\n').map((l) => l.split(' '));
    for (const run of runs) {
      expect(lines.filter(([id, what]) => id === run.id && what === 'start')).toHaveLength(1);
      expect(lines.filter(([id, what]) => id === run.id && what === 'end')).toHaveLength(1);
    }
    // Per-agent limits, from the processes' own start/end times (nanoseconds): never more overlapping than allowed.
    for (const [i, agent] of agents.entries()) {
      const mine = new Set(runs.filter((r) => r.agentId === agent.id).map((r) => r.id));
      const events = lines.filter(([id]) => mine.has(id!)).map(([, what, ts]) => ({ ts: BigInt(ts!), d: what === 'start' ? 1 : -1 }));
      events.sort((x, y) => (x.ts < y.ts ? -1 : x.ts > y.ts ? 1 : x.d - y.d));
      let now = 0;
      let peak = 0;
      for (const e of events) peak = Math.max(peak, (now += e.d));
      expect(peak, `agent ${i + 1}`).toBeLessThanOrEqual(i + 1);
      expect(maxRunningPerAgent.get(agent.id) ?? 0).toBeLessThanOrEqual(i + 1);
    }
    const { rows: leases } = await pool.query(`SELECT status, count(*)::int AS n FROM environment_leases GROUP BY 1`);
    expect(leases).toEqual([{ status: 'released', n: 200 }]);
    await pool.end();
    for (const srv of [a, b]) {
      srv.child.kill('SIGTERM');
      await new Promise((r) => srv.child.once('exit', r));
    }
  }, 180_000);

  it('a server SIGKILLed mid-run: another finalizes the run process_lost, its lease failed, and its process is gone', async () => {
    const pidFile = join(home, 'victim-pid');
    const agent = await s.agents.create(companyId, {
      name: 'long-runner',
      adapterType: 'process',
      adapterConfig: { command: 'sh', args: ['-c', `echo $$ > ${pidFile}; sleep 120`], timeoutSec: 600 },
    });
    const victim = await startServer();
    const run = await s.runs.invoke(companyId, agent.id);
    await waitFor('the run to start', async () => (await s.runs.get(companyId, run.id)).pid);
    const started = await s.runs.get(companyId, run.id);
    expect(started.serverId).toBe(victim.serverId);
    const childPid = Number(readFileSync(pidFile, 'utf8').trim());
    victim.child.kill('SIGKILL');
    const killedAt = Date.now();
    await new Promise((r) => victim.child.once('exit', r));

    const rescuer = await startServer();
    const lost = await waitFor('the run to be finalized', async () => {
      const r = await s.runs.get(companyId, run.id);
      return r.finishedAt ? r : null;
    }, 30_000);
    const finalizedAfterMs = Date.now() - killedAt;
    expect(lost).toMatchObject({ status: 'failed', errorCode: 'process_lost' });
    const lease = await s.leases.get(companyId, started.leaseId!);
    expect(lease.status).toBe('failed');
    expect(lease.failureReason).toContain('process_lost');
    expect(await waitFor('the orphaned process to be killed', async () => !isAlive(childPid), 5000)).toBe(true);
    // The stated bound: staleSeconds (5) + one sweep (1) + one heartbeat (1) = 7 s after the last heartbeat.
    expect(finalizedAfterMs).toBeLessThan(10_000);
    console.log(`recovery: run finalized ${finalizedAfterMs} ms after SIGKILL of its server`);
    rescuer.child.kill('SIGTERM');
    await new Promise((r) => rescuer.child.once('exit', r));
  }, 60_000);
});

