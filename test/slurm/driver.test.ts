// The slurm driver's contract against a real single-node Slurm (slurmctld, slurmd, munged
// started by the test command): a job per resource, output followed live from its files,
// Slurm's exit codes, signals through scancel, resume from an offset, list and destroy.
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import type { DriverEnvironment, ExecutionHandle, ExitResult, ProvisionedResource } from '../../src/drivers/contract.js';
import { slurmConfigSchema } from '../../src/drivers/slurm/descriptor.js';
import { jobDir, jobName, slurmDriver } from '../../src/drivers/slurm/driver.js';
import { waitFor } from '../support/wait.js';
import { jobRecord, jobState, testCluster } from './cluster.js';

const cluster = testCluster();
const driver = slurmDriver();
const COMPANY = '00000000-0000-4000-8000-00000000c0de';
let n = 0;
const made: Array<{ e: DriverEnvironment; r: ProvisionedResource }> = [];

function env(config: Record<string, unknown> = {}): DriverEnvironment {
  const now = new Date();
  return {
    id: randomUUID(),
    companyId: COMPANY,
    name: `slurm-${++n}`,
    description: null,
    driver: 'slurm' as never,
    status: 'active',
    config: {},
    envVars: {},
    metadata: {},
    capacity: null,
    lastProbe: null,
    createdAt: now,
    updatedAt: now,
    secretConfig: slurmConfigSchema.parse({ slurmConf: cluster.slurmConf, workDir: cluster.workDir, partition: cluster.partition, ...config }) as Record<string, unknown>,
  };
}

const signal = () => AbortSignal.timeout(60_000);

async function provision(e: DriverEnvironment, resourceId: string = randomUUID()): Promise<ProvisionedResource> {
  const r = await driver.provision(e, { resourceId, leaseId: randomUUID(), labels: { 'berth.company': COMPANY } }, signal());
  made.push({ e, r });
  return r;
}

interface Ran {
  out: string;
  err: string;
  result: ExitResult;
  handle: ExecutionHandle;
}

async function run(e: DriverEnvironment, r: ProvisionedResource, command: string, args: string[], o: { env?: Record<string, string>; cwd?: string; deadlineSec?: number; during?: (h: ExecutionHandle, out: () => string) => Promise<void> } = {}): Promise<Ran> {
  const handle = await driver.exec(e, r, { command, args, cwd: o.cwd ?? r.cwd, env: o.env ?? {}, ...(o.deadlineSec ? { deadlineSec: o.deadlineSec } : {}) }, signal());
  let out = '';
  let err = '';
  const watching = driver.watch(e, handle, (s, t) => {
    if (s === 'stdout') out += t;
    else err += t;
  });
  await o.during?.(handle, () => out);
  const result = await watching;
  return { out, err, result, handle };
}

/** Every process command line on this machine (the cluster's one node). */
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

afterAll(async () => {
  for (const m of made) await driver.destroy(m.e, m.r, signal()).catch(() => {});
});

