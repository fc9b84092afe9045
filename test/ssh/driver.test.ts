// The SSH driver against a real (private) sshd, without a database: probe and its
// failure steps, the connection pool, resources (provision, destroy, list), and
// executions (exec, watch, signal) that outlive the driver that started them.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { encodeEnvironment, sshDriver, type SshDriver } from '../../src/drivers/ssh/driver.js';
import { poolKey, type SshTarget } from '../../src/drivers/ssh/pool.js';
import type { DriverEnvironment, ExecutionHandle, ProvisionedResource } from '../../src/drivers/contract.js';
import { freePort, startTestSshd, type TestSshd } from '../support/sshd.js';
import { isAlive, waitFor } from '../support/wait.js';

let sshd: TestSshd;
let drv: SshDriver;
const root = mkdtempSync(join(tmpdir(), 'berth-ssh-drv-'));
const ws = join(root, 'ws');
let n = 0;
const live = () => new AbortController().signal;

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
      remoteWorkspacePath: ws,
      ...config,
    },
  };
}

const provision = (e: DriverEnvironment, o: { cwd?: string; resourceId?: string; d?: SshDriver } = {}) =>
  (o.d ?? drv).provision(
    e,
    { resourceId: o.resourceId ?? randomUUID(), leaseId: randomUUID(), labels: { 'berth.company': e.companyId }, ...(o.cwd !== undefined ? { cwd: o.cwd } : {}) },
    live(),
  );

/** What an execution's ref holds (the test's sshd is on this machine, so its paths and pids are ours to look at). */
const refOf = (h: ExecutionHandle) => h.ref as { pgid: number; startTime: string; dir: string; spawnError?: string };

interface Ran {
  res: ProvisionedResource;
  handle: ExecutionHandle;
  exit: Awaited<ReturnType<SshDriver['watch']>>;
  stdout: string;
  stderr: string;
}

