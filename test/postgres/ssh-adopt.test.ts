// An SSH run outlives its server: the server is SIGKILLed while the remote process runs,
// and another server adopts the run from its execution record, watches it to its end
// (all of its output, once), and destroys its workspace. On PostgreSQL, with the killed
// server a process of its own and a real sshd.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { openDatabase, type Database } from '../../src/db/client.js';
import { sshDriver } from '../../src/drivers/ssh/driver.js';
import { startRuntime } from '../../src/heartbeat/runtime.js';
import { createServices, type Services } from '../../src/services/index.js';
import { createScratchDatabase } from '../support/db.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { startTestSshd, type TestSshd } from '../support/sshd.js';
import { waitFor } from '../support/wait.js';

const repo = join(import.meta.dirname, '../..');
const root = mkdtempSync(join(tmpdir(), 'berth-ssh-adopt-'));
const remoteRoot = join(root, 'remote');
let sshd: TestSshd;
let scratch: { url: string; drop: () => Promise<void> };
let database: Database;
let s: Services;
const runtimeErrors = collectRuntimeErrors();

beforeAll(async () => {
  sshd = await startTestSshd();
  scratch = await createScratchDatabase();
  database = await openDatabase({ databaseUrl: scratch.url, poolSize: 4 });
  s = createServices(database.db);
});
afterAll(async () => {
  await database?.close();
  await scratch?.drop();
  await sshd?.stop();
  rmSync(root, { recursive: true, force: true });
});

it('a server killed while its SSH run executes: another server adopts the run and finishes it with all of its output', async () => {
  const co = await s.companies.create({ name: 'Adopt Co' });
  const env = await s.environments.create(co.id, {
    name: 'remote',
    driver: 'ssh',
    config: { host: sshd.host, port: sshd.port, username: sshd.username, privateKey: sshd.privateKey, knownHosts: sshd.knownHosts, remoteWorkspacePath: remoteRoot },
  } as never);
  const agent = await s.agents.create(co.id, {
    name: 'long',
    adapterType: 'process',
    adapterConfig: { command: 'sh', args: ['-c', 'echo one; sleep 3; echo two'], timeoutSec: 60 } as never,
    defaultEnvironmentId: env.id,
  });
  const marker = join(root, 'started.marker');
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/support/phase-crash-server.ts'], {
    cwd: repo,
    env: { ...process.env, PHASE_DATABASE_URL: scratch.url, PHASE_WORKSPACE_ROOT: join(root, 'local'), PHASE_HOLD: 'started', PHASE_MARKER: marker },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d));
  child.stderr!.on('data', (d: Buffer) => (out += d));
  const exited = new Promise((r) => child.once('exit', r));
  try {
    const run = await s.runs.invoke(co.id, agent.id);
    await waitFor('the first server to start the remote process', async () => existsSync(marker) || (child.exitCode !== null && Promise.reject(new Error(out))), 60_000, 20);
    expect(readFileSync(marker, 'utf8')).toBe(run.id);
    child.kill('SIGKILL');
    await exited;

    const ssh = sshDriver();
    const b = await startRuntime({
      services: s,
      db: database.db,
      drivers: new Map([['ssh', ssh]]),
      apiUrl: 'http://127.0.0.1:9',
      pollMs: 50,
      sweepMs: 200,
      heartbeatMs: 200,
      staleSeconds: 2,
      onError: runtimeErrors.onError,
    });
    try {
      const done = await waitFor('the run to be finished by the second server', async () => {
        const r = await s.runs.get(co.id, run.id);
        return r.finishedAt ? r : null;
      }, 30_000, 100);
      expect(done, String(done.error)).toMatchObject({ status: 'succeeded', exitCode: 0, serverId: b.serverId });
      const log = await s.runs.readLog(co.id, run.id, { limit: 1000 });
      expect(log.filter((c) => c.stream === 'stdout').map((c) => c.chunk).join('')).toBe('one\ntwo\n');
      const lease = await s.leases.get(co.id, done.leaseId!);
      expect(lease).toMatchObject({ status: 'released', cleanupStatus: 'success' });
      expect(existsSync(join(remoteRoot, lease.resourceId!))).toBe(false);
    } finally {
      await b.stop({ graceMs: 0 });
      ssh.close();
    }
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
}, 120_000);
