// Commands on a provisioned lease of an SSH environment: the workspace is made on the
// remote host, a command runs there through the driver (its exit code, its output, its
// timeout stopping the remote process group), files are refused as not supported by this
// driver, and release has the workspace destroyed by the resource GC.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SYSTEM_ACTOR } from '../../src/domain/types.js';
import { localDriver } from '../../src/drivers/local/driver.js';
import { sshDriver, type SshDriver } from '../../src/drivers/ssh/driver.js';
import { leaseWork, type LeaseWork } from '../../src/heartbeat/lease-work.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { startTestSshd, type TestSshd } from '../support/sshd.js';
import { waitFor } from '../support/wait.js';

process.env.BERTH_SECRET_KEY = randomBytes(32).toString('hex');

let t: TestDb;
let sshd: TestSshd;
let ssh: SshDriver;
let runtime: Runtime;
let work: LeaseWork;
let companyId: string;
let envId: string;
const runtimeErrors = collectRuntimeErrors();
const root = mkdtempSync(join(tmpdir(), 'berth-ssh-exec-'));

beforeAll(async () => {
  sshd = await startTestSshd();
  t = await openTestDb();
  ssh = sshDriver({ idleMs: 60_000 });
  const drivers = new Map([
    ['local', localDriver({ workspaceRoot: join(root, 'local') })],
    ['ssh', ssh],
  ]);
  companyId = (await t.services.companies.create({ name: 'SSH Exec Co' })).id;
  envId = (
    await t.services.environments.create(companyId, {
      name: 'ssh-exec',
      driver: 'ssh',
      config: { host: sshd.host, port: sshd.port, username: sshd.username, privateKey: sshd.privateKey, knownHosts: sshd.knownHosts, remoteWorkspacePath: join(root, 'remote') },
      envVars: { FROM_ENV: 'env-value' },
    })
  ).id;
  runtime = await startRuntime({ services: t.services, db: t.db, drivers, apiUrl: '', pollMs: 50, sweepMs: 200, heartbeatMs: 100, onError: runtimeErrors.onError });
  work = leaseWork({ services: t.services, drivers });
});
afterAll(async () => {
  await runtime?.stop({ graceMs: 0 });
  ssh?.close();
  await t?.close();
  await sshd?.stop();
  rmSync(root, { recursive: true, force: true });
});

describe('a provisioned SSH lease', () => {
  it('runs commands in its remote workspace, stops them at the timeout, and is destroyed after release', async () => {
    const { lease } = await work.acquireProvisioned(companyId, { environmentId: envId, ttlSeconds: 60 }, SYSTEM_ACTOR);
    const cwd = (lease.driverState as { cwd: string }).cwd;
    expect(cwd.startsWith(join(root, 'remote'))).toBe(true);
    expect(existsSync(cwd)).toBe(true);
    expect(lease.driver).toBe('ssh');

    const r = await work.exec(companyId, lease.id, { fence: lease.fence, command: ['sh', '-c', 'pwd; echo "$FROM_ENV $MINE"; echo e >&2; exit 6'], env: { MINE: 'mine' } }, SYSTEM_ACTOR);
    expect(r).toMatchObject({ exitCode: 6, timedOut: false, stderr: 'e\n' });
    expect(r.stdout).toBe(`${cwd}\nenv-value mine\n`);

    const started = Date.now();
    const slow = await work.exec(companyId, lease.id, { fence: lease.fence, command: ['sleep', '60'], timeoutSeconds: 1 }, SYSTEM_ACTOR);
    expect(slow.timedOut).toBe(true);
    expect(Date.now() - started).toBeLessThan(20_000);

    await expect(work.getFiles(companyId, lease.id, lease.fence, '', SYSTEM_ACTOR)).rejects.toMatchObject({ code: 'not_supported' });

    await t.services.leases.release(companyId, lease.id, { fence: lease.fence }, SYSTEM_ACTOR);
    await waitFor('the remote workspace to be destroyed', async () => (await t.services.resources.get(lease.resourceId!)).status === 'destroyed', 20_000);
    expect(existsSync(cwd)).toBe(false);
    expect((await t.services.leases.get(companyId, lease.id)).status).toBe('released');
  });
});