/** Provision, exec and watch to the end: one run's driver calls. */
async function run(e: DriverEnvironment, command: string, args: string[], o: { env?: Record<string, string>; cwd?: string; d?: SshDriver; deadlineSec?: number } = {}): Promise<Ran> {
  const d = o.d ?? drv;
  const res = await provision(e, { d });
  const handle = await d.exec(e, res, { command, args, cwd: o.cwd ?? res.cwd, env: o.env ?? {}, ...(o.deadlineSec ? { deadlineSec: o.deadlineSec } : {}) }, live());
  let stdout = '';
  let stderr = '';
  const exit = await d.watch(e, handle, (s, t) => {
    if (s === 'stdout') stdout += t;
    else stderr += t;
  });
  return { res, handle, exit, stdout, stderr };
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
    const d = sshDriver({ idleMs: 60_000 });
    try {
      const e = env();
      const before = sshd.connectionPids().length;
      for (let i = 0; i < 3; i++) expect((await run(e, 'true', [], { d })).exit.exitCode).toBe(0);
      expect(d.pool.size()).toBe(1);
      expect(sshd.connectionPids().length - before).toBe(1); // three runs, one connection
      // Another environment (or another config of this one) gets its own connection.
      await run(env(), 'true', [], { d });
      expect(d.pool.size()).toBe(2);
      d.pool.closeAll();
      await waitFor('the pooled connections to close', async () => d.pool.size() === 0 && sshd.connectionPids().length === before, 5000);
      expect((await run(e, 'true', [], { d })).exit.exitCode).toBe(0);
      expect(d.pool.size()).toBe(1);
    } finally {
      d.close();
    }
  });

  it('a pooled connection that died unnoticed is replaced: the run goes on a fresh one', async () => {
    const d = sshDriver({ idleMs: 60_000 });
    try {
      const e = env();
      await run(e, 'true', [], { d });
      const cfg = e.secretConfig as unknown as SshTarget;
      const b = await d.pool.borrow(poolKey(e.id, cfg), cfg);
      b.release();
      // It dies just as a channel is asked of it, before any 'close' event is handled.
      const sock = (b.conn as unknown as { sock: { end(): void } }).sock;
      let refused = 0;
      b.conn.client.exec = (() => {
        refused++;
        sock.end();
        throw new Error('Not connected');
      }) as unknown as typeof b.conn.client.exec;
      const r = await run(e, 'sh', ['-c', 'echo fresh'], { d });
      expect(r.exit).toEqual({ exitCode: 0, signal: null });
      expect(r.stdout).toBe('fresh\n');
      expect(refused).toBe(1); // tried once on the dead one, then ran on a fresh one
      // A half-closed connection is not lent again.
      const again = await d.pool.borrow(poolKey(e.id, cfg), cfg);
      expect(again.conn).not.toBe(b.conn);
      again.release();
      expect(d.pool.size()).toBe(1);
    } finally {
      d.close();
    }
  });

  it('opens another connection when one carries its maximum of channels at once', async () => {
    const d = sshDriver({ maxChannelsPerConnection: 2 });
    try {
      const e = env();
      const runs = await Promise.all(Array.from({ length: 5 }, () => run(e, 'sleep', ['0.5'], { d })));
      expect(runs.map((x) => x.exit.exitCode)).toEqual([0, 0, 0, 0, 0]);
      expect(d.pool.size()).toBe(3); // five watches at once, two channels each connection
    } finally {
      d.close();
    }
  });

  it('closes an idle connection after idleMs', async () => {
    const d = sshDriver({ idleMs: 200 });
    try {
      await run(env(), 'true', [], { d });
      expect(d.pool.size()).toBe(1);
      const open = sshd.connectionPids().length;
      await waitFor('the idle connection to close', async () => d.pool.size() === 0 && sshd.connectionPids().length === open - 1, 5000);
    } finally {
      d.close();
    }
  });

  it('unpooled: every use is a new connection, closed after it', async () => {
    const fresh = sshDriver({ pooled: false });
    const before = sshd.connectionPids().length;
    for (let i = 0; i < 2; i++) expect((await run(env(), 'true', [], { d: fresh })).exit.exitCode).toBe(0);
    expect(fresh.pool.size()).toBe(0);
    await waitFor('its connections to close', async () => sshd.connectionPids().length === before, 5000);
  });
});

