// The SSH driver against a real (private) sshd, without a database: probe and its
// failure steps, the connection pool, workspaces, and remote processes.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeEnvironment, sshDriver, type SshDriver } from '../../src/drivers/ssh/driver.js';
import { poolKey, type SshTarget } from '../../src/drivers/ssh/pool.js';
import type { DriverEnvironment } from '../../src/drivers/contract.js';
import type { Lease } from '../../src/domain/types.js';
import { freePort, startTestSshd, type TestSshd } from '../support/sshd.js';
import { isAlive, waitFor } from '../support/wait.js';

let sshd: TestSshd;
let drv: SshDriver;
const root = mkdtempSync(join(tmpdir(), 'berth-ssh-drv-'));
let n = 0;

beforeAll(async () => {
  sshd = await startTestSshd();
  drv = sshDriver({ idleMs: 60_000 });
});
afterAll(async () => {
  drv?.close();
  await sshd?.stop();
  rmSync(root, { recursive: true, force: true });
});

function env(config: Record<string, unknown> = {}): DriverEnvironment {
  const now = new Date();
  return {
    id: `00000000-0000-4000-8000-${String(++n).padStart(12, '0')}`,
    companyId: '00000000-0000-4000-8000-000000000000',
    name: `ssh-${n}`,
    description: null,
    driver: 'ssh',
    status: 'active',
    config: {},
    envVars: {},
    metadata: {},
    capacity: null,
    lastProbe: null,
    createdAt: now,
    updatedAt: now,
    secretConfig: {
      host: sshd.host,
      port: sshd.port,
      username: sshd.username,
      privateKey: sshd.privateKey,
      knownHosts: sshd.knownHosts,
      strictHostKeyChecking: true,
      remoteWorkspacePath: join(root, 'ws'),
      ...config,
    },
  };
}
/** A lease as the server recorded it: `driverState` is what prepareWorkspace returned (the caller's metadata is never read). */
const lease = (id: string, driverState: Record<string, unknown> | null = null, metadata: Record<string, unknown> = {}) =>
  ({ id, metadata, driver: 'ssh', driverState }) as unknown as Lease;

async function run(e: DriverEnvironment, command: string, args: string[], envVars: Record<string, string> = {}, cwd = root) {
  let stdout = '';
  let stderr = '';
  const p = drv.startProcess(e, { command, args, cwd, env: envVars }, (s, t) => (s === 'stdout' ? (stdout += t) : (stderr += t)));
  const pid = await p.spawned;
  const exit = await p.exited;
  return { pid, exit, stdout, stderr };
}

describe('probe', () => {
  it('succeeds with the round trip, host, port, user, system and host key fingerprint', async () => {
    const r = await drv.probe(env());
    expect(r.ok, r.error).toBe(true);
    expect(r.latencyMs).toBeGreaterThan(0);
    expect(r.details).toMatchObject({ host: '127.0.0.1', port: sshd.port, username: 'root', hostKeyFingerprint: sshd.hostKeyFingerprint, hostKeyKnown: true });
    expect(String(r.details.system)).toMatch(/^Linux \S+ \S+$/);
  });

  const failures: Array<[string, () => Promise<Record<string, unknown>>, RegExp]> = [
    ['resolve', async () => ({ host: 'no-such-host.invalid' }), /cannot resolve no-such-host\.invalid/],
    ['connect', async () => ({ port: await freePort() }), /cannot connect to 127\.0\.0\.1:\d+: ECONNREFUSED/],
    ['host_key', async () => ({ knownHosts: sshd.wrongKnownHosts }), /host key verification failed for 127\.0\.0\.1:\d+: host key of 127\.0\.0\.1:\d+ has changed/],
    ['auth', async () => ({ privateKey: sshd.unauthorizedPrivateKey }), /authentication as root@127\.0\.0\.1:\d+ failed: the server did not accept the private key/],
    ['command', async () => ({ privateKey: sshd.forcedCommandPrivateKey }), /probe command on root@127\.0\.0\.1:\d+ failed \(exit 7\): forced/],
  ];
  for (const [step, cfg, message] of failures) {
    it(`fails at step ${step} with a clear error`, async () => {
      const r = await drv.probe(env(await cfg()));
      expect(r.ok).toBe(false);
      expect(r.details.step).toBe(step);
      expect(r.error).toMatch(message);
      expect(r.error).not.toContain('PRIVATE KEY');
    });
  }

  it('an unknown host key is refused when strict, naming host:port and the SHA256 fingerprint, and accepted when not', async () => {
    const strict = await drv.probe(env({ knownHosts: 'elsewhere ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl' }));
    expect(strict).toMatchObject({ ok: false, details: { step: 'host_key' } });
    expect(strict.error).toContain(`127.0.0.1:${sshd.port}`);
    expect(strict.error).toContain(sshd.hostKeyFingerprint);
    const lax = await drv.probe(env({ knownHosts: undefined, strictHostKeyChecking: false }));
    expect(lax).toMatchObject({ ok: true, details: { hostKeyKnown: false, hostKeyFingerprint: sshd.hostKeyFingerprint } });
  });
});

