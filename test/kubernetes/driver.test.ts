// The kubernetes driver's contract against a real API server and kubelet (started by the
// test command): a pod per resource, named and labelled from Berth's ids, the run's
// environment in an owned Secret (never in the pod's spec), output followed live from the
// pod's log and resumed from an offset by another driver, exit codes, spawn errors,
// OOMKilled, the deadline, signals that delete the pod, destroy and list.
import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import type { DriverEnvironment, ExecutionHandle, ExitResult, ProvisionedResource } from '../../src/drivers/contract.js';
import { kubernetesConfigSchema } from '../../src/drivers/kubernetes/descriptor.js';
import { kubernetesDriver, podName } from '../../src/drivers/kubernetes/driver.js';
import { waitFor } from '../support/wait.js';
import { testCluster } from './cluster.js';

const cluster = testCluster();
const driver = kubernetesDriver();
const COMPANY = '00000000-0000-4000-8000-00000000c0de';
let n = 0;
const made: Array<{ e: DriverEnvironment; r: ProvisionedResource }> = [];

function env(config: Record<string, unknown> = {}): DriverEnvironment {
  const now = new Date();
  return {
    id: randomUUID(),
    companyId: COMPANY,
    name: `k8s-${++n}`,
    description: null,
    driver: 'kubernetes' as never,
    status: 'active',
    config: {},
    envVars: {},
    metadata: {},
    capacity: null,
    lastProbe: null,
    createdAt: now,
    updatedAt: now,
    secretConfig: kubernetesConfigSchema.parse(cluster.config(config)) as Record<string, unknown>,
  };
}

const signal = () => AbortSignal.timeout(60_000);

async function provision(e: DriverEnvironment): Promise<ProvisionedResource> {
  const r = await driver.provision(e, { resourceId: randomUUID(), leaseId: randomUUID(), labels: {} }, signal());
  made.push({ e, r });
  return r;
}

interface Ran {
  out: string;
  result: ExitResult;
  handle: ExecutionHandle;
}

async function run(e: DriverEnvironment, r: ProvisionedResource, command: string, args: string[], o: { env?: Record<string, string>; deadlineSec?: number; during?: (h: ExecutionHandle, out: () => string) => Promise<void> } = {}): Promise<Ran> {
  const handle = await driver.exec(e, r, { command, args, cwd: r.cwd, env: o.env ?? {}, ...(o.deadlineSec ? { deadlineSec: o.deadlineSec } : {}) }, signal());
  let out = '';
  const watching = driver.watch(e, handle, (_s, t) => void (out += t));
  await o.during?.(handle, () => out);
  const result = await watching;
  return { out, result, handle };
}

afterAll(async () => {
  await Promise.all(made.map((m) => driver.destroy(m.e, m.r, signal()).catch(() => {})));
});

