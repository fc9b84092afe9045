// Heartbeat runs end to end in one process: invoke -> claim -> lease -> adapter -> finalize.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { queryRows } from '../src/db/client.js';
import { localDriver } from '../src/drivers/local/driver.js';
import type { EnvironmentDriver } from '../src/drivers/contract.js';
import type { HeartbeatRun } from '../src/domain/types.js';
import { startRuntime, type Runtime } from '../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from './support/db.js';
import { collectRuntimeErrors } from './support/runtime-errors.js';
import { isAlive, waitFor } from './support/wait.js';

let t: TestDb;
let runtime: Runtime;
let companyId: string;
const workspaceRoot = mkdtempSync(join(tmpdir(), 'berth-ws-'));
let failCleanups = 0;

// The local driver, but whose cleanup fails the first `failCleanups` times it is asked.
const flakyLocal: EnvironmentDriver = {
  ...localDriver({ workspaceRoot }),
  async destroy(env, resource, signal) {
    if (failCleanups > 0) {
      failCleanups--;
      throw new Error('simulated cleanup failure');
    }
    return localDriver({ workspaceRoot }).destroy(env, resource, signal);
  },
};

const runtimeErrors = collectRuntimeErrors();
beforeAll(async () => {
  t = await openTestDb();
  companyId = (await t.services.companies.create({ name: 'Runs Co' })).id;
  runtime = await startRuntime({
    services: t.services,
    db: t.db,
    drivers: new Map([['local', flakyLocal]]),
    pollMs: 50,
    sweepMs: 200,
    heartbeatMs: 100,
    leaseTtlSeconds: 2,
    logLimitChars: 100_000,
    apiUrl: 'http://127.0.0.1:9',
    onError: runtimeErrors.onError,
  });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  await t?.close();
  rmSync(workspaceRoot, { recursive: true, force: true });
});

let agentCount = 0;
async function processAgent(command: string, args: string[], extra: Record<string, unknown> = {}) {
  return t.services.agents.create(companyId, {
    name: `agent-${++agentCount}`,
    adapterType: 'process',
    adapterConfig: { command, args, ...extra } as never,
  });
}


async function runToEnd(agentId: string): Promise<HeartbeatRun> {
  const run = await t.services.runs.invoke(companyId, agentId);
  runtime.poke();
  return waitFor(`run ${run.id} to finish`, async () => {
    const r = await t.services.runs.get(companyId, run.id);
    return r.finishedAt ? r : null;
  });
}

const logText = async (runId: string, stream?: string) =>
  (await t.services.runs.readLog(companyId, runId)).filter((c) => !stream || c.stream === stream).map((c) => c.chunk).join('');