describe('resources', () => {
  it('provision makes <remoteWorkspacePath>/<resource id> with its labels, idempotently; destroy removes exactly it', async () => {
    const e = env();
    const id = randomUUID();
    const lease = randomUUID();
    const req = { resourceId: id, leaseId: lease, labels: { 'berth.company': e.companyId } };
    const res = await drv.provision(e, req, live());
    const dir = join(ws, id);
    expect(res).toEqual({
      resourceId: id,
      providerId: dir,
      state: { host: '127.0.0.1', port: sshd.port, username: 'root', dir },
      cwd: dir,
      details: { host: '127.0.0.1', port: sshd.port, username: 'root', remoteWorkspacePath: ws, cwd: dir, workspaceOwned: true, providerLeaseId: `ssh://root@127.0.0.1:${sshd.port}${dir}` },
    });
    expect(JSON.parse(readFileSync(join(dir, '.berth-resource.json'), 'utf8'))).toEqual({
      'berth.company': e.companyId,
      'berth.resource': id,
      'berth.environment': e.id,
      'berth.lease': lease,
    });
    writeFileSync(join(dir, 'work'), 'kept');
    expect(await drv.provision(e, req, live())).toEqual(res); // the same resource, what was in it kept
    expect(readFileSync(join(dir, 'work'), 'utf8')).toBe('kept');
    expect(await drv.destroy(e, res, live())).toEqual({ removed: `root@127.0.0.1:${sshd.port}:${dir}` });
    expect(existsSync(dir)).toBe(false);
    expect(existsSync(ws)).toBe(true);
  });

  it('destroy is idempotent, and refuses a resource id that is not a UUID or a stored directory that is not its own', async () => {
    const e = env();
    const res = await provision(e);
    // Only ever <remoteWorkspacePath>/<resource id>: a stored state or provider id naming anything else is refused.
    await expect(drv.destroy(e, { ...res, state: { ...res.state, dir: ws } }, live())).rejects.toThrow(/refusing/);
    await expect(drv.destroy(e, { ...res, providerId: `${res.providerId}/../..` }, live())).rejects.toThrow(/refusing/);
    for (const resourceId of ['..', '../ws', '', 'not-a-uuid', `${randomUUID()}/..`]) {
      await expect(drv.destroy(e, { resourceId, providerId: null, state: {} }, live())).rejects.toThrow(/not a resource id/);
      await expect(drv.provision(e, { resourceId, leaseId: null, labels: {} }, live())).rejects.toThrow(/not a resource id/);
    }
    await expect(drv.destroy(e, { ...res, state: { ...res.state, port: 1 } }, live())).rejects.toThrow(/now points at/);
    expect(existsSync(res.cwd)).toBe(true);
    expect(await drv.destroy(e, res, live())).toMatchObject({ removed: expect.any(String) });
    expect(await drv.destroy(e, res, live())).toEqual({ nothing: `no directory ${res.cwd} on root@127.0.0.1:${sshd.port}` });
    expect(existsSync(ws)).toBe(true);
  });

  it("an agent's own cwd is checked and used, never removed; the run's files stay under remoteWorkspacePath", async () => {
    const e = env();
    const own = join(root, 'agent-own');
    await expect(provision(e, { cwd: own })).rejects.toThrow(/cannot enter the working directory/);
    rmSync(own, { recursive: true, force: true });
    const { mkdirSync } = await import('node:fs');
    mkdirSync(own);
    const res = await provision(e, { cwd: own });
    expect(res.cwd).toBe(own);
    expect(res.details).toMatchObject({ cwd: own, workspaceOwned: false });
    const h = await drv.exec(e, res, { command: 'sh', args: ['-c', 'pwd; touch mine'], cwd: res.cwd, env: {} }, live());
    let out = '';
    expect(await drv.watch(e, h, (_s, t) => void (out += t))).toEqual({ exitCode: 0, signal: null });
    expect(out).toBe(`${own}\n`);
    expect(readdirSync(own)).toEqual(['mine']);
    expect(refOf(h).dir.startsWith(`${join(ws, res.resourceId)}/.berth/exec-`)).toBe(true);
    await drv.destroy(e, res, live());
    expect(existsSync(join(ws, res.resourceId))).toBe(false);
    expect(readdirSync(own)).toEqual(['mine']);
  });

  it('provision fails with a clear error when it cannot connect', async () => {
    const port = await freePort();
    const err = (await provision(env({ port })).then(
      () => null,
      (e: unknown) => e,
    )) as Error & { code?: string };
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toMatch(new RegExp(`cannot provision the workspace .* on root@127\\.0\\.0\\.1:${port}: cannot connect to 127\\.0\\.0\\.1:${port}: ECONNREFUSED`));
    expect(err.code).toBe('ssh_connect');
  });

  it("list gives the environment's resources with their labels, not another environment's under the same path", async () => {
    const mine = env();
    const other = env();
    const a = await provision(mine);
    const b = await provision(other);
    const listed = [];
    for await (const r of drv.list!(mine, live())) listed.push(r);
    const ids = listed.map((r) => r.labels['berth.resource']);
    expect(ids).toContain(a.resourceId);
    expect(ids).not.toContain(b.resourceId);
    expect(listed.every((r) => r.labels['berth.environment'] === mine.id)).toBe(true);
    const one = listed.find((r) => r.providerId === a.providerId)!;
    expect(one.labels).toMatchObject({ 'berth.resource': a.resourceId, 'berth.environment': mine.id, 'berth.company': mine.companyId });
    expect(one.createdAt).toBeInstanceOf(Date);
    expect(Math.abs(one.createdAt!.getTime() - Date.now())).toBeLessThan(60_000);
    await drv.destroy(mine, a, live());
    const after = [];
    for await (const r of drv.list!(mine, live())) after.push(r.providerId);
    expect(after).not.toContain(a.providerId);
    // No root at all yet: nothing, not an error.
    const none = [];
    for await (const r of drv.list!(env({ remoteWorkspacePath: join(root, 'never-made') }), live())) none.push(r);
    expect(none).toEqual([]);
  });
});