describe('slurm driver on a real cluster', () => {
  it('validates its config with a message per field; extra sbatch options only from the allow-list', () => {
    const bad = slurmConfigSchema.safeParse({ partition: 'de bug', timeLimitMinutes: 0, cpus: 1.5, workDir: 'rel', options: { qos: 'normal', output: '/etc/x' } });
    expect(bad.success).toBe(false);
    const issues = bad.error!.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    expect(issues).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^partition: must be a partition name/),
        'timeLimitMinutes: must be at least 1 (minute)',
        'cpus: must be an integer',
        'workDir: must be an absolute path',
        expect.stringMatching(/^options: Unrecognized key.*output/),
      ]),
    );
    expect(slurmConfigSchema.safeParse({ options: { gres: 'gpu:1;rm -rf /' } }).error!.issues[0]!.path).toEqual(['options', 'gres']);
    expect(slurmConfigSchema.parse({})).toMatchObject({ workDir: '/tmp/berth-slurm', timeLimitMinutes: 60, cpus: 1, options: {} });
  });

  it('probes the cluster: its name and partitions', async () => {
    const p = await driver.probe(env());
    expect(p.ok, p.error).toBe(true);
    expect(p.details).toMatchObject({ cluster: cluster.cluster, partitions: [expect.objectContaining({ partition: `${cluster.partition}*`, avail: 'up' })] });
    const bad = await driver.probe(env({ slurmConf: '/nonexistent/slurm.conf' }));
    expect(bad).toMatchObject({ ok: false, error: 'config.slurmConf: no file /nonexistent/slurm.conf on this server' });
  });

  it('one job per resource: named for it, labelled in its comment, running on the node before provision returns; output and exit code', async () => {
    const e = env();
    const r = await provision(e);
    expect(r.providerId).toMatch(/^\d+$/);
    expect(r.details).toMatchObject({ cluster: cluster.cluster, jobId: r.providerId, node: cluster.node, jobState: 'RUNNING', providerLeaseId: `slurm://${cluster.cluster}/${r.providerId}` });
    const rec = jobRecord(cluster, r.providerId!);
    expect(rec).toContain(`JobName=${jobName(r.resourceId)}`);
    expect(rec).toContain(`Comment=berth.company=${COMPANY},berth.resource=${r.resourceId},berth.environment=${e.id},berth.lease=`);
    expect(rec).toContain('JobState=RUNNING');
    const ran = await run(e, r, 'sh', ['-c', 'echo "job=$SLURM_JOB_ID node=$SLURMD_NODENAME"; pwd; echo warn >&2; exit 3']);
    expect(ran.result).toEqual({ exitCode: 3, signal: null });
    expect(ran.out).toBe(`job=${r.providerId} node=${cluster.node}\n${r.cwd}\n`);
    expect(ran.err).toBe('warn\n');
    expect(jobState(cluster, r.providerId!)).toBe('FAILED');
    expect(jobRecord(cluster, r.providerId!)).toContain('ExitCode=3:0');
    const ok = await run(e, await provision(e), 'true', []);
    expect(ok.result).toEqual({ exitCode: 0, signal: null });
    for (const m of made.splice(0)) await driver.destroy(m.e, m.r, signal());
  }, 60_000);

  it('a signal death is the signal; a missing command or directory is a spawn error', async () => {
    const e = env();
    expect((await run(e, await provision(e), 'sh', ['-c', 'kill -SEGV $$'])).result).toEqual({ exitCode: null, signal: 'SIGSEGV' });
    expect((await run(e, await provision(e), 'no-such-command-here', [])).result).toMatchObject({ spawnError: expect.stringContaining('no such command') });
    const r = await provision(e);
    expect((await run(e, r, 'true', [], { cwd: '/nonexistent/dir' })).result).toMatchObject({ spawnError: expect.stringContaining('no such directory') });
    for (const m of made.splice(0)) await driver.destroy(m.e, m.r, signal());
  }, 60_000);

  it('output reaches watch while the job runs, and another watch resumes from an offset with nothing lost or repeated', async () => {
    const e = env();
    const r = await provision(e);
    const handle = await driver.exec(e, r, { command: 'sh', args: ['-c', 'for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.3; done; echo é-end'], cwd: r.cwd, env: {} }, signal());
    let first = '';
    let offset = '';
    const stop = new AbortController();
    const watching = driver.watch(e, handle, (_s, t) => void (first += t), { onOffset: (o) => (offset = o), signal: stop.signal });
    await waitFor('two lines live', async () => first.includes('line-2'));
    expect(first).not.toContain('line-6'); // live, not at the end
    stop.abort('handoff');
    await expect(watching).rejects.toBeDefined();
    // A second server with its own driver instance and the serialised handle.
    const other = slurmDriver();
    let second = '';
    const result = await other.watch(e, JSON.parse(JSON.stringify(handle)) as ExecutionHandle, (_s, t) => void (second += t), { from: offset });
    expect(result).toEqual({ exitCode: 0, signal: null });
    expect(first + second).toBe('line-1\nline-2\nline-3\nline-4\nline-5\nline-6\né-end\n');
  }, 60_000);

  it('the run environment is in a 0600 file the job sources and removes: never on a command line, in the job record or its script', async () => {
    const e = env();
    const r = await provision(e);
    const secret = `slurm-secret-${randomBytes(8).toString('hex')}`;
    const ran = await run(e, r, 'sh', ['-c', 'echo "len=${#PAPERCLIP_API_KEY}"; sleep 2'], {
      env: { PAPERCLIP_API_KEY: secret },
      during: async (_h, out) => {
        await waitFor('the process to start', async () => out().includes('len='));
        expect(out()).toContain(`len=${secret.length}`);
        expect(existsSync(`${jobDir(e.secretConfig as never, r.resourceId)}/run.sh`)).toBe(false);
        const lines = allCommandLines();
        expect(lines.some((l) => l.includes('sleep 2'))).toBe(true); // we looked at the right list
        expect(lines.filter((l) => l.includes(secret))).toEqual([]);
        const rec = cluster.cmd('scontrol', ['show', 'job', r.providerId!]);
        expect(rec).toContain(r.providerId!);
        expect(rec).not.toContain(secret);
        const script = cluster.cmd('scontrol', ['write', 'batch_script', r.providerId!, '-']);
        expect(script).toContain('Berth: the job of resource');
        expect(script).not.toContain(secret);
        // The server's own environment is not the job's either.
        expect(rec).not.toContain('BERTH_SLURM_WORKDIR');
      },
    });
    expect(ran.result).toEqual({ exitCode: 0, signal: null });
  }, 60_000);

  it('TERM reaches the command (its trap runs), KILL cancels the job; destroy leaves no process and no directory, and is idempotent', async () => {
    const e = env();
    const r = await provision(e);
    // A sleep of a length no other process here has: its command line is its tag.
    const secs = 3000 + Math.floor(Math.random() * 5000);
    const tag = `sleep ${secs}`;
    const ran = await run(e, r, 'sh', ['-c', `trap 'echo got-term; exit 0' TERM; (setsid sleep ${secs} &); sleep 300 & wait`], {
      during: async (h) => {
        await waitFor('the grandchild', async () => allCommandLines().some((l) => l.startsWith(tag)));
        await driver.signal(e, h, 'TERM');
      },
    });
    expect(ran.out).toContain('got-term');
    expect(ran.result).toEqual({ exitCode: 0, signal: null });
    const done = await driver.destroy(e, r, signal());
    expect(done.removed).toContain(jobDir(e.secretConfig as never, r.resourceId));
    // Slurm killed what the job left (a setsid grandchild included) when its script ended.
    await waitFor('nothing of the job on the node', async () => !allCommandLines().some((l) => l.startsWith(tag)), 10_000);
    expect(existsSync(jobDir(e.secretConfig as never, r.resourceId))).toBe(false);
    expect(await driver.destroy(e, r, signal())).toMatchObject({ nothing: expect.stringContaining('no active job') });

    const k = await provision(e);
    const killed = await run(e, k, 'sh', ['-c', `trap '' TERM; sleep ${secs + 1}`], {
      during: async (h) => {
        await waitFor('the sleeper', async () => allCommandLines().some((l) => l.startsWith(`sleep ${secs + 1}`)));
        await driver.signal(e, h, 'KILL');
      },
    });
    expect(killed.result).toMatchObject({ exitCode: null, signal: 'SIGKILL' });
    expect(jobState(cluster, k.providerId!)).toBe('CANCELLED');
    await waitFor('the sleeper gone', async () => !allCommandLines().some((l) => l.startsWith(`sleep ${secs + 1}`)), 10_000);
    await driver.destroy(e, k, signal());
  }, 60_000);

  it('the deadline kills the command in the job, and lowers the job\'s own time limit', async () => {
    const e = env();
    const r = await provision(e);
    const started = Date.now();
    const ran = await run(e, r, 'sleep', ['60'], {
      deadlineSec: 2,
      during: async () => {
        await waitFor('the time limit lowered', async () => /TimeLimit=00:0[1-3]:00/.test(jobRecord(cluster, r.providerId!)));
      },
    });
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(ran.result).toMatchObject({ errorCode: 'timeout', error: expect.stringContaining('deadline of 2 s') });
    await driver.destroy(e, r, signal());
  }, 60_000);

  it('a job Slurm has no record of ends its watch with slurm_job_gone, naming the job and the cluster', async () => {
    const e = env();
    const handle: ExecutionHandle = { driver: 'slurm', host: cluster.cluster, ref: { jobId: '987654321', dir: '/nowhere', cluster: cluster.cluster, resourceId: randomUUID(), deadlineSec: 0 } };
    const result = await driver.watch(e, handle, () => {});
    expect(result).toMatchObject({ exitCode: null, signal: null, errorCode: 'slurm_job_gone', error: `job 987654321 on cluster ${cluster.cluster} disappeared from Slurm (not in scontrol nor the cluster's job records): how it ended is unknown` });
  });

  it('a job cancelled outside Berth ends its watch with a clear error; list shows only this environment\'s active jobs', async () => {
    const e = env();
    const other = env();
    const r = await provision(e);
    const o = await provision(other);
    const listed = [];
    for await (const x of driver.list!(e, signal())) listed.push(x);
    expect(listed.map((x) => x.providerId)).toEqual([r.providerId]);
    expect(listed[0]!.labels).toMatchObject({ 'berth.resource': r.resourceId, 'berth.environment': e.id });
    expect(listed[0]!.createdAt!.getTime()).toBeGreaterThan(Date.now() - 60_000);
    const ran = await run(e, r, 'sleep', ['300'], {
      during: async () => {
        cluster.cmd('scancel', [r.providerId!]);
      },
    });
    expect(ran.result).toMatchObject({ errorCode: 'slurm_cancelled', error: `job ${r.providerId} on cluster ${cluster.cluster} was cancelled in Slurm, not by Berth` });
    await driver.destroy(e, r, signal());
    await driver.destroy(other, o, signal());
    const after = [];
    for await (const x of driver.list!(other, signal())) after.push(x);
    expect(after).toEqual([]);
  }, 60_000);
});