describe('process runs', () => {
  it('run through the Local environment: lease acquired and released, paperclipEnvironment, PAPERCLIP_* and logs', async () => {
    const agent = await processAgent('sh', ['-c', 'echo "run=$PAPERCLIP_RUN_ID agent=$PAPERCLIP_AGENT_ID company=$PAPERCLIP_COMPANY_ID"; echo "key=${PAPERCLIP_API_KEY%${PAPERCLIP_API_KEY#????}}"; echo oops >&2; pwd']);
    const run = await runToEnd(agent.id);
    expect(run).toMatchObject({ status: 'succeeded', exitCode: 0, errorCode: null });
    const out = await logText(run.id, 'stdout');
    expect(out).toContain(`run=${run.id} agent=${agent.id} company=${companyId}`);
    expect(out).toContain('key=brt_');
    expect(await logText(run.id, 'stderr')).toBe('oops\n');
    const env = run.contextSnapshot.paperclipEnvironment as Record<string, unknown>;
    const local = await t.services.environments.ensureLocalEnvironment(companyId);
    expect(env).toMatchObject({ id: local.id, name: 'Local', driver: 'local', leaseId: run.leaseId, workspaceOwned: true });
    expect(out).toContain(String(env.cwd));
    const lease = await t.services.leases.get(companyId, run.leaseId!);
    expect(lease).toMatchObject({ status: 'released', heartbeatRunId: run.id, cleanupStatus: 'success' });
    expect(env.fence).toBe(lease.fence);
    expect(existsSync(String(env.cwd))).toBe(false); // the ephemeral workspace is gone
    const acts = await t.services.activity.list(companyId, { runId: run.id });
    expect(acts.items.map((a) => a.action).reverse()).toEqual([
      'heartbeat_run.queued',
      'environment.lease_acquired',
      'environment.lease_activated',
      'environment.lease_released',
      'environment.lease_cleanup_succeeded',
      'heartbeat_run.finished',
    ]);
    const released = acts.items.find((a) => a.action === 'environment.lease_released')!;
    expect(released.details).toMatchObject({ status: 'released', environmentId: local.id, fence: lease.fence });
  });

  it("injects the environment's envVars and the agent's env, but none of the server's own variables", async () => {
    const local = await t.services.environments.ensureLocalEnvironment(companyId);
    await t.services.environments.update(companyId, local.id, { envVars: { REGION: 'eu-1', SHARED: 'from-environment' } });
    process.env.BERTH_TEST_SERVER_SECRET = 'must-not-leak';
    try {
      const agent = await processAgent('sh', ['-c', 'echo "region=$REGION shared=$SHARED own=$OWN secret=${BERTH_TEST_SERVER_SECRET:-unset} path=${PATH:+set}"'], {
        env: { OWN: 'agent', SHARED: 'from-agent' },
      });
      const run = await runToEnd(agent.id);
      expect(await logText(run.id, 'stdout')).toBe('region=eu-1 shared=from-agent own=agent secret=unset path=set\n');
    } finally {
      delete process.env.BERTH_TEST_SERVER_SECRET;
      await t.services.environments.update(companyId, local.id, { envVars: {} });
    }
  });

  it('keeps log chunks in order with increasing seq', async () => {
    const agent = await processAgent('sh', ['-c', 'for i in $(seq 1 200); do echo line-$i; done']);
    const run = await runToEnd(agent.id);
    const chunks = await t.services.runs.readLog(companyId, run.id);
    const seqs = chunks.map((c) => c.seq);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    const lines = chunks.map((c) => c.chunk).join('').trim().split('\n');
    expect(lines).toEqual(Array.from({ length: 200 }, (_, i) => `line-${i + 1}`));
  });

  it('caps a run\'s log and says so, while the run itself goes on to the end', async () => {
    // ~300,000 characters of output against a cap of 100,000 in this runtime.
    const agent = await processAgent('sh', ['-c', 'i=0; while [ $i -lt 3000 ]; do printf "%099d\\n" $i; i=$((i+1)); done; echo done >&2']);
    const run = await runToEnd(agent.id);
    expect(run.status).toBe('succeeded');
    const chunks = await t.services.runs.readLog(companyId, run.id, { limit: 10_000 });
    const out = chunks.filter((c) => c.stream === 'stdout').map((c) => c.chunk).join('');
    expect(out.length).toBeLessThanOrEqual(100_000);
    expect(out.length).toBeGreaterThan(90_000);
    expect(chunks[chunks.length - 1]).toMatchObject({ stream: 'system' });
    expect(chunks[chunks.length - 1]!.chunk).toContain('log truncated');
  });

  it('a failing process fails the run and its lease, with the error as failureReason', async () => {
    const agent = await processAgent('sh', ['-c', 'exit 3']);
    const run = await runToEnd(agent.id);
    expect(run).toMatchObject({ status: 'failed', exitCode: 3, errorCode: 'process_failed' });
    const lease = await t.services.leases.get(companyId, run.leaseId!);
    expect(lease.status).toBe('failed');
    expect(lease.failureReason).toContain('exited with code 3');
  });

  it('a command that does not exist fails with spawn_failed', async () => {
    const agent = await processAgent('/no/such/binary', []);
    const run = await runToEnd(agent.id);
    expect(run).toMatchObject({ status: 'failed', errorCode: 'spawn_failed' });
    expect((await t.services.leases.get(companyId, run.leaseId!)).status).toBe('failed');
  });

  it('times out: timed_out, lease failed, and no process of the tree is left', async () => {
    const pidFile = join(workspaceRoot, 'timeout-pids');
    // A parent that starts a grandchild which ignores SIGTERM: only SIGKILL after the grace period ends it.
    const script = `sh -c 'trap "" TERM; sleep 60' & echo $! > ${pidFile}; echo $$ >> ${pidFile}; sleep 60`;
    const agent = await processAgent('sh', ['-c', script], { timeoutSec: 0.5, graceSec: 0.3 });
    const run = await runToEnd(agent.id);
    expect(run).toMatchObject({ status: 'timed_out', errorCode: 'timeout' });
    expect((await t.services.leases.get(companyId, run.leaseId!)).status).toBe('failed');
    const pids = readFileSync(pidFile, 'utf8').trim().split('\n').map(Number);
    expect(pids.length).toBe(2);
    for (const pid of pids) expect(isAlive(pid), `pid ${pid}`).toBe(false);
  });

  it('a finished run leaves no background grandchild behind', async () => {
    const pidFile = join(workspaceRoot, 'bg-pids');
    const agent = await processAgent('sh', ['-c', `sleep 60 & echo $! > ${pidFile}; exit 0`]);
    const run = await runToEnd(agent.id);
    expect(run.status).toBe('succeeded');
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    await waitFor('the grandchild to die', async () => !isAlive(pid), 3000);
  });

  it('cancelling a queued run means it never starts', async () => {
    const agent = await processAgent('sh', ['-c', 'sleep 30'], { timeoutSec: 60 });
    const blocker = await t.services.runs.invoke(companyId, agent.id); // takes the agent's only slot
    runtime.poke();
    await waitFor('the first run to start', async () => (await t.services.runs.get(companyId, blocker.id)).status === 'running');
    const queued = await t.services.runs.invoke(companyId, agent.id);
    const cancelled = await t.services.runs.cancel(companyId, queued.id);
    expect(cancelled).toMatchObject({ status: 'cancelled', startedAt: null });
    await t.services.runs.cancel(companyId, blocker.id);
    const ended = await waitFor('the running run to stop', async () => {
      const r = await t.services.runs.get(companyId, blocker.id);
      return r.finishedAt ? r : null;
    });
    expect(ended.status).toBe('cancelled');
    expect((await t.services.leases.get(companyId, ended.leaseId!)).status).toBe('expired');
    const again = await t.services.runs.get(companyId, queued.id);
    expect(again).toMatchObject({ status: 'cancelled', startedAt: null, leaseId: null });
  });

  it('keeps the per-agent limit: runs of one agent execute one at a time', async () => {
    const log = join(workspaceRoot, 'overlap.log');
    const agent = await processAgent('sh', ['-c', `echo start >> ${log}; sleep 0.2; echo end >> ${log}`]);
    const runs = await Promise.all([1, 2, 3].map(() => t.services.runs.invoke(companyId, agent.id)));
    runtime.poke();
    for (const r of runs) await waitFor('run end', async () => (await t.services.runs.get(companyId, r.id)).finishedAt);
    expect(readFileSync(log, 'utf8').trim().split('\n')).toEqual(['start', 'end', 'start', 'end', 'start', 'end']);
  });

  it('a failed cleanup leaves the lease pending_cleanup, retried until it succeeds, one activity row per attempt', async () => {
    failCleanups = 2;
    const agent = await processAgent('true', []);
    const run = await runToEnd(agent.id);
    expect(run.status).toBe('succeeded');
    const afterRun = await t.services.leases.get(companyId, run.leaseId!);
    expect(afterRun).toMatchObject({ status: 'pending_cleanup', cleanupStatus: 'failed', releaseStatus: 'released' });
    const done = await waitFor('cleanup to succeed', async () => {
      const l = await t.services.leases.get(companyId, run.leaseId!);
      return l.status === 'released' ? l : null;
    }, 20_000);
    expect(done).toMatchObject({ cleanupStatus: 'success', cleanupAttempts: 3 });
    const acts = await t.services.activity.list(companyId, { entityId: run.leaseId! });
    expect(acts.items.map((a) => a.action).reverse()).toEqual([
      'environment.lease_acquired',
      'environment.lease_activated',
      'environment.lease_released',
      // The executor's own attempt, then resource GC's two.
      'environment.lease_cleanup_failed',
      'environment.lease_cleanup_failed',
      'environment.lease_cleanup_succeeded',
    ]);
  });
});