describe('connection pool', () => {
  // Connections other tests ended may still be closing on the server side: count from a settled state.
  beforeEach(async () => {
    await waitFor('earlier connections to close', async () => sshd.connectionPids().length === drv.pool.size(), 5000);
  });

  it('reuses one connection per environment across runs, and reconnects after it drops', async () => {
    const pool = sshDriver({ idleMs: 60_000 });
    try {
      const e = env();
      const before = sshd.connectionPids().length;
      for (let i = 0; i < 3; i++) {
        const p = pool.startProcess(e, { command: 'true', args: [], cwd: root, env: {} }, () => {});
        expect((await p.exited).exitCode).toBe(0);
      }
      expect(pool.pool.size()).toBe(1);
      expect(sshd.connectionPids().length - before).toBe(1); // three runs, one connection
      // Another environment (or another config of this one) gets its own connection.
      const p2 = pool.startProcess(env(), { command: 'true', args: [], cwd: root, env: {} }, () => {});
      await p2.exited;
      expect(pool.pool.size()).toBe(2);
      pool.pool.closeAll();
      await waitFor('the pooled connections to close', async () => pool.pool.size() === 0 && sshd.connectionPids().length === before, 5000);
      const p = pool.startProcess(e, { command: 'true', args: [], cwd: root, env: {} }, () => {});
      expect((await p.exited).exitCode).toBe(0);
      expect(pool.pool.size()).toBe(1);
    } finally {
      pool.close();
    }
  });

  it('a pooled connection that died unnoticed is replaced: the run goes on a fresh one', async () => {
    const pool = sshDriver({ idleMs: 60_000 });
    try {
      const e = env();
      await pool.startProcess(e, { command: 'true', args: [], cwd: root, env: {} }, () => {}).exited;
      const cfg = e.secretConfig as unknown as SshTarget;
      const b = await pool.pool.borrow(poolKey(e.id, cfg), cfg);
      b.release();
      // It dies just as a channel is asked of it, before any 'close' event is handled.
      const sock = (b.conn as unknown as { sock: { end(): void } }).sock;
      let refused = 0;
      b.conn.client.exec = (() => {
        refused++;
        sock.end();
        throw new Error('Not connected');
      }) as unknown as typeof b.conn.client.exec;
      const r = await pool.startProcess(e, { command: 'sh', args: ['-c', 'echo fresh'], cwd: root, env: {} }, () => {}).exited;
      expect(r).toEqual({ exitCode: 0, signal: null });
      expect(refused).toBe(1); // tried once on the dead one, then ran on a fresh one
      // A half-closed connection is not lent again.
      const again = await pool.pool.borrow(poolKey(e.id, cfg), cfg);
      expect(again.conn).not.toBe(b.conn);
      again.release();
      expect(pool.pool.size()).toBe(1);
    } finally {
      pool.close();
    }
  });

  it('opens another connection when one carries its maximum of channels at once', async () => {
    const pool = sshDriver({ maxChannelsPerConnection: 2 });
    try {
      const e = env();
      const procs = Array.from({ length: 5 }, () => pool.startProcess(e, { command: 'sleep', args: ['0.5'], cwd: root, env: {} }, () => {}));
      const exits = await Promise.all(procs.map((p) => p.exited));
      expect(exits.map((x) => x.exitCode)).toEqual([0, 0, 0, 0, 0]);
      expect(pool.pool.size()).toBe(3);
    } finally {
      pool.close();
    }
  });

  it('closes an idle connection after idleMs', async () => {
    const pool = sshDriver({ idleMs: 200 });
    try {
      const p = pool.startProcess(env(), { command: 'true', args: [], cwd: root, env: {} }, () => {});
      await p.exited;
      expect(pool.pool.size()).toBe(1);
      const open = sshd.connectionPids().length;
      await waitFor('the idle connection to close', async () => pool.pool.size() === 0 && sshd.connectionPids().length === open - 1, 5000);
    } finally {
      pool.close();
    }
  });

  it('unpooled: every use is a new connection, closed after it', async () => {
    const fresh = sshDriver({ pooled: false });
    const before = sshd.connectionPids().length;
    for (let i = 0; i < 2; i++) {
      const p = fresh.startProcess(env(), { command: 'true', args: [], cwd: root, env: {} }, () => {});
      expect((await p.exited).exitCode).toBe(0);
    }
    expect(fresh.pool.size()).toBe(0);
    await waitFor('its connections to close', async () => sshd.connectionPids().length === before, 5000);
  });
});

