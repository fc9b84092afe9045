// The docker driver's contract against real engines: a private dockerd and a private
// Podman service (both started by the test command), with images imported from files.
import { randomUUID } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import Docker from 'dockerode';
import type { DriverEnvironment, ExecutionHandle, ExitResult, ProvisionedResource } from '../../src/drivers/contract.js';
import { containerName, dockerDriver } from '../../src/drivers/docker/driver.js';
import { dockerConfigSchema } from '../../src/drivers/docker/descriptor.js';
import { waitFor } from '../support/wait.js';
import { containerEngines, type TestEngine } from '../support/engines.js';

const engines = containerEngines();
const driver = dockerDriver();
const COMPANY = '00000000-0000-4000-8000-00000000c0de';
let n = 0;
const made: Array<{ engine: TestEngine; resourceId: string }> = [];

function env(engine: TestEngine, config: Record<string, unknown> = {}): DriverEnvironment {
  const now = new Date();
  return {
    id: randomUUID(),
    companyId: COMPANY,
    name: `docker-${++n}`,
    description: null,
    driver: 'docker',
    status: 'active',
    config: {},
    envVars: {},
    metadata: {},
    capacity: null,
    lastProbe: null,
    createdAt: now,
    updatedAt: now,
    secretConfig: dockerConfigSchema.parse({ endpoint: engine.endpoint, image: engine.image, ...config }) as Record<string, unknown>,
  };
}

const signal = () => AbortSignal.timeout(60_000);

async function provision(engine: TestEngine, e: DriverEnvironment, resourceId: string = randomUUID()): Promise<ProvisionedResource> {
  made.push({ engine, resourceId });
  return driver.provision(e, { resourceId, leaseId: randomUUID(), labels: { 'berth.company': e.companyId } }, signal());
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
  const outSoFar = () => out;
  await o.during?.(handle, outSoFar);
  const result = await watching;
  return { out, err, result, handle };
}

const api = (engine: TestEngine) => new Docker({ socketPath: engine.socket });

afterAll(async () => {
  for (const m of made) await api(m.engine).getContainer(containerName(m.resourceId)).remove({ force: true, v: true }).catch(() => {});
  driver.close?.();
});