describe('scheduling, renewal and validation', () => {
  it('renews the lease while a run outlives its ttl (2 s), so it is never expired under a live run', async () => {
    const agent = await processAgent('sleep', ['3']);
    const run = await runToEnd(agent.id);
    expect(run.status).toBe('succeeded');
    const lease = await t.services.leases.get(companyId, run.leaseId!);
    expect(lease.status).toBe('released');
    expect(lease.renewCount).toBeGreaterThanOrEqual(3);
  });

  it('a timer agent is invoked every intervalSec with source timer', async () => {
    const agent = await t.services.agents.create(companyId, { name: `timer-${++agentCount}`, adapterType: 'process', adapterConfig: { command: 'true', args: [] }, intervalSec: 1 });
    const runs = await waitFor('two timer runs to finish', async () => {
      const list = (await t.services.runs.list(companyId, { agentId: agent.id })).filter((r) => r.finishedAt);
      return list.length >= 2 ? list : null;
    });
    for (const r of runs) expect(r).toMatchObject({ invocationSource: 'timer', status: 'succeeded' });
    const gap = Math.abs(runs[0]!.createdAt.getTime() - runs[1]!.createdAt.getTime());
    expect(gap).toBeGreaterThanOrEqual(900);
  });

  it('finalizes at start-up a run left running by a server that no longer exists', async () => {
    const agent = await processAgent('true', []);
    // As if a server that is gone had claimed it (no berth_servers row for it). Written as
    // claimNext writes it, in one statement: this file's own runtime must not claim it first.
    const [row] = await queryRows<{ id: string }>(
      t.db,
      sql`WITH slot AS (UPDATE agents SET running_count = running_count + 1 WHERE id = ${agent.id} RETURNING id)
          INSERT INTO heartbeat_runs (company_id, agent_id, status, invocation_source, server_id, hostname, started_at)
          SELECT ${companyId}, slot.id, 'running', 'on_demand', 'srv_ghost', 'nowhere', now() FROM slot RETURNING id`,
    );
    const run = { id: String(row!.id) };
    const other = await startRuntime({ services: t.services, db: t.db, sweepMs: 60_000, pollMs: 60_000, heartbeatMs: 60_000, apiUrl: 'http://127.0.0.1:9', onError: runtimeErrors.onError });
    await other.stop({ graceMs: 0 });
    expect(await t.services.runs.get(companyId, run.id)).toMatchObject({ status: 'failed', errorCode: 'process_lost' });
    expect((await t.services.agents.get(companyId, agent.id)).runningCount).toBe(0);
  });

  it('expires a lease nobody renews within the sweep interval; one no driver prepared owes no driver cleanup', async () => {
    const sandbox = await t.services.environments.create(companyId, { name: `sbx-exp-${++agentCount}`, driver: 'sandbox', config: { provider: 'p' } });
    const { lease } = await t.services.leases.acquire(companyId, { environmentId: sandbox.id, ttlSeconds: 0.2 });
    const expired = await waitFor('the sweep to expire it', async () => {
      const l = await t.services.leases.get(companyId, lease.id);
      return l.status === 'expired' ? l : null;
    });
    // The sweep runs every 200 ms here: expired well within a second of expiresAt.
    expect(expired.releasedAt!.getTime() - expired.expiresAt!.getTime()).toBeLessThan(1000);
    // No driver made anything for it: it owes no cleanup, and none is recorded as done.
    expect(expired).toMatchObject({ status: 'expired', cleanupStatus: null, nextCleanupAt: null, cleanupAttempts: 0 });
  });

  it('a run whose environment is full waits in the queue and runs when a slot frees, instead of failing', async () => {
    const co = await t.services.companies.create({ name: 'Full Co' });
    const local = await t.services.environments.ensureLocalEnvironment(co.id);
    await t.services.environments.update(co.id, local.id, { capacity: 1 });
    const mk = (name: string) => t.services.agents.create(co.id, { name, adapterType: 'process', adapterConfig: { command: 'sleep', args: ['0.5'] } });
    const [a, b] = [await mk('first'), await mk('second')];
    const runA = await t.services.runs.invoke(co.id, a.id);
    runtime.poke();
    await waitFor('the first run to hold the slot', async () => (await t.services.runs.get(co.id, runA.id)).leaseId);
    const runB = await t.services.runs.invoke(co.id, b.id);
    runtime.poke();
    const [endA, endB] = await Promise.all(
      [runA, runB].map((r) => waitFor(`run ${r.id}`, async () => {
        const x = await t.services.runs.get(co.id, r.id);
        return x.finishedAt ? x : null;
      }, 20_000)),
    );
    expect(endA!.status).toBe('succeeded');
    expect(endB!.status).toBe('succeeded');
    expect(endB!.startedAt!.getTime()).toBeGreaterThanOrEqual(endA!.finishedAt!.getTime() - 50);
    const deferred = await t.services.activity.list(co.id, { runId: runB.id, action: 'heartbeat_run.deferred' });
    expect(deferred.items).toHaveLength(1);
    expect(String(deferred.items[0]!.details.reason)).toContain('capacity');
    expect((await t.services.agents.get(co.id, b.id)).runningCount).toBe(0);
  });

  it('validates agents: adapter config fields are named, and a default environment must be usable', async () => {
    const bad: Array<[unknown, string]> = [
      [{ name: 'x', adapterType: 'process', adapterConfig: {} }, 'adapterConfig.command'],
      [{ name: 'x', adapterType: 'process', adapterConfig: { command: 'true', cwd: 'relative' } }, 'adapterConfig.cwd'],
      [{ name: 'x', adapterType: 'process', adapterConfig: { command: 'true', timeoutSec: 0 } }, 'adapterConfig.timeoutSec'],
      [{ name: 'x', adapterType: 'http', adapterConfig: { url: 'ftp://example.com' } }, 'adapterConfig.url'],
      [{ name: 'x', adapterType: 'grpc', adapterConfig: {} }, 'adapterType'],
      [{ name: 'x', adapterType: 'process', adapterConfig: { command: 'true' }, maxConcurrentRuns: 0 }, 'maxConcurrentRuns'],
    ];
    for (const [input, field] of bad) {
      const err = await t.services.agents.create(companyId, input as never).catch((e: unknown) => e);
      expect(err, JSON.stringify(input)).toMatchObject({ code: 'invalid' });
      expect((err as { fields: Array<{ path: string }> }).fields.map((f) => f.path)).toContain(field);
    }
    const sandbox = await t.services.environments.create(companyId, { name: `sbx-${++agentCount}`, driver: 'sandbox', config: { provider: 'p' } });
    await expect(
      t.services.agents.create(companyId, { name: 'y', adapterType: 'process', adapterConfig: { command: 'true' }, defaultEnvironmentId: sandbox.id }),
    ).rejects.toMatchObject({ code: 'invalid', fields: [{ path: 'defaultEnvironmentId' }] });
    const other = await t.services.companies.create({ name: 'Other Co' });
    const foreign = await t.services.environments.ensureLocalEnvironment(other.id);
    await expect(
      t.services.agents.create(companyId, { name: 'z', adapterType: 'process', adapterConfig: { command: 'true' }, defaultEnvironmentId: foreign.id }),
    ).rejects.toMatchObject({ code: 'invalid', fields: [{ path: 'defaultEnvironmentId' }] });
  });

  it("answers not_found for another company's agents and runs", async () => {
    const agent = await processAgent('true', []);
    const run = await runToEnd(agent.id);
    const other = await t.services.companies.create({ name: 'Nosy Co' });
    await expect(t.services.agents.get(other.id, agent.id)).rejects.toMatchObject({ code: 'not_found' });
    await expect(t.services.runs.invoke(other.id, agent.id)).rejects.toMatchObject({ code: 'not_found' });
    await expect(t.services.runs.get(other.id, run.id)).rejects.toMatchObject({ code: 'not_found' });
    await expect(t.services.runs.cancel(other.id, run.id)).rejects.toMatchObject({ code: 'not_found' });
    await expect(t.services.runs.readLog(other.id, run.id)).rejects.toMatchObject({ code: 'not_found' });
    expect(await t.services.runs.list(other.id)).toEqual([]);
  });
});