describe('executions', () => {
  it('runs in cwd with the environment from stdin: quotes, newlines and $ survive', async () => {
    const tricky = { QUOTES: `it's "quoted" \\ $HOME \`x\``, LINES: 'one\ntwo\n\nfour\n', EMPTY: '', UNI: 'ünï©ødé' };
    const r = await run(env(), 'sh', ['-c', 'pwd; printf "%s|" "$QUOTES" "$LINES" "$EMPTY" "$UNI"; echo err >&2; exit 5'], { env: tricky, cwd: root });
    expect(r.exit).toEqual({ exitCode: 5, signal: null });
    expect(r.stdout).toBe(`${root}\n${tricky.QUOTES}|${tricky.LINES}||${tricky.UNI}|`);
    expect(r.stderr).toBe('err\n');
    expect(refOf(r.handle).pgid).toBeGreaterThan(1);
    expect(r.handle.host).toBe(`root@127.0.0.1:${sshd.port}`);
  });

  it("the environment's values are never on a remote command line", async () => {
    const e = env();
    const res = await provision(e);
    const secret = `s3cret-${randomUUID()}`;
    const h = await drv.exec(e, res, { command: 'sleep', args: ['30'], cwd: res.cwd, env: { TOKEN: secret } }, live());
    const lines: string[] = [];
    for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
      try {
        lines.push(readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
      } catch {
        /* gone */
      }
    }
    expect(lines.some((l) => l.includes(`${refOf(h).dir}`))).toBe(true); // the runner's line is there...
    expect(lines.filter((l) => l.includes(secret))).toEqual([]); // ...and no value
    await drv.signal(e, h, 'KILL');
    expect((await drv.watch(e, h, () => {})).signal).toBe('SIGKILL');
  });

  it('encodes the environment as a line count and export lines, refusing bad names', () => {
    expect(encodeEnvironment({})).toBe('0\n');
    expect(encodeEnvironment({ A: "x'y", B: 'l1\nl2' })).toBe(`3\nexport A='x'\\''y'\nexport B='l1\nl2'\n`);
    expect(() => encodeEnvironment({ 'BAD NAME': 'x' })).toThrow(/not valid/);
  });

  it('reports a missing command or cwd as a spawn error', async () => {
    const missing = await run(env(), '/no/such/binary', []);
    expect(missing.exit).toEqual({ exitCode: null, signal: null, spawnError: '/no/such/binary: command not found' });
    expect(refOf(missing.handle).pgid).toBeUndefined();
    const noDir = await run(env(), 'true', [], { cwd: '/no/such/dir' });
    expect(noDir.exit.spawnError).toBe('cannot enter the working directory /no/such/dir');
    // The command is looked up with the run's own PATH.
    const onPath = await run(env(), 'ls', [], { env: { PATH: '/nowhere' } });
    expect(onPath.exit.spawnError).toBe('ls: command not found');
  });

  it('signal TERM reaches the whole remote group; what ignores it dies when the command has ended', async () => {
    const pidFile = join(root, 'term-gc');
    const e = env();
    const res = await provision(e);
    const h = await drv.exec(e, res, { command: 'sh', args: ['-c', `sh -c 'trap "" TERM; sleep 60' & echo $! > ${pidFile}; sleep 60`], cwd: root, env: {} }, live());
    const exited = drv.watch(e, h, () => {});
    await waitFor('the grandchild', async () => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '');
    const grandchild = Number(readFileSync(pidFile, 'utf8'));
    expect(isAlive(grandchild)).toBe(true);
    await drv.signal(e, h, 'TERM');
    expect(await exited).toEqual({ exitCode: null, signal: 'SIGTERM' });
    expect(isAlive(grandchild)).toBe(false); // killed before the exit was recorded
    expect(isAlive(refOf(h).pgid)).toBe(false);
    await drv.signal(e, h, 'KILL'); // an ended execution: no error
  });

  it('signal KILL ends the whole group, a setsid grandchild included', async () => {
    const pidFile = join(root, 'kill-gc');
    const e = env();
    const res = await provision(e);
    const h = await drv.exec(e, res, { command: 'sh', args: ['-c', `setsid sleep 60 & echo $! > ${pidFile}; sleep 60`], cwd: root, env: {} }, live());
    await waitFor('the grandchild', async () => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '');
    const grandchild = Number(readFileSync(pidFile, 'utf8'));
    expect(isAlive(grandchild)).toBe(true);
    const groupOf = (pid: number) => Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[2]);
    await waitFor('the grandchild to leave the group', async () => groupOf(grandchild) === grandchild); // setsid, once it has run
    await drv.signal(e, h, 'KILL');
    expect(await drv.watch(e, h, () => {})).toEqual({ exitCode: null, signal: 'SIGKILL' });
    expect(isAlive(grandchild)).toBe(false);
  });

  it('signal leaves alone a process that merely reuses the pid: the start time must match', async () => {
    const e = env();
    const r = await run(e, 'true', []);
    const victim = (await import('node:child_process')).spawn('sleep', ['30'], { detached: true, stdio: 'ignore' });
    try {
      // A handle naming a live process with another start time: as if the runner's pid had been reused.
      const forged = { ...r.handle, ref: { ...r.handle.ref, pgid: victim.pid! } };
      await drv.signal(e, forged, 'KILL');
      expect(isAlive(victim.pid!)).toBe(true);
    } finally {
      victim.kill('SIGKILL');
    }
  });

  it('a background grandchild does not outlive a run that finished', async () => {
    const pidFile = join(root, 'bg-gc');
    const r = await run(env(), 'sh', ['-c', `sleep 60 & echo $! > ${pidFile}; exit 0`]);
    expect(r.exit).toEqual({ exitCode: 0, signal: null });
    expect(isAlive(Number(readFileSync(pidFile, 'utf8')))).toBe(false); // killed before the exit file was written
  });

  it('the remote deadline kills the group when nobody watches', async () => {
    const pidFile = join(root, 'deadline-gc');
    const e = env();
    const res = await provision(e);
    const h = await drv.exec(e, res, { command: 'sh', args: ['-c', `sleep 60 & echo $! > ${pidFile}; sleep 60`], cwd: root, env: {}, deadlineSec: 1 }, live());
    // Nobody watches: the host alone ends it.
    await waitFor('the remote deadline to end the run', async () => existsSync(join(refOf(h).dir, 'exit')), 15_000);
    // The exit file is written as the group is signalled: its processes are gone a moment later.
    await waitFor('the background sleep to be killed', async () => !isAlive(Number(readFileSync(pidFile, 'utf8'))), 5_000);
    await waitFor('the group to be gone', async () => !isAlive(refOf(h).pgid), 5_000);
    expect(await drv.watch(e, h, () => {})).toMatchObject({ exitCode: null, signal: 'SIGTERM', errorCode: 'timeout', error: expect.stringMatching(/deadline of 1 s/) });
  });

  it('destroy kills what still runs in the resource before removing it', async () => {
    const e = env();
    const res = await provision(e);
    const h = await drv.exec(e, res, { command: 'sleep', args: ['60'], cwd: res.cwd, env: {} }, live());
    expect(isAlive(refOf(h).pgid)).toBe(true);
    await drv.destroy(e, res, live());
    await waitFor('the runner to die', async () => !isAlive(refOf(h).pgid), 5000);
    expect(existsSync(res.cwd)).toBe(false);
    expect(await drv.watch(e, h, () => {})).toMatchObject({ exitCode: null, errorCode: 'process_lost' });
  });
});

