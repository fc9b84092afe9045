// Adoption, not loss: a server process SIGKILLed while its run's pod runs does not make the
// run process_lost. The pod goes on in the cluster; another server process adopts the run
// from its execution record, follows the pod's log from the byte the run's log reached, and
// finalizes the run with the pod's real exit code. Two real worker processes
// (scripts/worker.ts, the default drivers) on one PostgreSQL.
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/wait.js';
import { workerProcesses } from '../support/worker-processes.js';
import { testCluster } from './cluster.js';

const cluster = testCluster();
const workers = workerProcesses('k8s-adopt');
const startWorker = () => workers.start();

describe('a Kubernetes run whose server is SIGKILLed mid-run', () => {
  it("is adopted by another server, which follows the pod's log from where it stopped and finalizes with the pod's real exit code", async () => {
    const s = workers.s;
    const co = await s.companies.create({ name: 'Kubernetes adoption' });
    const env = await s.environments.create(co.id, { name: 'cluster', driver: 'kubernetes', config: cluster.config() } as never);
    const agent = await s.agents.create(co.id, {
      name: 'rollout',
      adapterType: 'process',
      adapterConfig: { command: 'sh', args: ['-c', 'for i in $(seq 1 24); do echo tick-$i; sleep 0.5; done; echo done >&2; exit 7'], timeoutSec: 300 } as never,
      defaultEnvironmentId: env.id,
    });
    const victim = await startWorker();
    const run = await s.runs.invoke(co.id, agent.id);
    const log = async (stream?: string) => (await s.runs.readLog(co.id, run.id, { limit: 10_000 })).filter((c) => !stream || c.stream === stream).map((c) => c.chunk).join('');
    await waitFor('the pod to print two ticks into the run log', async () => (await log('stdout')).includes('tick-2'), 30_000);
    const started = await s.runs.get(co.id, run.id);
    expect(started.serverId).toBe(victim.serverId);
    const name = (started.contextSnapshot.paperclipEnvironment as { pod: string }).pod;

    victim.child.kill('SIGKILL');
    const killedAt = Date.now();
    await new Promise((r) => victim.child.once('exit', r));
    expect(await log('stdout')).not.toContain('tick-24');
    // The pod does not die with its server.
    expect((await cluster.pod(name))!.status!.phase).toBe('Running');

    const rescuer = await startWorker();
    await waitFor('the run to be resumed', async () => (await log('system')).includes(`resumed by server ${rescuer.serverId}`), 30_000);
    const done = await waitFor('the run to be finalized', async () => {
      const r = await s.runs.get(co.id, run.id);
      return r.finishedAt ? r : null;
    }, 60_000);
    const adoptedAfterMs = Date.now() - killedAt;
    expect(done).toMatchObject({ status: 'failed', exitCode: 7, errorCode: 'process_failed', serverId: rescuer.serverId });
    // Every line once, in order (stderr is in the pod's one log): the second server read on from the first's offset.
    expect(await log('stdout')).toBe(Array.from({ length: 24 }, (_, i) => `tick-${i + 1}\n`).join('') + 'done\n');
    const lease = await s.leases.get(co.id, done.leaseId!);
    expect(lease).toMatchObject({ status: 'failed', cleanupStatus: 'success' });
    expect(await cluster.pod(name)).toBeNull();
    console.log(`kubernetes adoption: run finalized ${adoptedAfterMs} ms after SIGKILL of its server (pod ${name})`);
    rescuer.child.kill('SIGTERM');
    await new Promise((r) => rescuer.child.once('exit', r));
  }, 120_000);
});