describe('http runs', () => {
  let server: Server;
  let url: string;
  const received: Array<Record<string, unknown>> = [];
  // The agents' server is on loopback, which the http adapter refuses unless allowed.
  const allowBefore = process.env.BERTH_HTTP_ALLOW_NETWORKS;
  beforeAll(async () => {
    process.env.BERTH_HTTP_ALLOW_NETWORKS = '127.0.0.1/32';
    server = createServer((req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        received.push(JSON.parse(body));
        if (req.url === '/slow') return void setTimeout(() => res.end('late'), 3000);
        res.statusCode = req.url === '/fail' ? 503 : 200;
        res.end(req.url === '/fail' ? 'overloaded' : 'accepted');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  });
  afterAll(() => {
    if (allowBefore === undefined) delete process.env.BERTH_HTTP_ALLOW_NETWORKS;
    else process.env.BERTH_HTTP_ALLOW_NETWORKS = allowBefore;
    server?.close();
  });

  async function httpAgent(path: string, timeoutMs = 5000) {
    return t.services.agents.create(companyId, { name: `http-${++agentCount}`, adapterType: 'http', adapterConfig: { url: `${url}${path}`, timeoutMs, payload: { task: 'triage' } } });
  }

  it('posts the run context and succeeds on 2xx', async () => {
    const agent = await httpAgent('/ok');
    const run = await runToEnd(agent.id);
    expect(run.status).toBe('succeeded');
    const body = received.find((b) => b.runId === run.id)!;
    expect(body).toMatchObject({ task: 'triage', agentId: agent.id, companyId });
    expect((body.context as Record<string, unknown>).paperclipEnvironment).toMatchObject({ driver: 'local', leaseId: run.leaseId });
    expect(await logText(run.id, 'stdout')).toContain('accepted');
    expect((await t.services.leases.get(companyId, run.leaseId!)).status).toBe('released');
  });

  it('fails on non-2xx with the status in the error', async () => {
    const run = await runToEnd((await httpAgent('/fail')).id);
    expect(run).toMatchObject({ status: 'failed', errorCode: 'http_503' });
    expect(run.error).toContain('HTTP 503');
  });

  it('times out', async () => {
    const run = await runToEnd((await httpAgent('/slow', 300)).id);
    expect(run).toMatchObject({ status: 'timed_out', errorCode: 'timeout' });
  });

  it('fails with the cause when nothing listens', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as { port: number }).port;
    await new Promise((r) => closed.close(r));
    const agent = await t.services.agents.create(companyId, { name: `http-${++agentCount}`, adapterType: 'http', adapterConfig: { url: `http://127.0.0.1:${port}/` } });
    const run = await runToEnd(agent.id);
    expect(run).toMatchObject({ status: 'failed', errorCode: 'http_error' });
    expect(run.error).toContain('ECONNREFUSED');
  });
});