describe('workspaces', () => {
  it('prepareWorkspace makes <remoteWorkspacePath>/<lease id>; cleanup removes exactly it', async () => {
    const e = env();
    const id = '11111111-1111-4111-8111-111111111111';
    const ws = await drv.prepareWorkspace(e, lease(id), {});
    expect(ws.cwd).toBe(join(root, 'ws', id));
    expect(ws.details).toEqual({
      host: '127.0.0.1',
      port: sshd.port,
      username: 'root',
      remoteWorkspacePath: join(root, 'ws'),
      cwd: ws.cwd,
      workspaceOwned: true,
      providerLeaseId: `ssh://root@127.0.0.1:${sshd.port}${ws.cwd}`,
    });
    expect(existsSync(ws.cwd)).toBe(true);
    await drv.cleanup(e, lease(id, ws.details));
    expect(existsSync(ws.cwd)).toBe(false);
    expect(existsSync(join(root, 'ws'))).toBe(true);
  });

  it('cleanup refuses a path that is not <remoteWorkspacePath>/<lease id>, and leaves an agent-owned cwd alone', async () => {
    const e = env();
    const id = '22222222-2222-4222-8222-222222222222';
    const ws = await drv.prepareWorkspace(e, lease(id), {});
    await expect(drv.cleanup(e, lease(id, { ...ws.details, cwd: join(root, 'ws') }))).rejects.toThrow(/refusing to remove/);
    await expect(drv.cleanup(e, lease(id, { ...ws.details, cwd: `${ws.cwd}/../..` }))).rejects.toThrow(/refusing to remove/);
    const own = await drv.prepareWorkspace(e, lease(id), { cwd: root });
    expect(own.details).toMatchObject({ cwd: root, workspaceOwned: false });
    await drv.cleanup(e, lease(id, own.details));
    expect(existsSync(ws.cwd)).toBe(true);
    expect(existsSync(root)).toBe(true);
    // What a caller wrote into the lease's metadata is never read: with no driver state, nothing goes.
    expect(await drv.cleanup(e, lease(id, null, { ...ws.details }))).toMatchObject({ nothing: expect.any(String) });
    expect(existsSync(ws.cwd)).toBe(true);
  });

  it('prepareWorkspace fails with a clear error when it cannot connect', async () => {
    const port = await freePort();
    const err = (await drv.prepareWorkspace(env({ port }), lease('33333333-3333-4333-8333-333333333333'), {}).then(
      () => null,
      (e: unknown) => e,
    )) as Error & { code?: string };
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toMatch(new RegExp(`cannot prepare the workspace .* on root@127\\.0\\.0\\.1:${port}: cannot connect to 127\\.0\\.0\\.1:${port}: ECONNREFUSED`));
    expect(err.code).toBe('ssh_connect');
  });
});

