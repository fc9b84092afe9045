// Local runs under bubblewrap (`isolation: "bubblewrap"`), end to end with the real bwrap:
// the run writes its workspace and nothing else, sees none of the server's private files,
// has no capabilities, reaches Berth through PAPERCLIP_API_URL and no other listener of the
// host, leaves nothing running behind it (its end, a timeout, a cancel), keeps its secrets
// off every command line, and fails clearly where bwrap is missing.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { homedir, networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { serve, type ServerType } from '@hono/node-server';
import pino from 'pino';
import { localDriver } from '../../src/drivers/local/driver.js';
import type { EnvironmentDriver } from '../../src/drivers/contract.js';
import type { HeartbeatRun } from '../../src/domain/types.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import { createApp } from '../../src/http/app.js';
import { ADMIN_KEY_PREFIX } from '../../src/http/auth.js';
import { hashBearerSecret } from '../../src/secrets/bearer.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { waitFor } from '../support/wait.js';

process.env.BERTH_SECRET_KEY = randomBytes(32).toString('hex');

let t: TestDb;
let runtime: Runtime;
let server: ServerType;
let url: string;
let companyId: string;
let local: EnvironmentDriver;
/** Two listeners of the host's that a sandboxed run must not reach: one on loopback, one on every address. */
let loopbackOnly: Server;
let everywhere: Server;
let hostAddress: string;
const runtimeErrors = collectRuntimeErrors();
const root = mkdtempSync(join(tmpdir(), 'berth-bwrap-runs-'));
let n = 0;