describe.each(engines.map((e) => [e.name, e] as const))('docker driver on %s', (_name, engine) => {
  it('probes the engine and the image; a missing image is a clear failure', async () => {
    const ok = await driver.probe(env(engine));
    expect(ok.ok, ok.error).toBe(true);
    expect(ok.details).toMatchObject({ product: engine.name, imagePresent: true });
    expect(typeof ok.details.version).toBe('string');
    const missing = await driver.probe(env(engine, { image: 'berth-test-no-such-image' }));
    expect(missing.ok).toBe(false);
    expect(missing.error).toMatch(/image berth-test-no-such-image is not on the engine.*image_not_found/);
    const nowhere = await driver.probe(env(engine, { endpoint: 'unix:///tmp/berth-no-such-engine.sock' }));
    expect(nowhere.ok).toBe(false);
    expect(nowhere.error).toMatch(/no engine answers at unix:\/\/\/tmp\/berth-no-such-engine\.sock/);
  });

  it('provisions one labelled container per resource, idempotently, with the limits asked for', async () => {
    const e = env(engine, { memoryMb: 64, pidsLimit: 50, cpus: 0.5, labels: { team: 'infra' } });
    const resourceId = randomUUID();
    const r = await provision(engine, e, resourceId);
    const again = await provision(engine, e, resourceId);
    expect(again.providerId).toBe(r.providerId);
    const info = await api(engine).getContainer(containerName(resourceId)).inspect();
    expect(info.State.Running).toBe(true);
    expect(info.Config.Labels).toMatchObject({ 'berth.resource': resourceId, 'berth.environment': e.id, 'berth.company': COMPANY, team: 'infra' });
    expect(info.HostConfig.NetworkMode).toBe('none');
    expect(info.HostConfig.Memory).toBe(64 * 1024 * 1024);
    expect(info.HostConfig.PidsLimit).toBe(50);
    expect(info.HostConfig.NanoCpus).toBe(5e8);
    expect(r.details).toMatchObject({ container: containerName(resourceId), image: engine.image, network: 'none', cwd: '/workspace' });
    const listed = [];
    for await (const l of driver.list!(e, signal())) listed.push(l);
    expect(listed.map((l) => l.labels['berth.resource'])).toEqual([resourceId]);
  });

  it('runs a command with its environment, output, exit code and workspace; no value on its command line', async () => {
    const e = env(engine);
    const r = await provision(engine, e);
    const secret = `s3cret-${randomUUID()}`;
    const ran = await run(e, r, 'sh', ['-c', 'echo "out:$TOKEN"; echo err >&2; pwd; touch ok && ls; exit 3'], { env: { TOKEN: secret } });
    expect(ran.result).toMatchObject({ exitCode: 3, signal: null });
    expect(ran.out).toBe(`out:${secret}\n/workspace\nok\n`);
    expect(ran.err).toBe('err\n');
    // The value is in the exec's environment only: not in the container's config, nor in any exec's command line.
    const info = await api(engine).getContainer(String(ran.handle.ref.container)).inspect();
    expect(JSON.stringify(info)).not.toContain(secret);
    const ei = await api(engine).getExec(String(ran.handle.ref.execId)).inspect().catch(() => null);
    if (ei) expect(JSON.stringify(ei.ProcessConfig ?? {})).not.toContain(secret);
  });

  it('hands awkward values and arguments over exactly, as the container\'s first run (its main process) and as an exec', async () => {
    const e = env(engine);
    const r = await provision(engine, e);
    const values = { QUOTE: "it's \"quoted\" $HOME `x`", LINES: 'one\ntwo\r\n\nlast\n', SLASH: 'a\\nb\\c %s %b \\0101', EMPTY: '', DASH: '-n' };
    const args = ['-c', 'for v in QUOTE LINES SLASH EMPTY DASH; do eval "printf \'%s=[%s]\\n\' $v \\"\\$$v\\""; done; printf \'<%s>\' "$@"', 'sh', "it's", 'two\nlines', '', '*'];
    const expected = Object.entries(values).map(([k, v]) => `${k}=[${v}]\n`).join('') + "<it's><two\nlines><><*>";
    const first = await run(e, r, 'sh', args, { env: values });
    expect(first.handle.ref.main).toBe(true);
    expect(first.result).toMatchObject({ exitCode: 0, signal: null });
    expect(first.out).toBe(expected);
    // The container stopped with its main process; the next run starts it again and is an exec.
    const second = await run(e, r, 'sh', args, { env: values });
    expect(second.handle.ref.main).toBeUndefined();
    expect(second.out).toBe(expected);
    const info = await api(engine).getContainer(containerName(r.resourceId)).inspect();
    expect(JSON.stringify(info)).not.toContain('two\\nlines');
  });

  it('reports a command or directory that is not there as a spawn error, before anything runs', async () => {
    const e = env(engine);
    const r = await provision(engine, e);
    const nocmd = await run(e, r, 'no-such-command-here', []);
    expect(nocmd.result.spawnError).toMatch(/no such command/);
    const nodir = await run(e, r, 'true', [], { cwd: '/no/such/dir' });
    expect(nodir.result.spawnError).toMatch(/no such directory/);
  });

  it('streams output with backpressure: a sink that waits holds the process back', async () => {
    const e = env(engine);
    const r = await provision(engine, e);
    const handle = await driver.exec(e, r, { command: 'sh', args: ['-c', "head -c 4000000 /dev/zero | tr '\\0' x; date > /workspace/done"], cwd: r.cwd, env: {} }, signal());
    let text = '';
    let first = true;
    const result = await driver.watch(e, handle, async (_s, t) => {
      text += t;
      if (first) {
        first = false;
        // While the sink holds its first chunk, the writer cannot have written 4 MB (more than every buffer between).
        await new Promise((res) => setTimeout(res, 500));
        const probe = await run(e, r, 'sh', ['-c', 'test -e /workspace/done && echo finished || echo waiting']);
        expect(probe.out.trim()).toBe('waiting');
      }
    });
    expect(result.exitCode).toBe(0);
    expect(text).toBe('x'.repeat(4_000_000));
  });

  it('a stop sends TERM to every process and leaves the container stopped; KILL kills what ignores it', async () => {
    const e = env(engine);
    const r = await provision(engine, e);
    const ran = await run(e, r, 'sh', ['-c', 'sleep 300 & trap "echo got-term; exit 0" TERM; echo ready; while :; do sleep 1; done'], {
      during: async (h, out) => {
        // TERM once the trap is set (it is when `ready` is out), not after a guessed delay.
        await waitFor('the process to be ready', async () => out().includes('ready'), 20_000);
        await driver.signal(e, h, 'TERM');
      },
    });
    expect(ran.out).toContain('got-term');
    expect(ran.result).toMatchObject({ exitCode: 0, signal: null });
    expect((await api(engine).getContainer(containerName(r.resourceId)).inspect()).State.Running).toBe(false);

    // A reused resource starts again; KILL ends a process that ignores TERM.
    const again = await provision(engine, e, r.resourceId);
    const ignoring = await run(e, again, 'sh', ['-c', 'trap "" TERM; echo ready; while :; do sleep 1; done'], {
      during: async (h, out) => {
        await waitFor('the process to be ready', async () => out().includes('ready'), 20_000);
        await driver.signal(e, h, 'TERM');
        await new Promise((res) => setTimeout(res, 500));
        await driver.signal(e, h, 'KILL');
      },
    });
    expect(ignoring.result.exitCode).toBeNull();
    expect(ignoring.result.signal).toBe('SIGKILL');
    expect((await api(engine).getContainer(containerName(r.resourceId)).inspect()).State.Running).toBe(false);
  });

  it('kills everything at its deadline, with no server involved', async () => {
    const e = env(engine);
    const r = await provision(engine, e);
    const ran = await run(e, r, 'sh', ['-c', 'sleep 300 & sleep 300'], { deadlineSec: 1 });
    expect(ran.result).toMatchObject({ exitCode: null, signal: 'SIGKILL', errorCode: 'timeout' });
    // ...and the container is left stopped: nothing of the run goes on.
    expect((await api(engine).getContainer(containerName(r.resourceId)).inspect()).State.Running).toBe(false);
  });

  it('destroys exactly its container and volume; a second destroy is success', async () => {
    const e = env(engine);
    const r = await provision(engine, e);
    const first = await driver.destroy(e, r, signal());
    expect(first.removed).toContain(containerName(r.resourceId));
    await expect(api(engine).getContainer(containerName(r.resourceId)).inspect()).rejects.toMatchObject({ statusCode: 404 });
    const second = await driver.destroy(e, r, signal());
    expect(second.nothing).toMatch(/no container/);
  });

  it('refuses a container of that name that is not the resource’s', async () => {
    const e = env(engine);
    const resourceId: string = randomUUID();
    const name = containerName(resourceId);
    await api(engine).createContainer({ name, Image: engine.image, Cmd: ['sleep', '60'], HostConfig: { NetworkMode: 'none' } });
    try {
      await expect(driver.destroy(e, { resourceId, providerId: null, state: {} }, signal())).rejects.toThrow(/not labelled berth.resource/);
      await expect(api(engine).getContainer(name).inspect()).resolves.toBeTruthy();
    } finally {
      await api(engine).getContainer(name).remove({ force: true });
    }
  });

  it('a missing image fails provision with image_not_found, never a hang', async () => {
    const e = env(engine, { image: 'berth-test-no-such-image' });
    await expect(provision(engine, e)).rejects.toMatchObject({ code: 'image_not_found' });
  });
});