describe('remote processes', () => {
  it('runs in cwd with the environment from stdin: quotes, newlines and $ survive', async () => {
    const tricky = { QUOTES: `it's "quoted" \\ $HOME \`x\``, LINES: 'one\ntwo\n\nfour\n', EMPTY: '', UNI: 'ünï©ødé' };
    const r = await run(env(), 'sh', ['-c', 'pwd; printf "%s|" "$QUOTES" "$LINES" "$EMPTY" "$UNI"; echo err >&2; exit 5'], tricky, root);
    expect(r.exit).toEqual({ exitCode: 5, signal: null });
    expect(r.stdout).toBe(`${root}\n${tricky.QUOTES}|${tricky.LINES}||${tricky.UNI}|`);
    expect(r.stderr).toBe('err\n');
    expect(r.pid).toBeGreaterThan(1);
  });

  it('encodes the environment as a line count and export lines, refusing bad names', () => {
    expect(encodeEnvironment({})).toBe('0\n');
    expect(encodeEnvironment({ A: "x'y", B: 'l1\nl2' })).toBe(`3\nexport A='x'\\''y'\nexport B='l1\nl2'\n`);
    expect(() => encodeEnvironment({ 'BAD NAME': 'x' })).toThrow(/not valid/);
  });

  it('reports a missing command or cwd as a spawn error', async () => {
    const missing = await run(env(), '/no/such/binary', []);
    expect(missing.exit).toMatchObject({ exitCode: null, spawnError: '/no/such/binary: command not found' });
    expect(missing.pid).toBeNull();
    const noDir = await run(env(), 'true', [], {}, '/no/such/dir');
    expect(noDir.exit.spawnError).toBe('cannot enter the working directory /no/such/dir');
  });

  it('kill signals the whole remote group; what ignores SIGTERM dies when the leader has gone', async () => {
    const pidFile = join(root, 'kill-gc');
    const e = env();
    const p = drv.startProcess(e, { command: 'sh', args: ['-c', `sh -c 'trap "" TERM; sleep 60' & echo $! > ${pidFile}; sleep 60`], cwd: root, env: {} }, () => {});
    const pid = await p.spawned;
    expect(pid).not.toBeNull();
    await waitFor('the grandchild', async () => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '');
    const grandchild = Number(readFileSync(pidFile, 'utf8'));
    expect(isAlive(grandchild)).toBe(true);
    p.kill('SIGTERM');
    const exit = await p.exited;
    expect(exit.exitCode === 143 || exit.signal === 'SIGTERM').toBe(true);
    await waitFor('the grandchild to die', async () => !isAlive(grandchild), 5000);
    expect(isAlive(pid!)).toBe(false);
  });

  it('a background grandchild does not outlive a run that finished', async () => {
    const pidFile = join(root, 'bg-gc');
    const started = performance.now();
    const r = await run(env(), 'sh', ['-c', `sleep 60 & echo $! > ${pidFile}; exit 0`]);
    expect(r.exit.exitCode).toBe(0);
    expect(performance.now() - started).toBeLessThan(3000);
    await waitFor('the grandchild to die', async () => !isAlive(Number(readFileSync(pidFile, 'utf8'))), 5000);
  });
});
