// Heartbeat runs in container environments end to end, on a private dockerd and a private
// Podman service: the run's agent executes in the lease's container, reaches the server
// that started it (and nothing else) with network none, its secrets appear in no command
// line and no engine record, timeouts and cancels stop it and leave no container behind.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { serve, type ServerType } from '@hono/node-server';
import Docker from 'dockerode';
import pino from 'pino';
import { dockerDriver } from '../../src/drivers/docker/driver.js';
import { localDriver } from '../../src/drivers/local/driver.js';
import type { EnvironmentDriver } from '../../src/drivers/contract.js';
import type { HeartbeatRun } from '../../src/domain/types.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import { createApp } from '../../src/http/app.js';
import { ADMIN_KEY_PREFIX } from '../../src/http/auth.js';
import { hashBearerSecret } from '../../src/secrets/bearer.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { containerEngines, type TestEngine } from '../support/engines.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { waitFor } from '../support/wait.js';

process.env.BERTH_SECRET_KEY = randomBytes(32).toString('hex');

const engines = containerEngines();
let t: TestDb;
let runtime: Runtime;
let server: ServerType;
let url: string;
let companyId: string;
let docker: EnvironmentDriver;
/** Two listeners of the host's that an isolated run must not reach: one on loopback, one on every address. */
let loopbackOnly: Server;
let everywhere: Server;
let hostAddress: string;
const runtimeErrors = collectRuntimeErrors();
const root = mkdtempSync(join(tmpdir(), 'berth-docker-runs-'));
let n = 0;

/**
 * The agent: reads its own run back with its token at PAPERCLIP_API_URL, then tries the
 * host's other listeners; prints what it found on one line.
 */
const AGENT = `import net from 'node:net';
const reach = (host, port) => new Promise((res) => {
  const s = net.connect({ host, port, timeout: 2000 });
  s.once('connect', () => { s.destroy(); res('open'); });
  s.once('timeout', () => { s.destroy(); res('blocked'); });
  s.once('error', () => res('blocked'));
});
const u = process.env.PAPERCLIP_API_URL;
const r = await fetch(u + '/api/heartbeat-runs/' + process.env.PAPERCLIP_RUN_ID, { headers: { authorization: 'Bearer ' + process.env.PAPERCLIP_API_KEY } });
const body = await r.json();
const [lp, ep, eh] = process.argv.slice(1);
console.log('http=' + r.status + ' status=' + body.status + ' loopback=' + (await reach('127.0.0.1', Number(lp))) + ' external=' + (await reach(eh, Number(ep))) + ' ws=' + process.cwd());`;

function listen(host: string): Promise<Server> {
  return new Promise((resolve) => {
    // A peer that resets (the agent destroys its probe) is no error here.
    const s = createServer((c) => c.on('error', () => {}).end('hello\n'));
    s.listen(0, host, () => resolve(s));
  });
}
const portOf = (s: Server) => (s.address() as AddressInfo).port;

beforeAll(async () => {
  hostAddress = Object.values(networkInterfaces()).flat().find((a) => a && a.family === 'IPv4' && !a.internal)?.address ?? '';
  if (!hostAddress) throw new Error('this test needs a non-loopback IPv4 address on the host, to show an isolated run cannot reach it');
  [loopbackOnly, everywhere] = await Promise.all([listen('127.0.0.1'), listen('0.0.0.0')]);
  t = await openTestDb();
  docker = dockerDriver();
  const drivers = new Map<string, EnvironmentDriver>([
    ['local', localDriver({ workspaceRoot: join(root, 'local') })],
    ['docker', docker],
  ]);
  const app = createApp({
    services: t.services,
    drivers,
    logger: pino({ level: 'silent' }),
    adminKeyHash: hashBearerSecret(`${ADMIN_KEY_PREFIX}${randomBytes(16).toString('hex')}`),
    pokeScheduler: () => runtime?.poke(),
    database: t.kind,
    version: 'test',
  });
  server = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
  });
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  companyId = (await t.services.companies.create({ name: 'Container Co' })).id;
  runtime = await startRuntime({ services: t.services, db: t.db, drivers, apiUrl: url, localUrl: url, pollMs: 50, sweepMs: 200, heartbeatMs: 100, leaseTtlSeconds: 10, onError: runtimeErrors.onError });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  docker?.close?.();
  if (server) {
    await new Promise<void>((r) => {
      server.close(() => r());
      (server as { closeAllConnections?: () => void }).closeAllConnections?.();
    });
  }
  loopbackOnly?.close();
  everywhere?.close();
  await t?.close();
  rmSync(root, { recursive: true, force: true });
});