describe('watch', () => {
  it('an execution survives the driver that started it: another driver watches it on from the last offset', async () => {
    const e = env();
    const a = sshDriver({ idleMs: 60_000 });
    const res = await provision(e, { d: a });
    const h = await a.exec(e, res, { command: 'sh', args: ['-c', 'echo a; echo a-err >&2; sleep 2; echo b; echo b-err >&2'], cwd: res.cwd, env: {} }, live());
    const seen = { stdout: '', stderr: '' };
    let offset: string | undefined;
    const stopA = new AbortController();
    const watchedByA = a.watch(e, h, (s, t) => void (seen[s] += t), { signal: stopA.signal, onOffset: (o) => (offset = o) });
    await waitFor('the first output', async () => seen.stdout === 'a\n' && seen.stderr === 'a-err\n');
    // Server A goes away: its watch ends, its connections close.
    stopA.abort();
    await expect(watchedByA).rejects.toThrow();
    a.close();
    await waitFor("A's connections to close", async () => a.pool.size() === 0, 5000);
    expect(offset).toBe('2:6');
    expect(isAlive(refOf(h).pgid)).toBe(true);
    // Server B: a fresh driver, its own pool, only the stored handle and offset.
    const b = sshDriver();
    try {
      const more = { stdout: '', stderr: '' };
      const offsets: string[] = [];
      expect(await b.watch(e, h, (s, t) => void (more[s] += t), { from: offset, onOffset: (o) => offsets.push(o) })).toEqual({ exitCode: 0, signal: null });
      expect(seen.stdout + more.stdout).toBe('a\nb\n');
      expect(seen.stderr + more.stderr).toBe('a-err\nb-err\n');
      expect(offsets.at(-1)).toBe('4:12');
      // Watching again from the end gives nothing twice.
      let again = '';
      expect(await b.watch(e, h, (_s, t) => void (again += t), { from: '4:12' })).toEqual({ exitCode: 0, signal: null });
      expect(again).toBe('');
    } finally {
      b.close();
    }
  });

  it('applies backpressure: while the sink waits, at most one chunk is read ahead', async () => {
    const chunk = 16 * 1024;
    const d = sshDriver({ watchChunkBytes: chunk });
    try {
      const e = env();
      const res = await provision(e, { d });
      const total = 1_000_000;
      const h = await d.exec(e, res, { command: 'sh', args: ['-c', `head -c ${total} /dev/zero | tr '\\0' x`], cwd: res.cwd, env: {} }, live());
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      let delivered = 0;
      let calls = 0;
      let maxAhead = 0;
      const watched = d.watch(e, h, async (_s, t) => {
        maxAhead = Math.max(maxAhead, d.stats.watchBytesRead - delivered);
        delivered += t.length;
        if (++calls === 1) await gate;
        else await new Promise((r) => setImmediate(r));
      });
      await waitFor('the first chunk to reach the sink', async () => calls === 1);
      await waitFor('the process to finish writing', async () => existsSync(join(refOf(h).dir, 'exit')), 15_000);
      // Several remote poll rounds: an unbounded reader would have taken the whole megabyte by now.
      await new Promise((r) => setTimeout(r, 500));
      const readWhileWaiting = d.stats.watchBytesRead;
      expect(readWhileWaiting).toBeLessThan(2 * chunk + 200);
      release();
      expect(await watched).toEqual({ exitCode: 0, signal: null });
      expect(delivered).toBe(total);
      expect(maxAhead).toBeLessThan(2 * chunk); // one chunk (plus frame headers); unbounded, it would be most of the megabyte
    } finally {
      d.close();
    }
  });

  it("a sink's 'stop' ends relaying: the rest is counted as discarded, never delivered", async () => {
    const d = sshDriver({ watchChunkBytes: 1000 });
    try {
      const e = env();
      const res = await provision(e, { d });
      const h = await d.exec(e, res, { command: 'sh', args: ['-c', "head -c 50000 /dev/zero | tr '\\0' y"], cwd: res.cwd, env: {} }, live());
      let got = 0;
      const exit = await d.watch(e, h, (_s, t) => {
        got += t.length;
        return 'stop';
      });
      expect(got).toBe(1000);
      expect(exit).toEqual({ exitCode: 0, signal: null, discardedBytes: 49_000 });
    } finally {
      d.close();
    }
  });

  it('a character split between chunks arrives whole, and offsets count the bytes delivered', async () => {
    const d = sshDriver({ watchChunkBytes: 5 });
    try {
      const text = 'ünï©ødé — 漢字 🚀 done\n';
      const offsets: string[] = [];
      const e = env();
      const res = await provision(e, { d });
      const h = await d.exec(e, res, { command: 'printf', args: ['%s', text], cwd: res.cwd, env: {} }, live());
      const parts: string[] = [];
      expect(await d.watch(e, h, (_s, t) => void parts.push(t), { onOffset: (o) => offsets.push(o) })).toEqual({ exitCode: 0, signal: null });
      expect(parts.join('')).toBe(text);
      expect(parts.every((p) => !p.includes('\uFFFD'))).toBe(true);
      expect(offsets.at(-1)).toBe(`${Buffer.byteLength(text)}:0`);
      // From any offset reported, the rest is exactly what followed.
      const mid = offsets[Math.floor(offsets.length / 2)]!;
      let rest = '';
      await d.watch(e, h, (_s, t) => void (rest += t), { from: mid });
      expect(Buffer.from(text).subarray(Number(mid.split(':')[0])).toString('utf8')).toBe(rest);
    } finally {
      d.close();
    }
  });

  it('reconnects when the connection drops mid-run, and goes on from its offset', async () => {
    const d = sshDriver({ idleMs: 60_000 });
    try {
      const e = env();
      const res = await provision(e, { d });
      const h = await d.exec(e, res, { command: 'sh', args: ['-c', 'echo one; sleep 1.5; echo two'], cwd: res.cwd, env: {} }, live());
      let out = '';
      const watched = d.watch(e, h, (_s, t) => void (out += t));
      await waitFor('the first line', async () => out === 'one\n');
      // The network goes: every connection's sshd dies (the listener stays).
      for (const pid of sshd.connectionPids()) process.kill(pid, 'SIGKILL');
      expect(await watched).toEqual({ exitCode: 0, signal: null });
      expect(out).toBe('one\ntwo\n');
    } finally {
      d.close();
    }
  });

  it('gives up with process_lost when the host stays unreachable', async () => {
    const d = sshDriver({ idleMs: 60_000, reconnectMs: 1500, reconnectTries: 3 });
    try {
      const e = env();
      const res = await provision(e, { d });
      const h = await d.exec(e, res, { command: 'sleep', args: ['30'], cwd: res.cwd, env: {} }, live());
      const watched = d.watch(e, h, () => {});
      await waitFor('the watch channel', async () => d.stats.watchBytesRead > 0);
      const serving = sshd.connectionPids();
      await sshd.stopListening();
      for (const pid of serving) process.kill(pid, 'SIGKILL');
      const exit = await watched;
      expect(exit).toMatchObject({ exitCode: null, signal: null, errorCode: 'process_lost', error: expect.stringMatching(/could not watch it again/) });
      // The execution itself went on without us.
      expect(isAlive(refOf(h).pgid)).toBe(true);
      await sshd.start();
      await drv.signal(e, h, 'KILL');
      expect((await drv.watch(e, h, () => {})).signal).toBe('SIGKILL');
    } finally {
      d.close();
      if (sshd.pid() === null) await sshd.start();
    }
  });
});
