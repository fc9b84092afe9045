// Heartbeat runs on a Slurm environment end to end, on the real single-node cluster the
// test command started: the runtime claims the run, submits the lease's job, runs the
// agent's process in it, follows its output, and finalizes with Slurm's outcome. Also:
// timeout, cancel, the run's secrets kept off every command line and job record, a job
// cancelled outside Berth, and reconciliation of a labelled job no record owns.
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { slurmDriver } from '../../src/drivers/slurm/driver.js';
import type { HeartbeatRun } from '../../src/domain/types.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { waitFor } from '../support/wait.js';
import { jobRecord, jobState, testCluster } from './cluster.js';

process.env.BERTH_SECRET_KEY = randomBytes(32).toString('hex');

const cluster = testCluster();
let t: TestDb;
let runtime: Runtime;
let companyId: string;
let n = 0;
const runtimeErrors = collectRuntimeErrors();

beforeAll(async () => {
  t = await openTestDb();
  companyId = (await t.services.companies.create({ name: 'Slurm Co' })).id;
  runtime = await startRuntime({
    services: t.services,
    db: t.db,
    drivers: new Map([['slurm', slurmDriver()]]),
    pollMs: 50,
    sweepMs: 200,
    heartbeatMs: 100,
    leaseTtlSeconds: 10,
    reconcileMs: 300,
    orphanResourceGraceSeconds: 0,
    apiUrl: 'http://127.0.0.1:9',
    onError: runtimeErrors.onError,
  });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  await t?.close();
});

const slurmConfig = () => ({ slurmConf: cluster.slurmConf, workDir: cluster.workDir, partition: cluster.partition, timeLimitMinutes: 10 });

async function slurmEnvironment(extra: Record<string, unknown> = {}) {
  return t.services.environments.create(companyId, { name: `slurm-${++n}`, driver: 'slurm', config: slurmConfig(), ...extra } as never);
}

async function agentOn(envId: string, command: string, args: string[], extra: Record<string, unknown> = {}) {
  return t.services.agents.create(companyId, { name: `agent-${++n}`, adapterType: 'process', adapterConfig: { command, args, ...extra } as never, defaultEnvironmentId: envId });
}

async function invoke(agentId: string): Promise<HeartbeatRun> {
  const run = await t.services.runs.invoke(companyId, agentId);
  runtime.poke();
  return run;
}

const finished = (runId: string, ms = 30_000) =>
  waitFor(`run ${runId} to finish`, async () => {
    const r = await t.services.runs.get(companyId, runId);
    return r.finishedAt ? r : null;
  }, ms);

const logText = async (runId: string, stream?: string) =>
  (await t.services.runs.readLog(companyId, runId, { limit: 10_000 })).filter((c) => !stream || c.stream === stream).map((c) => c.chunk).join('');

/** The run's job id, once its paperclipEnvironment names it (the job runs). */
const jobOf = (runId: string) =>
  waitFor(`run ${runId} to have its job`, async () => {
    const env = (await t.services.runs.get(companyId, runId)).contextSnapshot.paperclipEnvironment as { jobId?: string } | undefined;
    return env?.jobId ?? null;
  });

function allCommandLines(): string[] {
  const out: string[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      out.push(readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0/g, ' '));
    } catch {
      /* exited */
    }
  }
  return out;
}