async function containerAgent(engine: TestEngine, adapter: Record<string, unknown>, config: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) {
  const env = await t.services.environments.create(companyId, { name: `ct-${engine.name}-${++n}`, driver: 'docker', config: { endpoint: engine.endpoint, image: engine.nodeImage, ...config }, ...extra } as never);
  const agent = await t.services.agents.create(companyId, { name: `agent-${++n}`, adapterType: 'process', adapterConfig: adapter as never, defaultEnvironmentId: env.id });
  return { env, agent };
}

async function runToEnd(agentId: string, ms = 60_000): Promise<{ run: HeartbeatRun; log: string }> {
  const queued = await t.services.runs.invoke(companyId, agentId, { source: 'on_demand' });
  runtime.poke();
  const run = await waitFor(`run ${queued.id} to finish`, async () => {
    const r = await t.services.runs.get(companyId, queued.id);
    return r.finishedAt ? r : null;
  }, ms);
  return { run, log: await logOf(run.id) };
}
const logOf = async (runId: string) => (await t.services.runs.readLog(companyId, runId, { limit: 10_000 })).map((c) => c.chunk).join('');

/** Berth's containers of an environment on the engine, running or not. */
const containersOf = (engine: TestEngine, envId: string) => new Docker({ socketPath: engine.socket }).listContainers({ all: true, filters: { label: [`berth.environment=${envId}`] } });

