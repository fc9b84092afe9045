// Heartbeat runs on a Kubernetes environment end to end, on the real one-node cluster the
// test command started: the runtime claims the run, the lease's pod runs the agent's process,
// its log becomes the run's log, and the run finalizes with the pod's exit code. Also: the
// run's secrets kept out of the pod's spec and off every command line, cancel and timeout
// deleting the pod, and reconciliation of a labelled pod no record owns.
import { randomBytes, randomUUID } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { kubernetesDriver, podName } from '../../src/drivers/kubernetes/driver.js';
import type { HeartbeatRun } from '../../src/domain/types.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { waitFor } from '../support/wait.js';
import { testCluster } from './cluster.js';

process.env.BERTH_SECRET_KEY = randomBytes(32).toString('hex');

const cluster = testCluster();
let t: TestDb;
let runtime: Runtime;
let companyId: string;
let n = 0;
const runtimeErrors = collectRuntimeErrors();

beforeAll(async () => {
  t = await openTestDb();
  companyId = (await t.services.companies.create({ name: 'Kubernetes Co' })).id;
  runtime = await startRuntime({
    services: t.services,
    db: t.db,
    drivers: new Map([['kubernetes', kubernetesDriver()]]),
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

async function k8sEnvironment(extra: Record<string, unknown> = {}) {
  return t.services.environments.create(companyId, { name: `k8s-${++n}`, driver: 'kubernetes', config: cluster.config(), ...extra } as never);
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

describe('runs on a Kubernetes environment', () => {
  it('runs as the lease\'s pod: its output in the run log, the pod\'s exit code, the namespace and pod in paperclipEnvironment; the pod and its Secret deleted after', async () => {
    const env = await k8sEnvironment();
    expect(env.config).toMatchObject({ hasToken: true });
    expect(JSON.stringify(env)).not.toContain(cluster.token);
    const agent = await agentOn(env.id, 'sh', ['-c', 'echo "run=$PAPERCLIP_RUN_ID host=$(hostname)"; echo warn >&2; exit 4']);
    const run = await finished((await invoke(agent.id)).id);
    expect(run).toMatchObject({ status: 'failed', exitCode: 4, errorCode: 'process_failed' });
    const pe = run.contextSnapshot.paperclipEnvironment as Record<string, unknown>;
    const lease = await t.services.leases.get(companyId, run.leaseId!);
    const resourceName = pe.pod as string;
    expect(pe).toMatchObject({ id: env.id, driver: 'kubernetes', namespace: 'default', pod: expect.stringMatching(/^berth-[0-9a-f-]{36}$/), node: cluster.node, cwd: '/workspace' });
    // One log: stdout and stderr lines, in the order the node's runtime read its two pipes.
    expect((await logText(run.id, 'stdout')).split('\n').sort()).toEqual(['', `run=${run.id} host=${resourceName}`, 'warn'].sort());
    expect(lease).toMatchObject({ status: 'failed', cleanupStatus: 'success', providerLeaseId: `k8s://${new URL(cluster.api).host}/default/${resourceName}`, driver: 'kubernetes' });
    expect(await cluster.pod(resourceName)).toBeNull();
    await expect(cluster.core.readNamespacedSecret({ name: resourceName, namespace: 'default' })).rejects.toMatchObject({ code: 404 });

    const ok = await finished((await invoke((await agentOn(env.id, 'true', [])).id)).id);
    expect(ok).toMatchObject({ status: 'succeeded', exitCode: 0 });
  }, 60_000);

  it("PAPERCLIP_* and the environment's variables reach the pod through its Secret, never its spec or a command line; cancel deletes the pod", async () => {
    const secret = `env-secret-${randomBytes(8).toString('hex')}`;
    const env = await k8sEnvironment({ envVars: { DEPLOY_TOKEN: secret } });
    const secs = 3000 + Math.floor(Math.random() * 5000);
    const agent = await agentOn(env.id, 'sh', ['-c', `echo "key=\${#PAPERCLIP_API_KEY} tok=\${#DEPLOY_TOKEN}"; sleep ${secs}`], { timeoutSec: 120, graceSec: 2 });
    const started = await invoke(agent.id);
    await waitFor('the process to start', async () => (await logText(started.id, 'stdout')).includes('key='), 30_000);
    const name = ((await t.services.runs.get(companyId, started.id)).contextSnapshot.paperclipEnvironment as { pod: string }).pod;
    const s = await cluster.core.readNamespacedSecret({ name, namespace: 'default' });
    const apiKey = Buffer.from(s.data!.PAPERCLIP_API_KEY!, 'base64').toString();
    expect(apiKey).toMatch(/^brt_/);
    expect(Buffer.from(s.data!.DEPLOY_TOKEN!, 'base64').toString()).toBe(secret);
    expect(await logText(started.id, 'stdout')).toContain(`key=${apiKey.length} tok=${secret.length}`);
    const pod = JSON.stringify(await cluster.pod(name));
    const lines = allCommandLines();
    expect(lines.filter((l) => l.startsWith(`sleep ${secs}`))).toHaveLength(1); // the pod's process runs on this node
    for (const v of [secret, apiKey]) {
      expect(pod).not.toContain(v);
      expect(lines.filter((l) => l.includes(v))).toEqual([]);
    }
    await t.services.runs.cancel(companyId, started.id);
    const run = await finished(started.id);
    expect(run.status).toBe('cancelled');
    expect(await cluster.pod(name)).toBeNull();
    await waitFor('nothing of the pod left on the node', async () => !allCommandLines().some((l) => l.startsWith(`sleep ${secs}`)), 20_000);
  }, 60_000);

  it("times out at Berth's timeout: the pod is deleted, a process that ignores SIGTERM included", async () => {
    const env = await k8sEnvironment();
    const secs = 3000 + Math.floor(Math.random() * 5000);
    const agent = await agentOn(env.id, 'sh', ['-c', `trap "" TERM; sleep ${secs}`], { timeoutSec: 2, graceSec: 1 });
    const run = await finished((await invoke(agent.id)).id);
    expect(run).toMatchObject({ status: 'timed_out', errorCode: 'timeout' });
    const name = (run.contextSnapshot.paperclipEnvironment as { pod: string }).pod;
    expect(await cluster.pod(name)).toBeNull();
    await waitFor('the sleeper gone', async () => !allCommandLines().some((l) => l.startsWith(`sleep ${secs}`)), 20_000);
  }, 60_000);

  it('reconciliation deletes a Berth-labelled pod (and a Secret left without its pod) no record owns, with one activity row each; a pod without the labels is left alone', async () => {
    const env = await k8sEnvironment();
    const orphanId = randomUUID();
    const pod = (name: string, labels: Record<string, string>) => ({
      metadata: { name, labels },
      spec: { nodeName: cluster.node, restartPolicy: 'Never', terminationGracePeriodSeconds: 1, containers: [{ name: 'run', image: cluster.image, imagePullPolicy: 'Never', command: ['sleep', '300'] }] },
    });
    const orphan = podName(orphanId);
    const stranger = `not-berths-${randomBytes(3).toString('hex')}`;
    await cluster.core.createNamespacedPod({ namespace: 'default', body: pod(orphan, { 'berth.resource': orphanId, 'berth.environment': env.id, 'berth.company': companyId }) });
    await cluster.core.createNamespacedPod({ namespace: 'default', body: pod(stranger, { app: 'other' }) });
    const lonelyId = randomUUID();
    const lonely = podName(lonelyId);
    await cluster.core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name: lonely, labels: { 'berth.resource': lonelyId, 'berth.environment': env.id } }, stringData: { X: 'y' } } });
    try {
      await waitFor('the orphan pod to be deleted', async () => (await cluster.pod(orphan)) === null, 40_000, 200);
      await waitFor('the lonely secret to be deleted', async () => cluster.core.readNamespacedSecret({ name: lonely, namespace: 'default' }).then(() => false, () => true), 20_000, 200);
      await new Promise((r) => setTimeout(r, 1000));
      const acts = (await t.services.activity.list(companyId, { action: 'environment.resource_orphan_destroyed' })).items.filter((a) => a.entityId === env.id);
      expect(acts.map((a) => (a.details as { providerId: string }).providerId).sort()).toEqual([orphan, lonely].sort());
      expect(await cluster.pod(stranger)).not.toBeNull();
    } finally {
      await cluster.core.deleteNamespacedPod({ name: stranger, namespace: 'default', gracePeriodSeconds: 0 }).catch(() => {});
    }
  }, 60_000);
});