describe('kubernetes driver on a real cluster', () => {
  it('validates its config with a message per field; a token or a client certificate, sealed', () => {
    const bad = kubernetesConfigSchema.safeParse({ apiServer: 'http://x:1', caCert: 'nope', token: 't', image: 'a b', namespace: 'Bad_NS', resources: { limits: { memory: '12 MB' } }, labels: { 'berth.lease': 'x' } });
    expect(bad.success).toBe(false);
    const issues = bad.error!.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    expect(issues).toEqual(
      expect.arrayContaining([
        'apiServer: must be https:// (the API server speaks TLS)',
        'caCert: must be a CA certificate in PEM (-----BEGIN ...-----)',
        'image: must not contain spaces',
        expect.stringMatching(/^namespace: must be a namespace name/),
        expect.stringMatching(/^resources\.limits\.memory: must be a quantity/),
        expect.stringMatching(/^labels\.berth\.lease: must not start with berth\./),
      ]),
    );
    const none = kubernetesConfigSchema.safeParse({ apiServer: cluster.api, caCert: cluster.ca, image: 'x' });
    expect(none.error!.issues.map((i) => `${i.path.join('.')}: ${i.message}`)).toEqual(['token: is required (or clientCert and clientKey)']);
    expect(kubernetesConfigSchema.parse({ apiServer: cluster.api, caCert: cluster.ca, token: 't', image: 'x' })).toMatchObject({ namespace: 'default', imagePullPolicy: 'IfNotPresent', workspacePath: '/workspace', startTimeoutSeconds: 300 });
  });

  it('probes: the API answers with its version, the namespace exists, these credentials may create pods; a bad token, a missing namespace and a token without rights say so', async () => {
    const p = await driver.probe(env());
    expect(p.ok, p.error).toBe(true);
    expect(p.details).toMatchObject({ apiServer: cluster.api, namespace: 'default', serverVersion: expect.stringMatching(/^v1\.20\./), namespaceExists: true, mayCreatePods: true, mayCreateSecrets: true });
    const badToken = await driver.probe(env({ token: 'not-a-token' }));
    expect(badToken).toMatchObject({ ok: false, error: `the API server at ${cluster.api} refused the credentials (401 Unauthorized)` });
    const noNs = await driver.probe(env({ namespace: 'no-such-namespace' }));
    expect(noNs).toMatchObject({ ok: false, details: { namespaceExists: false }, error: expect.stringContaining('namespace no-such-namespace does not exist') });
    const limited = await driver.probe(env({ token: cluster.limitedToken }));
    expect(limited).toMatchObject({ ok: false, details: { mayCreatePods: false, mayCreateSecrets: false }, error: expect.stringContaining('these credentials may not create pods in namespace default') });
    const byCert = await driver.probe(env({ token: undefined, clientCert: cluster.clientCert, clientKey: cluster.clientKey }));
    expect(byCert, byCert.error).toMatchObject({ ok: true, details: { mayCreatePods: true } });
    const down = await driver.probe(env({ apiServer: 'https://127.0.0.1:9' }));
    expect(down).toMatchObject({ ok: false, error: expect.stringContaining('does not answer') });
  });

  it('one pod per resource, named and labelled from its ids, the run its main process; the run\'s environment only in a Secret the pod owns; output and exit code', async () => {
    const e = env({ labels: { team: 'infra' } });
    const r = await provision(e);
    const name = podName(r.resourceId);
    expect(r).toMatchObject({ providerId: name, cwd: '/workspace', details: { namespace: 'default', pod: name, providerLeaseId: expect.stringMatching(new RegExp(`^k8s://127\\.0\\.0\\.1:\\d+/default/${name}$`)) } });
    const secret = `s3cret-${randomBytes(8).toString('hex')}`;
    const ran = await run(e, r, 'sh', ['-c', 'echo "host=$(hostname) tok=${#DEPLOY_TOKEN}"; pwd; echo warn >&2; exit 3'], { env: { DEPLOY_TOKEN: secret, PAPERCLIP_RUN_ID: 'r1' } });
    expect(ran.result).toEqual({ exitCode: 3, signal: null });
    // One log: stdout and stderr lines, in the order the node's runtime read its two pipes.
    expect(ran.out.split('\n').sort()).toEqual(['', `host=${name} tok=${secret.length}`, '/workspace', 'warn'].sort());
    const pod = (await cluster.pod(name))!;
    expect(pod.metadata!.labels).toEqual({ team: 'infra', 'berth.resource': r.resourceId, 'berth.environment': e.id, 'berth.lease': expect.any(String), 'berth.company': COMPANY });
    expect(pod.spec!.nodeName).toBe(cluster.node);
    expect(pod.status!.phase).toBe('Failed');
    const c = pod.spec!.containers[0]!;
    expect(c.command).toEqual(['sh']);
    expect(c.env).toBeUndefined();
    expect(c.envFrom).toEqual([{ secretRef: { name } }]);
    expect(JSON.stringify(pod)).not.toContain(secret);
    const s = await cluster.core.readNamespacedSecret({ name, namespace: 'default' });
    expect(s.metadata!.ownerReferences).toEqual([expect.objectContaining({ kind: 'Pod', name, uid: pod.metadata!.uid })]);
    expect(Buffer.from(s.data!.DEPLOY_TOKEN!, 'base64').toString()).toBe(secret);

    // A retried exec finds the pod and adopts it.
    const again = await driver.exec(e, r, { command: 'sh', args: ['-c', 'exit 3'], cwd: r.cwd, env: {} }, signal());
    expect(again.ref).toMatchObject({ pod: name, uid: pod.metadata!.uid });

    expect(await driver.destroy(e, r, signal())).toEqual({ removed: `pod default/${name}, secret default/${name}` });
    expect(await cluster.pod(name)).toBeNull();
    await expect(cluster.core.readNamespacedSecret({ name, namespace: 'default' })).rejects.toMatchObject({ code: 404 });
    expect(await driver.destroy(e, r, signal())).toEqual({ nothing: `no pod or secret default/${name}` });

    const ok = await run(e, await provision(e), 'true', []);
    expect(ok.result).toEqual({ exitCode: 0, signal: null });
  }, 60_000);

  it('the workspace: a directory the image lacks is made; workspaceVolume mounts an emptyDir there', async () => {
    const e = env({ workspacePath: '/srv/berth-work' });
    const r = await provision(e);
    expect(r.cwd).toBe('/srv/berth-work');
    expect((await run(e, r, 'sh', ['-c', 'pwd; touch f && echo wrote'])).out).toBe('/srv/berth-work\nwrote\n');
    const v = env({ workspaceVolume: true });
    const rv = await provision(v);
    const ran = await run(v, rv, 'sh', ['-c', 'grep -c " /workspace " /proc/mounts']);
    expect(ran).toMatchObject({ out: '1\n', result: { exitCode: 0 } });
    expect((await cluster.pod(podName(rv.resourceId)))!.spec!.volumes).toEqual([{ name: 'workspace', emptyDir: {} }]);
  }, 60_000);

  it('a missing command is a spawn error; a missing image fails exec at once and deletes the pod', async () => {
    const e = env();
    expect((await run(e, await provision(e), 'no-such-command-here', [])).result).toMatchObject({ spawnError: expect.stringContaining('no-such-command-here') });
    const bad = env({ image: 'docker.io/berth/none:1' });
    const r = await provision(bad);
    await expect(driver.exec(bad, r, { command: 'true', args: [], cwd: r.cwd, env: {} }, signal())).rejects.toMatchObject({ code: 'kubernetes_image', message: expect.stringContaining('ErrImageNeverPull') });
  }, 60_000);

  it('output reaches watch while the pod runs, and another driver resumes from the offset with nothing lost or repeated', async () => {
    const e = env();
    const r = await provision(e);
    const handle = await driver.exec(e, r, { command: 'sh', args: ['-c', 'for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.4; done; printf é-end'], cwd: r.cwd, env: {} }, signal());
    let first = '';
    let offset = '';
    const stop = new AbortController();
    const watching = driver.watch(e, handle, (_s, t) => void (first += t), { onOffset: (o) => (offset = o), signal: stop.signal });
    await waitFor('two lines live', async () => first.includes('line-2'));
    expect(first).not.toContain('line-6');
    stop.abort('handoff');
    await expect(watching).rejects.toBeDefined();
    expect(offset).toBe(String(Buffer.byteLength(first)));
    const other = kubernetesDriver();
    let second = '';
    const result = await other.watch(e, JSON.parse(JSON.stringify(handle)), (_s, t) => void (second += t), { from: offset });
    expect(result).toEqual({ exitCode: 0, signal: null });
    expect(first + second).toBe('line-1\nline-2\nline-3\nline-4\nline-5\nline-6\né-end');
  }, 60_000);

  it('a memory limit is the pod\'s: OOMKilled is reported as such', async () => {
    const e = env({ resources: { limits: { memory: '32Mi' }, requests: { memory: '16Mi' } } });
    const r = await provision(e);
    const ran = await run(e, r, 'sh', ['-c', 'echo start; x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo len=${#x}']);
    expect(ran.result).toMatchObject({ errorCode: 'out_of_memory', error: `pod default/${podName(r.resourceId)} on ${new URL(cluster.api).host} was OOMKilled (memory limit 32Mi)` });
    expect((await cluster.pod(podName(r.resourceId)))!.spec!.containers[0]!.resources).toEqual({ limits: { memory: '32Mi' }, requests: { memory: '16Mi' } });
  }, 60_000);

  it('the deadline is the pod\'s activeDeadlineSeconds: the kubelet ends it, reported as a timeout', async () => {
    const e = env();
    const r = await provision(e);
    const ran = await run(e, r, 'sleep', ['120'], { deadlineSec: 2 });
    expect(ran.result).toMatchObject({ errorCode: 'timeout', error: expect.stringContaining('activeDeadlineSeconds 2') });
  }, 60_000);

  it('TERM deletes the pod with its grace (the process gets TERM); KILL cuts the grace; list shows this environment\'s pods only', async () => {
    const e = env({ terminationGraceSeconds: 30 });
    const other = env();
    const r = await provision(e);
    const ran = await run(e, r, 'sh', ['-c', 'trap "echo got-term; exit 0" TERM; echo ready; while :; do sleep 0.1; done'], {
      during: async (h, out) => {
        await waitFor('ready', async () => out().includes('ready'));
        const listed = [];
        for await (const x of driver.list!(e, signal())) listed.push(x);
        expect(listed.map((x) => x.providerId)).toEqual([podName(r.resourceId)]);
        expect(listed[0]!.labels).toMatchObject({ 'berth.resource': r.resourceId, 'berth.environment': e.id });
        expect(listed[0]!.createdAt!.getTime()).toBeGreaterThan(Date.now() - 60_000);
        const none = [];
        for await (const x of driver.list!(other, signal())) none.push(x);
        expect(none).toEqual([]);
        await driver.signal(e, h, 'TERM');
      },
    });
    expect(ran.out).toBe('ready\ngot-term\n');
    expect(ran.result).toMatchObject({ signal: 'SIGTERM' });

    const k = await provision(e);
    const started = Date.now();
    const killed = await run(e, k, 'sh', ['-c', 'trap "" TERM; echo ready; while :; do sleep 0.1; done'], {
      during: async (h, out) => {
        await waitFor('ready', async () => out().includes('ready'));
        await driver.signal(e, h, 'TERM');
        await new Promise((res) => setTimeout(res, 500));
        await driver.signal(e, h, 'KILL');
      },
    });
    // Well inside the 30 s grace: KILL cut it short.
    expect(Date.now() - started).toBeLessThan(25_000);
    expect(killed.result).toMatchObject({ exitCode: null });
    expect(['SIGKILL', 'SIGTERM']).toContain(killed.result.signal);
    await waitFor('the pod gone', async () => (await cluster.pod(podName(k.resourceId))) === null, 30_000, 250);
  }, 90_000);

  it('a pod deleted outside Berth ends its watch saying so', async () => {
    const e = env();
    const r = await provision(e);
    const ran = await run(e, r, 'sleep', ['300'], {
      during: async () => {
        await cluster.core.deleteNamespacedPod({ name: podName(r.resourceId), namespace: 'default', gracePeriodSeconds: 1 });
      },
    });
    expect(ran.result).toMatchObject({ errorCode: expect.stringMatching(/^kubernetes_pod_(gone|deleted)$/) });
  }, 60_000);
});