describe.each(engines.map((e) => [e.name, e] as const))('container runs on %s', (_name, engine) => {
  it('the agent runs in its container, reaches Berth through PAPERCLIP_API_URL and nothing else; the container is gone after', async () => {
    const args = ['--input-type=module', '-e', AGENT, String(portOf(loopbackOnly)), String(portOf(everywhere)), hostAddress];
    const { env, agent } = await containerAgent(engine, { command: 'node', args });
    const { run, log } = await runToEnd(agent.id);
    expect(run.status, log).toBe('succeeded');
    expect(log).toContain(`http=200 status=running loopback=blocked external=blocked ws=/workspace`);
    const pe = run.contextSnapshot.paperclipEnvironment as Record<string, unknown>;
    expect(pe).toMatchObject({ driver: 'docker', image: engine.nodeImage, network: 'none', cwd: '/workspace' });
    expect(String(pe.container)).toMatch(/^berth-[0-9a-f-]{36}$/);
    const lease = await t.services.leases.get(companyId, run.leaseId!);
    expect(JSON.stringify(lease)).toContain(String(pe.container));
    // Released (ephemeral): its container is removed.
    await waitFor('the container to be removed', async () => (await containersOf(engine, env.id)).length === 0, 20_000);

    // The positive control: the same agent on this machine, un-isolated, reaches both listeners.
    const local = await t.services.environments.ensureLocalEnvironment(companyId);
    const onHost = await t.services.agents.create(companyId, { name: `host-${++n}`, adapterType: 'process', adapterConfig: { command: process.execPath, args } as never, defaultEnvironmentId: local.id });
    const control = await runToEnd(onHost.id);
    expect(control.log).toContain('loopback=open external=open');
  });

  it("the environment's and agent's secret values reach the process only: not its command line, nor the engine's records", async () => {
    const envSecret = `env-${randomBytes(8).toString('hex')}`;
    const agentSecret = `agent-${randomBytes(8).toString('hex')}`;
    const script = 'echo "$ENV_SECRET $AGENT_SECRET" > /workspace/seen; cat /workspace/seen; sleep 2';
    const { agent } = await containerAgent(engine, { command: 'sh', args: ['-c', script], env: { AGENT_SECRET: agentSecret } }, { image: engine.image }, { envVars: { ENV_SECRET: envSecret } });
    const queued = await t.services.runs.invoke(companyId, agent.id, { source: 'on_demand' });
    runtime.poke();
    const api = new Docker({ socketPath: engine.socket });
    const seen = await waitFor('the process to run', async () => {
      const r = await t.services.runs.get(companyId, queued.id);
      const name = (r.contextSnapshot.paperclipEnvironment as Record<string, unknown> | undefined)?.container;
      if (!name || !(await logOf(queued.id)).includes(envSecret)) return null;
      return String(name);
    }, 30_000);
    const info = await api.getContainer(seen).inspect();
    expect(JSON.stringify(info)).not.toContain(envSecret);
    expect(JSON.stringify(info)).not.toContain(agentSecret);
    const execs = (info as unknown as { ExecIDs?: string[] | null }).ExecIDs ?? [];
    for (const id of execs) {
      const ei = await api.getExec(id).inspect().catch(() => null);
      if (ei) expect(JSON.stringify(ei)).not.toMatch(new RegExp(`${envSecret}|${agentSecret}`));
    }
    // No process on this host (the engine's, the container's, Berth's) has either on its command line.
    for (const p of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
      let cmd = '';
      try {
        cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8');
      } catch {
        continue;
      }
      expect(cmd).not.toContain(envSecret);
      expect(cmd).not.toContain(agentSecret);
    }
    const run = await waitFor('the run to end', async () => {
      const r = await t.services.runs.get(companyId, queued.id);
      return r.finishedAt ? r : null;
    }, 30_000);
    expect(run.status).toBe('succeeded');
  });

  it('a timeout stops the whole process tree and the container; a cancel too', async () => {
    const { env, agent } = await containerAgent(engine, { command: 'sh', args: ['-c', 'sleep 600 & echo started; sleep 600'], timeoutSec: 1, graceSec: 1 }, { image: engine.image });
    const { run, log } = await runToEnd(agent.id);
    expect(run.status, log).toBe('timed_out');
    await waitFor('the container to be removed', async () => (await containersOf(engine, env.id)).length === 0, 20_000);

    const sleeper = await t.services.agents.create(companyId, { name: `sleeper-${++n}`, adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', 'echo started; sleep 600'] } as never, defaultEnvironmentId: env.id });
    const queued = await t.services.runs.invoke(companyId, sleeper.id, { source: 'on_demand' });
    runtime.poke();
    await waitFor('the run to start', async () => (await logOf(queued.id)).includes('started'), 30_000);
    await t.services.runs.cancel(companyId, queued.id);
    runtime.poke();
    const cancelled = await waitFor('the run to end', async () => {
      const r = await t.services.runs.get(companyId, queued.id);
      return r.finishedAt ? r : null;
    }, 30_000);
    expect(cancelled.status).toBe('cancelled');
    await waitFor('the container to be removed', async () => (await containersOf(engine, env.id)).length === 0, 20_000);
  });

  it('retain_on_failure keeps a failed run\'s container stopped, with its workspace, until the retention deadline removes it', async () => {
    const { env, agent } = await containerAgent(engine, { command: 'sh', args: ['-c', 'echo evidence > /workspace/notes; sleep 600 & exit 3'] }, { image: engine.image }, {
      metadata: { leasePolicy: 'retain_on_failure', retentionSeconds: 4 },
    });
    const { run, log } = await runToEnd(agent.id);
    expect(run.status, log).toBe('failed');
    const kept = await t.services.leases.get(companyId, run.leaseId!);
    expect(kept).toMatchObject({ status: 'retained', leasePolicy: 'retain_on_failure' });
    const api = new Docker({ socketPath: engine.socket });
    const [c] = await containersOf(engine, env.id);
    expect(c?.Labels['berth.resource']).toBe(kept.resourceId);
    const info = await api.getContainer(c!.Id).inspect();
    expect(info.State.Running).toBe(false);
    // What the run left is there to inspect: the stopped container's workspace still holds its file.
    const archive = await api.getContainer(c!.Id).getArchive({ path: '/workspace/notes' });
    const chunks: Buffer[] = [];
    for await (const b of archive as AsyncIterable<Buffer>) chunks.push(b);
    expect(Buffer.concat(chunks).toString('latin1')).toContain('evidence');
    // The deadline passes: the sweep ends the lease and resource GC removes the container.
    await waitFor('the retained container to be removed at its deadline', async () => (await containersOf(engine, env.id)).length === 0, 30_000);
    expect((await t.services.leases.get(companyId, kept.id)).status).toBe('expired');
  });

  it('reuse_by_environment: the next run gets the same container back, its workspace intact; a changed config gets a new one', async () => {
    const script = 'n=$(cat /workspace/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > /workspace/count; echo "count=$n host=$(hostname)"';
    const { env, agent } = await containerAgent(engine, { command: 'sh', args: ['-c', script] }, { image: engine.image }, {
      metadata: { leasePolicy: 'reuse_by_environment', retentionSeconds: 600 },
    });
    const api = new Docker({ socketPath: engine.socket });
    const first = await runToEnd(agent.id);
    expect(first.run.status, first.log).toBe('succeeded');
    expect(first.log).toContain('count=1');
    expect(first.run.contextSnapshot.paperclipEnvironment).toMatchObject({ reused: false });
    const lease1 = await t.services.leases.get(companyId, first.run.leaseId!);
    expect(lease1.status).toBe('retained');
    const [c1] = await containersOf(engine, env.id);
    expect((await api.getContainer(c1!.Id).inspect()).State.Running).toBe(false);

    const second = await runToEnd(agent.id);
    expect(second.run.status, second.log).toBe('succeeded');
    expect(second.log).toContain('count=2');
    expect(second.run.leaseId).toBe(lease1.id);
    expect(second.run.contextSnapshot.paperclipEnvironment).toMatchObject({ reused: true, container: `berth-${lease1.resourceId}` });
    const after2 = await containersOf(engine, env.id);
    expect(after2.map((c) => c.Id)).toEqual([c1!.Id]);
    const acts = await t.services.activity.list(companyId, { entityId: lease1.id, action: 'environment.lease_reacquired' });
    expect(acts.items).toHaveLength(1);

    // The environment's config changes: the kept container is not the environment's any more; the next run gets a new one.
    await t.services.environments.update(companyId, env.id, { config: { endpoint: engine.endpoint, image: engine.image, memoryMb: 256 } });
    const third = await runToEnd(agent.id);
    expect(third.run.status, third.log).toBe('succeeded');
    expect(third.log).toContain('count=1');
    expect(third.run.leaseId).not.toBe(lease1.id);
    const all = await containersOf(engine, env.id);
    expect(all).toHaveLength(2);
    const c3 = all.find((c) => c.Id !== c1!.Id)!;
    expect((await api.getContainer(c3.Id).inspect()).HostConfig.Memory).toBe(256 * 1024 * 1024);
    // Releasing the old kept lease removes its container; the new one stays kept.
    const old = await t.services.leases.get(companyId, lease1.id);
    await t.services.leases.release(companyId, old.id, { fence: old.fence, status: 'released', cleanupStatus: 'pending' });
    await waitFor('the old container to be removed', async () => (await containersOf(engine, env.id)).map((c) => c.Id).join() === c3.Id, 20_000);
    const l3 = await t.services.leases.get(companyId, third.run.leaseId!);
    await t.services.leases.release(companyId, l3.id, { fence: l3.fence, status: 'released', cleanupStatus: 'pending' });
    await waitFor('every container of the environment to be removed', async () => (await containersOf(engine, env.id)).length === 0, 20_000);
  });

  it('a missing image fails the run with image_not_found', async () => {
    const { agent } = await containerAgent(engine, { command: 'true', args: [] }, { image: 'berth-test-no-such-image' });
    const { run } = await runToEnd(agent.id);
    expect(run.status).toBe('failed');
    expect(run.errorCode).toBe('image_not_found');
    expect(run.error).toMatch(/image berth-test-no-such-image is not on the engine/);
  });
});

describe('container runs under gVisor (runsc) on docker', () => {
  const engine = engines.find((e) => e.name === 'docker')!;

  it("the agent runs on gVisor's kernel, reaches Berth through PAPERCLIP_API_URL and nothing else", async () => {
    const probe = await t.services.environments.create(companyId, { name: `gvisor-probe-${++n}`, driver: 'docker', config: { endpoint: engine.endpoint, image: engine.image, runtime: 'runsc' } });
    const probed = await docker.probe(await t.services.environments.getWithSecrets(companyId, probe.id));
    // The test command gives its dockerd the runsc runtime (Debian's runsc): missing, this fails here, loudly.
    expect(probed.error ?? '').toBe('');
    expect(probed.details.runtimes).toContain('runsc');

    const kernel = await containerAgent(engine, { command: 'sh', args: ['-c', 'echo kernel=$(uname -r)'] }, { image: engine.image, runtime: 'runsc' });
    const k = await runToEnd(kernel.agent.id);
    expect(k.run.status, k.log).toBe('succeeded');
    // gVisor's Sentry answers uname itself (4.4.0), not the host's kernel.
    const hostKernel = readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
    expect(k.log).toMatch(/kernel=4\.4\.0/);
    expect(k.log).not.toContain(`kernel=${hostKernel}`);

    const args = ['--input-type=module', '-e', AGENT, String(portOf(loopbackOnly)), String(portOf(everywhere)), hostAddress];
    const { env, agent } = await containerAgent(engine, { command: 'node', args }, { runtime: 'runsc', memoryMb: 512 });
    const { run, log } = await runToEnd(agent.id);
    expect(run.status, log).toBe('succeeded');
    expect(log).toContain('http=200 status=running loopback=blocked external=blocked ws=/workspace');
    await waitFor('the container to be removed', async () => (await containersOf(engine, env.id)).length === 0, 20_000);
  });

  it('a runtime the engine does not have is a clear error on probe and on run', async () => {
    const { env, agent } = await containerAgent(engine, { command: 'true', args: [] }, { image: engine.image, runtime: 'kata' });
    const probed = await docker.probe(await t.services.environments.getWithSecrets(companyId, env.id));
    expect(probed.ok).toBe(false);
    expect(probed.error).toMatch(/has no runtime kata/);
    const { run } = await runToEnd(agent.id);
    expect(run.status).toBe('failed');
    expect(run.error).toMatch(/kata/);
    expect(await containersOf(engine, env.id)).toHaveLength(0);
  });
});