/** Reads its own run back with its token at PAPERCLIP_API_URL, then tries the host's other listeners. */
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
const { readlinkSync } = await import('node:fs');
console.log('ns=' + readlinkSync('/proc/self/ns/net'));
console.log('http=' + r.status + ' status=' + body.status + ' id=' + body.id + ' loopback=' + (await reach('127.0.0.1', Number(lp))) + ' external=' + (await reach(eh, Number(ep))));`;

function listen(host: string): Promise<Server> {
  return new Promise((resolve) => {
    const s = createServer((c) => c.on('error', () => {}).end('hello\n'));
    s.listen(0, host, () => resolve(s));
  });
}
const portOf = (s: Server) => (s.address() as AddressInfo).port;

beforeAll(async () => {
  execFileSync('bwrap', ['--version']); // fails loudly when bubblewrap is not installed
  hostAddress = Object.values(networkInterfaces()).flat().find((a) => a && a.family === 'IPv4' && !a.internal)?.address ?? '';
  if (!hostAddress) throw new Error('this test needs a non-loopback IPv4 address on the host, to show a sandboxed run cannot reach it');
  [loopbackOnly, everywhere] = await Promise.all([listen('127.0.0.1'), listen('0.0.0.0')]);
  t = await openTestDb();
  local = localDriver({ workspaceRoot: join(root, 'ws') });
  const drivers = new Map<string, EnvironmentDriver>([['local', local]]);
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
  companyId = (await t.services.companies.create({ name: 'Sandbox Co' })).id;
  runtime = await startRuntime({ services: t.services, db: t.db, drivers, apiUrl: url, localUrl: url, pollMs: 50, sweepMs: 200, heartbeatMs: 100, leaseTtlSeconds: 10, onError: runtimeErrors.onError });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  local?.close?.();
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

/** A company has one local environment: each sandboxed environment gets a company of its own (its runs are looked up by agent). */
const companyOf = new Map<string, string>();

async function sandboxAgent(adapter: Record<string, unknown>, config: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) {
  const companyId = (await t.services.companies.create({ name: `Sandbox Co ${++n}` })).id;
  const env = await t.services.environments.create(companyId, { name: `bw-${++n}`, driver: 'local', config: { isolation: 'bubblewrap', ...config }, ...extra } as never);
  const agent = await t.services.agents.create(companyId, { name: `agent-${++n}`, adapterType: 'process', adapterConfig: adapter as never, defaultEnvironmentId: env.id });
  companyOf.set(agent.id, companyId);
  return { env, agent, companyId };
}

async function runToEnd(agentId: string, ms = 60_000): Promise<{ run: HeartbeatRun; log: string }> {
  const companyId = companyOf.get(agentId)!;
  const queued = await t.services.runs.invoke(companyId, agentId, { source: 'on_demand' });
  runtime.poke();
  const run = await waitFor(`run ${queued.id} to finish`, async () => {
    const r = await t.services.runs.get(companyId, queued.id);
    return r.finishedAt ? r : null;
  }, ms);
  return { run, log: await logOf(run.id, companyId) };
}
const logOf = async (runId: string, co: string) => (await t.services.runs.readLog(co, runId, { limit: 10_000 })).map((c) => c.chunk).join('');

/** Pids on this host in the network namespace `ns` (`net:[inode]`). */
function processesInNetwork(ns: string): number[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return readlinkSync(`/proc/${p}/ns/net`) === ns;
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** Pids on this host running `sleep <marker>`. */
const sleepers = (marker: string) => processesWith(`sleep\0${marker}\0`);

/** Pids on this host whose command line contains `needle`. */
function processesWith(needle: string): number[] {
  const found: number[] = [];
  for (const p of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      if (readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(needle)) found.push(Number(p));
    } catch {
      /* exited meanwhile */
    }
  }
  return found;
}

describe('bubblewrap runs: the file system', () => {
  it('writes its workspace only; the system is read-only, the server home, host /tmp and /run hidden; no capabilities', async () => {
    const tag = randomBytes(6).toString('hex');
    const inTmp = join(tmpdir(), `berth-bwrap-host-${tag}`);
    const inHome = join(homedir(), `.berth-bwrap-host-${tag}`);
    writeFileSync(inTmp, 'host tmp secret\n');
    writeFileSync(inHome, 'host home secret\n');
    try {
      const script = [
        'try() { if sh -c "$2" >/dev/null 2>&1; then echo "$1=yes"; else echo "$1=no"; fi; }',
        'try ws "echo hi > ./made && test -s ./made"',
        'try root "echo x > /berth-bwrap-' + tag + '"',
        'try usr "echo x > /usr/berth-bwrap-' + tag + '"',
        'try home "echo x > $HOME/berth-bwrap-' + tag + '"',
        `try readtmp "cat ${inTmp}"`,
        `try readhome "cat ${inHome}"`,
        'try readetc "cat /etc/hostname"',
        'try run "ls /run/postgresql/.s.PGSQL.5432"',
        'try tmp "echo x > /tmp/scratch && test -s /tmp/scratch"',
        'grep -E "^(CapEff|CapPrm|NoNewPrivs):" /proc/self/status | tr -d "\\t" | tr "\\n" " "; echo',
        'echo pid=$$',
      ].join('\n');
      const { env, agent } = await sandboxAgent({ command: 'sh', args: ['-c', script] });
      const { run, log } = await runToEnd(agent.id);
      expect(run.status, log).toBe('succeeded');
      expect(log).toContain('ws=yes');
      for (const k of ['root', 'usr', 'home', 'readtmp', 'readhome', 'run']) expect(log, k).toContain(`${k}=no`);
      // Positive controls: the system is readable, its own /tmp writable.
      expect(log).toContain('readetc=yes');
      expect(log).toContain('tmp=yes');
      expect(log).toMatch(/CapPrm:0000000000000000 CapEff:0000000000000000 NoNewPrivs:1/);
      // Nothing was written outside the workspace on the host.
      const pe = run.contextSnapshot.paperclipEnvironment as Record<string, unknown>;
      expect(pe).toMatchObject({ driver: 'local', isolation: 'bubblewrap', network: 'none', workspaceOwned: true });
      expect(() => readFileSync(`/berth-bwrap-${tag}`)).toThrow();
      expect(() => readFileSync(join(homedir(), `berth-bwrap-${tag}`))).toThrow();
      // Its own pid namespace: the shell is not pid 1 (bwrap's init is) and has a small pid.
      expect(Number(/pid=(\d+)/.exec(log)?.[1])).toBeLessThan(10);
      void env;
    } finally {
      rmSync(inTmp, { force: true });
      rmSync(inHome, { force: true });
    }
  });
});

describe('bubblewrap runs: the network', () => {
  it('with network none it reaches Berth at PAPERCLIP_API_URL and no other listener of the host; un-isolated, the same agent reaches both', async () => {
    const args = ['--input-type=module', '-e', AGENT, String(portOf(loopbackOnly)), String(portOf(everywhere)), hostAddress];
    const { agent } = await sandboxAgent({ command: process.execPath, args });
    const { run, log } = await runToEnd(agent.id);
    expect(run.status, log).toBe('succeeded');
    expect(log).toContain(`http=200 status=running id=${run.id} loopback=blocked external=blocked`);
    // The run's namespace is gone with it: no process is left in it (its relay included).
    const ns = /ns=(net:\[\d+\])/.exec(log)?.[1];
    expect(ns, log).toBeDefined();
    await waitFor('the run\'s namespace to be empty', async () => processesInNetwork(ns!).length === 0, 5000);

    // The positive control: on this machine, un-isolated, both listeners answer.
    const plain = await t.services.environments.ensureLocalEnvironment(companyId);
    const onHost = await t.services.agents.create(companyId, { name: `host-${++n}`, adapterType: 'process', adapterConfig: { command: process.execPath, args } as never, defaultEnvironmentId: plain.id });
    companyOf.set(onHost.id, companyId);
    const control = await runToEnd(onHost.id);
    expect(control.run.status, control.log).toBe('succeeded');
    expect(control.log).toContain('loopback=open external=open');
  });

  it('each run with network none has a network namespace of its own, not the host\'s', async () => {
    const { agent } = await sandboxAgent({ command: 'sh', args: ['-c', 'echo "ns=$(readlink /proc/self/ns/net)"'] });
    const first = await runToEnd(agent.id);
    const second = await runToEnd(agent.id);
    const nsOf = (log: string) => /ns=(net:\[\d+\])/.exec(log)?.[1];
    expect(nsOf(first.log), first.log).toBeDefined();
    expect(nsOf(second.log), second.log).toBeDefined();
    expect(nsOf(first.log)).not.toBe(nsOf(second.log));
    const hostNs = readlinkSync('/proc/self/ns/net');
    expect([nsOf(first.log), nsOf(second.log)]).not.toContain(hostNs);
  });

  it('with network host it shares the host network (and still writes only its workspace)', async () => {
    const args = ['--input-type=module', '-e', AGENT, String(portOf(loopbackOnly)), String(portOf(everywhere)), hostAddress];
    const { agent } = await sandboxAgent({ command: process.execPath, args }, { network: 'host' });
    const { run, log } = await runToEnd(agent.id);
    expect(run.status, log).toBe('succeeded');
    expect(log).toContain(`http=200 status=running id=${run.id} loopback=open external=open`);
    expect((run.contextSnapshot.paperclipEnvironment as Record<string, unknown>).network).toBe('host');
  });
});

describe('bubblewrap runs: processes', () => {
  it('a background process the run started does not outlive it', async () => {
    const marker = `1000.${Date.now() % 100000}${n}`;
    const { agent } = await sandboxAgent({ command: 'sh', args: ['-c', `sleep ${marker} & echo started-bg`] });
    const { run, log } = await runToEnd(agent.id);
    expect(run.status, log).toBe('succeeded');
    expect(log).toContain('started-bg');
    await waitFor('the background sleep to be gone', async () => sleepers(marker).length === 0, 5000);
  });

  it('a timeout and a cancel each end the run with every process it started gone', async () => {
    const m1 = `600.${Date.now() % 100000}1`;
    const { env, agent, companyId } = await sandboxAgent({ command: 'sh', args: ['-c', `sleep ${m1} & echo started; sleep ${m1}`], timeoutSec: 1, graceSec: 1 });
    const { run, log } = await runToEnd(agent.id);
    expect(run.status, log).toBe('timed_out');
    await waitFor('the timed-out run\'s processes to be gone', async () => sleepers(m1).length === 0, 5000);

    const m2 = `600.${Date.now() % 100000}2`;
    const sleeper = await t.services.agents.create(companyId, { name: `sleeper-${++n}`, adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', `sleep ${m2} & echo started; sleep ${m2}`] } as never, defaultEnvironmentId: env.id });
    const queued = await t.services.runs.invoke(companyId, sleeper.id, { source: 'on_demand' });
    runtime.poke();
    await waitFor('the run to start', async () => (await logOf(queued.id, companyId)).includes('started'), 30_000);
    expect(sleepers(m2).length).toBe(2);
    await t.services.runs.cancel(companyId, queued.id);
    runtime.poke();
    const cancelled = await waitFor('the run to end', async () => {
      const r = await t.services.runs.get(companyId, queued.id);
      return r.finishedAt ? r : null;
    }, 30_000);
    expect(cancelled.status).toBe('cancelled');
    await waitFor('the cancelled run\'s processes to be gone', async () => sleepers(m2).length === 0, 5000);
  });

  it("the environment's and agent's secret values reach the process only: no command line on this host has them", async () => {
    const envSecret = `env-${randomBytes(8).toString('hex')}`;
    const agentSecret = `agent-${randomBytes(8).toString('hex')}`;
    const { agent, companyId } = await sandboxAgent({ command: 'sh', args: ['-c', 'echo "seen $ENV_SECRET $AGENT_SECRET"; sleep 3'], env: { AGENT_SECRET: agentSecret } }, {}, { envVars: { ENV_SECRET: envSecret } });
    const queued = await t.services.runs.invoke(companyId, agent.id, { source: 'on_demand' });
    runtime.poke();
    await waitFor('the process to run', async () => (await logOf(queued.id, companyId)).includes(`seen ${envSecret} ${agentSecret}`), 30_000);
    // bwrap, its init, the holder, the agent, the relay, Berth: none has either secret in its command line.
    expect(processesWith(envSecret)).toEqual([]);
    expect(processesWith(agentSecret)).toEqual([]);
    const run = await waitFor('the run to end', async () => {
      const r = await t.services.runs.get(companyId, queued.id);
      return r.finishedAt ? r : null;
    }, 30_000);
    expect(run.status).toBe('succeeded');
  });
});

describe('bubblewrap runs: where bwrap is missing', () => {
  it('a run fails with isolation_unavailable and the probe says why', async () => {
    const before = process.env.BERTH_BWRAP;
    process.env.BERTH_BWRAP = join(root, 'no-such-bwrap');
    try {
      const { env, agent, companyId } = await sandboxAgent({ command: 'true', args: [] });
      const { run } = await runToEnd(agent.id);
      expect(run.status).toBe('failed');
      expect(run.errorCode).toBe('isolation_unavailable');
      expect(run.error).toMatch(/bubblewrap is not installed: no ".*no-such-bwrap" there/);
      const full = await t.services.environments.getWithSecrets(companyId, env.id);
      const probe = await local.probe(full);
      expect(probe.ok).toBe(false);
      expect(probe.error).toMatch(/bubblewrap is not installed/);
      expect(probe.details.isolation).toMatchObject({ kind: 'bubblewrap', available: false, errorCode: 'isolation_unavailable' });
    } finally {
      if (before === undefined) delete process.env.BERTH_BWRAP;
      else process.env.BERTH_BWRAP = before;
    }
    // With bwrap back the same driver probes fine (a failure is never remembered).
    const { env, companyId } = await sandboxAgent({ command: 'true', args: [] });
    const probe = await local.probe(await t.services.environments.getWithSecrets(companyId, env.id));
    expect(probe.ok, probe.error).toBe(true);
    expect(probe.details.isolation).toMatchObject({ kind: 'bubblewrap', bwrap: 'bwrap', network: 'none' });
  });
});

describe('bubblewrap runs: where namespaces are not allowed', () => {
  it('a bwrap that cannot make its namespaces fails the run with isolation_unavailable, with bwrap\'s own words', async () => {
    // A stand-in for bwrap on a host without user namespaces: it answers --version, then refuses as bwrap does there.
    const fake = join(root, 'bwrap-no-userns');
    writeFileSync(fake, '#!/bin/sh\n[ "$1" = --version ] && { echo "bubblewrap 0.8.0"; exit 0; }\necho "bwrap: No permissions to create new namespace, likely because the kernel does not allow non-privileged user namespaces." >&2\nexit 1\n', { mode: 0o755 });
    const before = process.env.BERTH_BWRAP;
    process.env.BERTH_BWRAP = fake;
    try {
      const { env, agent, companyId } = await sandboxAgent({ command: 'true', args: [] });
      const { run } = await runToEnd(agent.id);
      expect(run.status).toBe('failed');
      expect(run.errorCode).toBe('isolation_unavailable');
      expect(run.error).toMatch(/cannot create a sandbox here: bwrap: No permissions to create new namespace.*user namespaces/);
      const probe = await local.probe(await t.services.environments.getWithSecrets(companyId, env.id));
      expect(probe.ok).toBe(false);
      expect(probe.error).toMatch(/No permissions to create new namespace/);
    } finally {
      if (before === undefined) delete process.env.BERTH_BWRAP;
      else process.env.BERTH_BWRAP = before;
    }
  });

  it("a company's Local environment becomes sandboxed by a config update, and back", async () => {
    const companyId = (await t.services.companies.create({ name: `Local Co ${++n}` })).id;
    const env = await t.services.environments.ensureLocalEnvironment(companyId);
    const agent = await t.services.agents.create(companyId, { name: `ns-${++n}`, adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', 'echo "ns=$(readlink /proc/self/ns/net)"'] } as never, defaultEnvironmentId: env.id });
    companyOf.set(agent.id, companyId);
    const hostNs = readlinkSync('/proc/self/ns/net');
    const plain = await runToEnd(agent.id);
    expect(plain.log).toContain(`ns=${hostNs}`);
    await t.services.environments.update(companyId, env.id, { config: { isolation: 'bubblewrap' } } as never);
    const boxed = await runToEnd(agent.id);
    expect(boxed.run.status, boxed.log).toBe('succeeded');
    expect(boxed.log).toMatch(/ns=net:\[\d+\]/);
    expect(boxed.log).not.toContain(`ns=${hostNs}`);
    await t.services.environments.update(companyId, env.id, { config: {} } as never);
    expect((await runToEnd(agent.id)).log).toContain(`ns=${hostNs}`);
  });
});

describe('bubblewrap config', () => {
  it.each([
    [{ isolation: 'docker' }, 'config.isolation'],
    [{ network: 'none' }, 'config.network'],
    [{ isolation: 'bubblewrap', network: 'bridge' }, 'config.network'],
    [{ isolation: 'bubblewrap', writablePaths: ['relative/dir'] }, 'config.writablePaths.0'],
    [{ isolation: 'bubblewrap', readOnlyPaths: ['/a/../etc'] }, 'config.readOnlyPaths.0'],
    [{ isolation: 'bubblewrap', hiddenPaths: ['/'] }, 'config.hiddenPaths.0'],
    [{ isolation: 'bubblewrap', nope: 1 }, 'config'],
  ])('%j is refused, naming %s', async (config, field) => {
    const err = await t.services.environments.create(companyId, { name: `bad-${++n}`, driver: 'local', config } as never).then(
      () => null,
      (e: unknown) => e as Error & { details?: unknown },
    );
    expect(err, 'created').not.toBeNull();
    expect(JSON.stringify({ m: err!.message, d: err!.details })).toContain(field);
  });
});
