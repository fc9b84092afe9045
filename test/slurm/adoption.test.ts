// Adoption, not loss: a server process SIGKILLed while its run's Slurm job runs does not
// make the run process_lost. The job goes on in Slurm; another server process adopts the
// run from its execution record, follows the job's output from where the log stopped, and
// finalizes the run with the job's real outcome (its exit code, from Slurm). Two real
// worker processes (scripts/worker.ts, the default drivers) on one PostgreSQL.
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/wait.js';
import { workerProcesses } from '../support/worker-processes.js';
import { jobRecord, jobState, testCluster } from './cluster.js';

const cluster = testCluster();
const workers = workerProcesses('slurm-adopt');
const startWorker = () => workers.start();

describe('a Slurm run whose server is SIGKILLed mid-job', () => {
  it('is adopted by another server, which follows the output from where it stopped and finalizes with the job\'s real exit code', async () => {
    const s = workers.s;
    const co = await s.companies.create({ name: 'Slurm adoption' });
    const env = await s.environments.create(co.id, {
      name: 'cluster',
      driver: 'slurm',
      config: { slurmConf: cluster.slurmConf, workDir: cluster.workDir, partition: cluster.partition, timeLimitMinutes: 10 },
    } as never);
    const agent = await s.agents.create(co.id, {
      name: 'rollout',
      adapterType: 'process',
      adapterConfig: { command: 'sh', args: ['-c', 'for i in $(seq 1 24); do echo tick-$i; sleep 0.5; done; echo done >&2; exit 7'], timeoutSec: 300 } as never,
      defaultEnvironmentId: env.id,
    });
    const victim = await startWorker();
    const run = await s.runs.invoke(co.id, agent.id);
    const log = async (stream?: string) => (await s.runs.readLog(co.id, run.id, { limit: 10_000 })).filter((c) => !stream || c.stream === stream).map((c) => c.chunk).join('');
    await waitFor('the job to print two ticks into the run log', async () => (await log('stdout')).includes('tick-2'), 30_000);
    const started = await s.runs.get(co.id, run.id);
    expect(started.serverId).toBe(victim.serverId);
    const jobId = (started.contextSnapshot.paperclipEnvironment as { jobId: string }).jobId;
    const cwd = (started.contextSnapshot.paperclipEnvironment as { cwd: string }).cwd;

    victim.child.kill('SIGKILL');
    const killedAt = Date.now();
    await new Promise((r) => victim.child.once('exit', r));
    const before = await log('stdout');
    expect(before).not.toContain('tick-24');
    // The job does not die with its server.
    expect(jobState(cluster, jobId)).toBe('RUNNING');

    const rescuer = await startWorker();
    // Adopted while the job still runs: its output goes on arriving through the new server.
    await waitFor('the run to be resumed', async () => (await log('system')).includes(`resumed by server ${rescuer.serverId}`), 30_000);
    expect(jobState(cluster, jobId)).toBe('RUNNING');
    expect(await log('stdout')).not.toContain('tick-24');
    const done = await waitFor('the run to be finalized', async () => {
      const r = await s.runs.get(co.id, run.id);
      return r.finishedAt ? r : null;
    }, 60_000);
    const adoptedAfterMs = Date.now() - killedAt;
    // The job's real outcome, not process_lost; finalized by the server that adopted it.
    expect(done).toMatchObject({ status: 'failed', exitCode: 7, errorCode: 'process_failed', serverId: rescuer.serverId });
    expect(jobRecord(cluster, jobId)).toMatch(/JobState=FAILED .*ExitCode=7:0/);
    // Every line once, in order: the second server read on from the offset the first wrote.
    expect(await log('stdout')).toBe(Array.from({ length: 24 }, (_, i) => `tick-${i + 1}\n`).join(''));
    expect(await log('stderr')).toBe('done\n');
    expect(await log('system')).toContain(`resumed by server ${rescuer.serverId}`);
    const lease = await s.leases.get(co.id, done.leaseId!);
    expect(lease).toMatchObject({ status: 'failed', cleanupStatus: 'success' });
    expect(existsSync(cwd)).toBe(false);
    console.log(`slurm adoption: run finalized ${adoptedAfterMs} ms after SIGKILL of its server (job ${jobId})`);
    rescuer.child.kill('SIGTERM');
    await new Promise((r) => rescuer.child.once('exit', r));
  }, 120_000);
});