describe('runs on a Slurm environment', () => {
  it('runs as the lease\'s job: output, Slurm\'s exit code, the cluster, job id and node in paperclipEnvironment; the job\'s files removed after', async () => {
    const env = await slurmEnvironment();
    const agent = await agentOn(env.id, 'sh', ['-c', 'echo "run=$PAPERCLIP_RUN_ID job=$SLURM_JOB_ID"; echo warn >&2; exit 4']);
    const run = await finished((await invoke(agent.id)).id);
    expect(run).toMatchObject({ status: 'failed', exitCode: 4, errorCode: 'process_failed' });
    const pe = run.contextSnapshot.paperclipEnvironment as Record<string, unknown>;
    expect(pe).toMatchObject({ id: env.id, driver: 'slurm', cluster: cluster.cluster, node: cluster.node, jobState: 'RUNNING', jobId: expect.stringMatching(/^\d+$/) });
    expect(typeof pe.queuedMs).toBe('number');
    const jobId = pe.jobId as string;
    expect(await logText(run.id, 'stdout')).toBe(`run=${run.id} job=${jobId}\n`);
    expect(await logText(run.id, 'stderr')).toBe('warn\n');
    const lease = await t.services.leases.get(companyId, run.leaseId!);
    expect(lease).toMatchObject({ status: 'failed', cleanupStatus: 'success', providerLeaseId: `slurm://${cluster.cluster}/${jobId}`, driver: 'slurm' });
    expect(jobRecord(cluster, jobId)).toMatch(/JobState=FAILED .*ExitCode=4:0/);
    expect(existsSync(pe.cwd as string)).toBe(false);

    const ok = await finished((await invoke((await agentOn(env.id, 'true', [])).id)).id);
    expect(ok).toMatchObject({ status: 'succeeded', exitCode: 0 });
    expect(jobState(cluster, (ok.contextSnapshot.paperclipEnvironment as { jobId: string }).jobId)).toBe('COMPLETED');
  }, 60_000);

  it("a run whose job waits in Slurm's queue says so in its log (PENDING, then RUNNING on its node), and runs once the node is free", async () => {
    // Each job takes every CPU of the one node: the second waits for the first.
    const env = await slurmEnvironment({ config: { ...slurmConfig(), cpus: availableParallelism() } });
    const first = await invoke((await agentOn(env.id, 'sleep', ['3'])).id);
    await jobOf(first.id);
    const second = await invoke((await agentOn(env.id, 'echo', ['second'])).id);
    await waitFor('the second job to be reported waiting', async () => /is PENDING/.test(await logText(second.id, 'system')), 20_000);
    expect((await t.services.runs.get(companyId, second.id)).status).toBe('running');
    const done = await finished(second.id);
    expect(done).toMatchObject({ status: 'succeeded', exitCode: 0 });
    const system = await logText(second.id, 'system');
    const jobId = (done.contextSnapshot.paperclipEnvironment as { jobId: string; queuedMs: number }).jobId;
    expect(system).toMatch(new RegExp(`job ${jobId} on cluster ${cluster.cluster} is PENDING \\((Resources|Priority)\\)`));
    expect(system).toMatch(new RegExp(`job ${jobId} on cluster ${cluster.cluster} is RUNNING on ${cluster.node} after \\d+ ms`));
    expect(system.indexOf('is PENDING')).toBeLessThan(system.indexOf('is RUNNING'));
    expect((done.contextSnapshot.paperclipEnvironment as { queuedMs: number }).queuedMs).toBeGreaterThan(500);
    expect(await logText(second.id, 'stdout')).toBe('second\n');
    expect((await finished(first.id)).status).toBe('succeeded');
  }, 60_000);

  it("a job that waits in the queue past the environment's queueTimeoutSeconds fails its run with prepare_timeout, and is cancelled", async () => {
    const env = await slurmEnvironment({ config: { ...slurmConfig(), cpus: availableParallelism(), queueTimeoutSeconds: 5 } });
    const first = await invoke((await agentOn(env.id, 'sleep', ['90'], { graceSec: 0 })).id);
    await jobOf(first.id);
    const second = await invoke((await agentOn(env.id, 'echo', ['never'])).id);
    await waitFor('the second job to be reported waiting', async () => /is PENDING/.test(await logText(second.id, 'system')), 20_000);
    const jobId = /job (\d+) on cluster/.exec(await logText(second.id, 'system'))![1]!;
    const done = await finished(second.id, 90_000);
    expect(done).toMatchObject({ status: 'failed', errorCode: 'prepare_timeout' });
    expect(await logText(second.id, 'stdout')).toBe('');
    await waitFor(`job ${jobId} to be cancelled`, async () => ['CANCELLED', ''].includes(jobState(cluster, jobId)) || null, 30_000);
    await t.services.runs.cancel(companyId, first.id);
    expect((await finished(first.id)).status).toBe('cancelled');
  }, 120_000);

  it('PAPERCLIP_* and the environment\'s variables reach the job, never a command line or the job\'s record; cancel ends the job with nothing left', async () => {
    const secret = `env-secret-${randomBytes(8).toString('hex')}`;
    const env = await slurmEnvironment({ envVars: { DEPLOY_TOKEN: secret } });
    const secs = 3000 + Math.floor(Math.random() * 5000);
    const agent = await agentOn(env.id, 'sh', ['-c', `echo "key=\${#PAPERCLIP_API_KEY} tok=\${#DEPLOY_TOKEN}"; printf %s "$PAPERCLIP_API_KEY" > key; (setsid sleep ${secs} &); sleep ${secs}`], { timeoutSec: 120 });
    const started = await invoke(agent.id);
    const jobId = await jobOf(started.id);
    await waitFor('the process to start', async () => (await logText(started.id, 'stdout')).includes('key='));
    const pe = (await t.services.runs.get(companyId, started.id)).contextSnapshot.paperclipEnvironment as { cwd: string };
    const apiKey = await waitFor('the key file', async () => (existsSync(`${pe.cwd}/key`) ? readFileSync(`${pe.cwd}/key`, 'utf8') || null : null));
    expect(apiKey).toMatch(/^brt_/);
    expect(await logText(started.id, 'stdout')).toContain(`key=${apiKey.length} tok=${secret.length}`);
    const lines = allCommandLines();
    expect(lines.filter((l) => l.startsWith(`sleep ${secs}`))).toHaveLength(2); // we looked at the right list
    for (const v of [secret, apiKey]) {
      expect(lines.filter((l) => l.includes(v))).toEqual([]);
      expect(cluster.cmd('scontrol', ['show', 'job', jobId])).not.toContain(v);
      expect(cluster.cmd('squeue', ['-h', '-j', jobId, '-o', '%all'])).not.toContain(v);
    }
    await t.services.runs.cancel(companyId, started.id);
    const run = await finished(started.id);
    expect(run.status).toBe('cancelled');
    expect(['COMPLETED', 'FAILED', 'CANCELLED']).toContain(jobState(cluster, jobId));
    await waitFor('nothing of the job left on the node', async () => !allCommandLines().some((l) => l.startsWith(`sleep ${secs}`)), 10_000);
  }, 60_000);

  it('times out at Berth\'s timeout: a grandchild that ignores SIGTERM is killed with the job', async () => {
    const env = await slurmEnvironment();
    const secs = 3000 + Math.floor(Math.random() * 5000);
    const agent = await agentOn(env.id, 'sh', ['-c', `sh -c 'trap "" TERM; sleep ${secs}' & sleep ${secs + 1}`], { timeoutSec: 2, graceSec: 1 });
    const run = await finished((await invoke(agent.id)).id);
    expect(run).toMatchObject({ status: 'timed_out', errorCode: 'timeout' });
    const jobId = (run.contextSnapshot.paperclipEnvironment as { jobId: string }).jobId;
    expect(jobState(cluster, jobId)).toMatch(/^(CANCELLED|FAILED|COMPLETED)$/);
    await waitFor('the grandchild to be gone', async () => !allCommandLines().some((l) => l.startsWith(`sleep ${secs}`)), 10_000);
    // The job's own limit was lowered to the run's deadline (timeout + grace + 60 s, in minutes).
    expect(jobRecord(cluster, jobId)).toMatch(/TimeLimit=00:0[2-3]:00/);
  }, 60_000);

  it('a job cancelled outside Berth fails its run, saying so', async () => {
    const env = await slurmEnvironment();
    const agent = await agentOn(env.id, 'sleep', ['300'], { timeoutSec: 120 });
    const started = await invoke(agent.id);
    const jobId = await jobOf(started.id);
    await waitFor('the job to run', async () => jobState(cluster, jobId) === 'RUNNING');
    await new Promise((r) => setTimeout(r, 500));
    cluster.cmd('scancel', [jobId]);
    const run = await finished(started.id);
    expect(run).toMatchObject({ status: 'failed', errorCode: 'slurm_cancelled', error: `job ${jobId} on cluster ${cluster.cluster} was cancelled in Slurm, not by Berth` });
  }, 60_000);

  it('reconciliation cancels a Berth-labelled job no record owns, with one activity row; a job without the labels is left alone', async () => {
    const env = await slurmEnvironment();
    const orphanId = randomUUID();
    const submit = (name: string, comment: string) =>
      cluster.cmd('sbatch', ['--parsable', `--job-name=${name}`, `--comment=${comment}`, '--output=/dev/null', `--chdir=${cluster.workDir}`, '--time=5', '--wrap', 'sleep 300']).trim();
    const orphan = submit(`berth-${orphanId}`, `berth.resource=${orphanId},berth.environment=${env.id},berth.company=${companyId}`);
    const stranger = submit('not-berths', 'hello');
    try {
      await waitFor('the orphan job to be cancelled', async () => jobState(cluster, orphan) === 'CANCELLED', 20_000);
      await new Promise((r) => setTimeout(r, 1000));
      const acts = (await t.services.activity.list(companyId, { action: 'environment.resource_orphan_destroyed' })).items.filter((a) => a.entityId === env.id);
      expect(acts).toHaveLength(1);
      expect(acts[0]).toMatchObject({ details: { providerId: orphan } });
      expect(jobState(cluster, stranger)).toMatch(/^(PENDING|RUNNING)$/);
    } finally {
      cluster.cmd('scancel', [orphan, stranger]);
    }
  }, 60_000);
});
