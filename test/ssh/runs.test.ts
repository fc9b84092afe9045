// Heartbeat runs on an SSH environment end to end, against a private sshd: the
// runtime claims the run, leases the environment, makes the remote workspace, runs
// the agent's process there, and finalizes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Client } from 'ssh2';
import { localDriver } from '../../src/drivers/local/driver.js';
import { sshDriver, type SshDriver } from '../../src/drivers/ssh/driver.js';
import type { HeartbeatRun } from '../../src/domain/types.js';
import { startRuntime, type Runtime } from '../../src/heartbeat/runtime.js';
import { openTestDb, type TestDb } from '../support/db.js';
import { collectRuntimeErrors } from '../support/runtime-errors.js';
import { startTestSshd, type TestSshd } from '../support/sshd.js';
import { isAlive, waitFor } from '../support/wait.js';

// Secrets are encrypted under a key of this test's own, not one in the user's home.
process.env.BERTH_SECRET_KEY = randomBytes(32).toString('hex');

let t: TestDb;
let sshd: TestSshd;
let ssh: SshDriver;
let runtime: Runtime;
let companyId: string;
const root = mkdtempSync(join(tmpdir(), 'berth-ssh-runs-'));
const remoteRoot = join(root, 'remote');
let n = 0;

/** Every command line the driver sends to sshd (exec requests), to prove no env value is on one. */
const execCommands: string[] = [];
const realExec = Client.prototype.exec;

const runtimeErrors = collectRuntimeErrors();
beforeAll(async () => {
  Client.prototype.exec = function (this: Client, command: string, ...rest: unknown[]) {
    execCommands.push(command);
    return (realExec as (...a: unknown[]) => unknown).call(this, command, ...rest);
  } as typeof Client.prototype.exec;
  sshd = await startTestSshd();
  t = await openTestDb();
  companyId = (await t.services.companies.create({ name: 'SSH Co' })).id;
  ssh = sshDriver({ idleMs: 60_000 });
  runtime = await startRuntime({
    services: t.services,
    db: t.db,
    drivers: new Map([
      ['local', localDriver({ workspaceRoot: join(root, 'local') })],
      ['ssh', ssh],
    ]),
    pollMs: 50,
    sweepMs: 200,
    heartbeatMs: 100,
    leaseTtlSeconds: 5,
    apiUrl: 'http://127.0.0.1:9',
    onError: runtimeErrors.onError,
  });
});
afterAll(async () => {
  Client.prototype.exec = realExec;
  await runtime?.stop({ graceMs: 0 });
  ssh?.close();
  await t?.close();
  await sshd?.stop();
  rmSync(root, { recursive: true, force: true });
});

async function sshEnvironment(config: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) {
  return t.services.environments.create(companyId, {
    name: `ssh-${++n}`,
    driver: 'ssh',
    config: { host: sshd.host, port: sshd.port, username: sshd.username, privateKey: sshd.privateKey, knownHosts: sshd.knownHosts, remoteWorkspacePath: remoteRoot, ...config },
    ...extra,
  } as never);
}

async function agentOn(envId: string, command: string, args: string[], extra: Record<string, unknown> = {}) {
  return t.services.agents.create(companyId, {
    name: `agent-${++n}`,
    adapterType: 'process',
    adapterConfig: { command, args, ...extra } as never,
    defaultEnvironmentId: envId,
  });
}

async function invoke(agentId: string): Promise<HeartbeatRun> {
  const run = await t.services.runs.invoke(companyId, agentId);
  runtime.poke();
  return run;
}

const finished = (runId: string, ms = 20_000) =>
  waitFor(`run ${runId} to finish`, async () => {
    const r = await t.services.runs.get(companyId, runId);
    return r.finishedAt ? r : null;
  }, ms);

const logText = async (runId: string, stream?: string) =>
  (await t.services.runs.readLog(companyId, runId, { limit: 10_000 })).filter((c) => !stream || c.stream === stream).map((c) => c.chunk).join('');

/** The remote pid the run's log reports once its process started. */
const remotePid = (runId: string) =>
  waitFor(`run ${runId} to start its remote process`, async () => {
    const m = /started: remote pid (\d+)/.exec(await logText(runId, 'system'));
    return m ? Number(m[1]) : null;
  });

/** Every process command line on this machine (which is the SSH host here). */
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

const remoteWorkspaces = () => (existsSync(remoteRoot) ? readdirSync(remoteRoot) : []);

describe('runs on an SSH environment', () => {
  it('runs the process remotely: output and exit code in the run, host/port/user/cwd in paperclipEnvironment and the lease, workspace removed after', async () => {
    const env = await sshEnvironment();
    const agent = await agentOn(env.id, 'sh', ['-c', 'echo "run=$PAPERCLIP_RUN_ID"; pwd; echo warn >&2; exit 4']);
    const run = await finished((await invoke(agent.id)).id);
    expect(run).toMatchObject({ status: 'failed', exitCode: 4, errorCode: 'process_failed', pid: null });
    const lease = await t.services.leases.get(companyId, run.leaseId!);
    const cwd = join(remoteRoot, lease.resourceId!);
    expect(await logText(run.id, 'stdout')).toBe(`run=${run.id}\n${cwd}\n`);
    expect(await logText(run.id, 'stderr')).toBe('warn\n');
    const details = { host: '127.0.0.1', port: sshd.port, username: 'root', cwd, workspaceOwned: true, providerLeaseId: `ssh://root@127.0.0.1:${sshd.port}${cwd}` };
    expect(run.contextSnapshot.paperclipEnvironment).toMatchObject({ id: env.id, driver: 'ssh', leaseId: lease.id, fence: lease.fence, ...details });
    expect(lease).toMatchObject({ status: 'failed', cleanupStatus: 'success', providerLeaseId: details.providerLeaseId, metadata: {}, driver: 'ssh', driverState: details });
    expect(existsSync(cwd)).toBe(false);

    const ok = await finished((await invoke((await agentOn(env.id, 'sh', ['-c', 'touch made-here; ls'])).id)).id);
    expect(ok).toMatchObject({ status: 'succeeded', exitCode: 0 });
    expect(await logText(ok.id, 'stdout')).toBe('made-here\n');
    const okLease = await t.services.leases.get(companyId, ok.leaseId!);
    expect(okLease).toMatchObject({ status: 'released', cleanupStatus: 'success' });
    expect(existsSync(join(remoteRoot, okLease.resourceId!))).toBe(false); // ephemeral: removed at release
  });

  it('passes PAPERCLIP_* and envVars to the remote process, never on any command line, and not the server\'s own PATH', async () => {
    const secret = `env-secret-${randomBytes(8).toString('hex')}`;
    const agentSecret = `agent-secret-${randomBytes(8).toString('hex')}`;
    const env = await sshEnvironment({}, { envVars: { DEPLOY_TOKEN: secret } });
    const keyFile = join(root, `api-key-${n}`);
    const agent = await agentOn(env.id, 'sh', ['-c', `printf %s "$PAPERCLIP_API_KEY" > ${keyFile}; echo "path=$PATH"; echo "tok=\${#DEPLOY_TOKEN} own=\${#OWN}"; sleep 30`], { env: { OWN: agentSecret }, timeoutSec: 60 });
    const started = await invoke(agent.id);
    const pid = await remotePid(started.id);
    await waitFor('the api key file', async () => existsSync(keyFile) && readFileSync(keyFile, 'utf8').length > 0);
    const apiKey = readFileSync(keyFile, 'utf8');
    expect(apiKey).toMatch(/^brt_/);
    // The process has them in its environment...
    const environ = readFileSync(`/proc/${pid}/environ`, 'utf8');
    for (const v of [secret, agentSecret, apiKey]) expect(environ).toContain(v);
    // ...but no command line on the host has, nor any command the driver sent.
    const lines = allCommandLines();
    expect(lines.some((l) => l.includes('berth:'))).toBe(true); // the wrapper's own line is visible: we looked at the right list
    for (const v of [secret, agentSecret, apiKey]) {
      expect(lines.filter((l) => l.includes(v))).toEqual([]);
      expect(execCommands.filter((c) => c.includes(v))).toEqual([]);
    }
    await t.services.runs.cancel(companyId, started.id);
    const run = await finished(started.id);
    expect(run.status).toBe('cancelled');
    const out = await logText(run.id, 'stdout');
    expect(out).toContain(`tok=${secret.length} own=${agentSecret.length}`);
    expect(out).not.toContain(process.env.PATH!); // the remote login's PATH, not this server's
  });

  it('connection refused: the run fails with a clear error and no lease is left active', async () => {
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as { port: number }).port;
    await new Promise((r) => srv.close(r));
    const env = await sshEnvironment({ port });
    const run = await finished((await invoke((await agentOn(env.id, 'true', [])).id)).id);
    expect(run).toMatchObject({ status: 'failed', errorCode: 'ssh_connect', leaseId: null });
    expect(run.error).toContain(`cannot connect to 127.0.0.1:${port}: ECONNREFUSED`);
    expect((await t.services.leases.listByEnvironment(companyId, env.id)).items).toEqual([]); // the start rolled back: no lease at all
    const acts = await t.services.activity.list(companyId, { runId: run.id });
    expect(acts.items.map((a) => a.action)).not.toContain('environment.lease_acquired');
  });

  it('a host that never answers does not hold the database while the run waits for it (PGlite has one session)', async () => {
    // Accepts TCP connections and never speaks SSH: the connect hangs until its timeout.
    const silent = createServer(() => {});
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    try {
      const env = await sshEnvironment({ port: (silent.address() as { port: number }).port });
      const run = await invoke((await agentOn(env.id, 'true', [])).id);
      await waitFor('the run to be claimed', async () => (await t.services.runs.get(companyId, run.id)).status === 'running');
      await new Promise((r) => setTimeout(r, 300)); // well into the connect
      const started = performance.now();
      await t.services.companies.list();
      expect(performance.now() - started).toBeLessThan(1000);
      const done = await finished(run.id, 30_000);
      expect(done).toMatchObject({ status: 'failed', leaseId: null });
      expect(done.errorCode).toMatch(/^ssh_/);
    } finally {
      silent.close();
    }
  });

  it('a changed host key is refused (strict), naming host:port and the fingerprint; no lease', async () => {
    const env = await sshEnvironment({ knownHosts: sshd.wrongKnownHosts });
    const run = await finished((await invoke((await agentOn(env.id, 'true', [])).id)).id);
    expect(run).toMatchObject({ status: 'failed', errorCode: 'ssh_host_key' });
    expect(run.error).toContain(`host key verification failed for 127.0.0.1:${sshd.port}`);
    expect(run.error).toContain(sshd.hostKeyFingerprint);
    expect((await t.services.leases.listByEnvironment(companyId, env.id)).items).toEqual([]);
  });

  it('times out: the whole remote tree is killed, a grandchild that ignores SIGTERM included', async () => {
    const env = await sshEnvironment();
    const pidFile = join(root, `timeout-${n}`);
    const agent = await agentOn(env.id, 'sh', ['-c', `sh -c 'trap "" TERM; sleep 60' & echo $! > ${pidFile}; sleep 60`], { timeoutSec: 1, graceSec: 0.5 });
    const run = await finished((await invoke(agent.id)).id);
    expect(run).toMatchObject({ status: 'timed_out', errorCode: 'timeout' });
    const grandchild = Number(readFileSync(pidFile, 'utf8'));
    expect(grandchild).toBeGreaterThan(1);
    await waitFor('the remote grandchild to be gone', async () => !isAlive(grandchild), 5000);
    expect((await t.services.leases.get(companyId, run.leaseId!)).status).toBe('failed');
  });

  it('cancel: the whole remote tree is killed', async () => {
    const env = await sshEnvironment();
    const pidFile = join(root, `cancel-${n}`);
    const agent = await agentOn(env.id, 'sh', ['-c', `sleep 60 & echo $! > ${pidFile}; sleep 60`], { timeoutSec: 60, graceSec: 1 });
    const started = await invoke(agent.id);
    const leader = await remotePid(started.id);
    await waitFor('the grandchild', async () => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '');
    const grandchild = Number(readFileSync(pidFile, 'utf8'));
    expect(isAlive(grandchild)).toBe(true);
    await t.services.runs.cancel(companyId, started.id);
    const run = await finished(started.id);
    expect(run.status).toBe('cancelled');
    await waitFor('the remote tree to be gone', async () => !isAlive(grandchild) && !isAlive(leader), 5000);
    expect((await t.services.leases.get(companyId, run.leaseId!)).status).toBe('expired');
  });

  it('the connection cut mid-run: the remote process lives on, the driver reconnects, and the run ends with all of its output', async () => {
    const env = await sshEnvironment();
    const agent = await agentOn(env.id, 'sh', ['-c', 'echo before; sleep 2; echo after'], { timeoutSec: 60 });
    const started = await invoke(agent.id);
    const leader = await remotePid(started.id);
    await waitFor('the first line', async () => (await logText(started.id, 'stdout')).includes('before'));
    expect(isAlive(leader)).toBe(true);
    // Every connection to the host dies (the processes sshd serves them with); the listener stays.
    const connections = sshd.connectionPids();
    expect(connections.length).toBeGreaterThan(0);
    for (const pid of connections) process.kill(pid, 'SIGKILL');
    const run = await finished(started.id);
    expect(run).toMatchObject({ status: 'succeeded', exitCode: 0 });
    expect(await logText(run.id, 'stdout')).toBe('before\nafter\n');
    const lease = await t.services.leases.get(companyId, run.leaseId!);
    expect(lease).toMatchObject({ status: 'released', cleanupStatus: 'success' });
    expect(existsSync(join(remoteRoot, lease.resourceId!))).toBe(false);
  });

  it('the host gone mid-run: the run fails process_lost after the retries, the lease waits in pending_cleanup, and once sshd is back the destroy kills the remote tree and removes the workspace', async () => {
    const env = await sshEnvironment();
    const pidFile = join(root, `cut-${n}`);
    const agent = await agentOn(env.id, 'sh', ['-c', `sleep 60 & echo $! > ${pidFile}; echo started; sleep 60`], { timeoutSec: 120 });
    const started = await invoke(agent.id);
    const leader = await remotePid(started.id);
    await waitFor('the grandchild', async () => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '');
    const grandchild = Number(readFileSync(pidFile, 'utf8'));
    const { leaseId } = await t.services.runs.get(companyId, started.id);
    const cwd = join(remoteRoot, (await t.services.leases.get(companyId, leaseId!)).resourceId!);
    expect(existsSync(cwd)).toBe(true);
    const connections = sshd.connectionPids();
    await sshd.stopListening(); // nobody can reconnect: the watch gives up, and cleanup must fail for now
    for (const pid of connections) process.kill(pid, 'SIGKILL');
    const run = await finished(started.id, 90_000);
    expect(run).toMatchObject({ status: 'failed', errorCode: 'process_lost' });
    const pending = await t.services.leases.get(companyId, leaseId!);
    expect(pending).toMatchObject({ status: 'pending_cleanup', cleanupStatus: 'failed', releaseStatus: 'failed' });
    expect(await logText(run.id, 'system')).toContain('environment cleanup failed (will be retried)');
    expect(existsSync(cwd)).toBe(true);
    // The remote process outlives the connection (its own deadline, or the destroy, ends it).
    expect(isAlive(leader)).toBe(true);

    await sshd.start();
    const done = await waitFor('cleanup to be retried and succeed', async () => {
      const l = await t.services.leases.get(companyId, leaseId!);
      return l.status === 'failed' && l.cleanupStatus === 'success' ? l : null;
    }, 30_000);
    expect(done.cleanupAttempts).toBeGreaterThanOrEqual(2);
    expect(existsSync(cwd)).toBe(false);
    await waitFor('the remote tree to be gone', async () => !isAlive(grandchild) && !isAlive(leader), 5000);
    const acts = await t.services.activity.list(companyId, { entityId: leaseId! });
    expect(acts.items.map((a) => a.action)).toContain('environment.lease_cleanup_succeeded');
  }, 150_000);

  it('retain_on_failure keeps a failed run\'s workspace (lease retained); a successful run\'s is still removed', async () => {
    const env = await sshEnvironment({}, { metadata: { leasePolicy: 'retain_on_failure' } });
    const failed = await finished((await invoke((await agentOn(env.id, 'sh', ['-c', 'echo evidence > notes.txt; exit 1'])).id)).id);
    expect(failed.status).toBe('failed');
    const kept = await t.services.leases.get(companyId, failed.leaseId!);
    expect(kept).toMatchObject({ status: 'retained', leasePolicy: 'retain_on_failure', cleanupStatus: null });
    expect(readFileSync(join(remoteRoot, kept.resourceId!, 'notes.txt'), 'utf8')).toBe('evidence\n');

    const ok = await finished((await invoke((await agentOn(env.id, 'true', [])).id)).id);
    expect(ok.status).toBe('succeeded');
    const released = await t.services.leases.get(companyId, ok.leaseId!);
    expect(released).toMatchObject({ status: 'released', leasePolicy: 'retain_on_failure', cleanupStatus: 'success' });
    expect(existsSync(join(remoteRoot, released.resourceId!))).toBe(false);

    // Releasing the retained lease with cleanup pending hands its workspace to the driver's cleanup.
    await t.services.leases.release(companyId, kept.id, { fence: kept.fence, status: 'released', cleanupStatus: 'pending' });
    await waitFor('the retained workspace to be cleaned up', async () => !existsSync(join(remoteRoot, kept.resourceId!)), 10_000);
  });

  it('refuses a lease policy runs cannot take', async () => {
    const env = await sshEnvironment({}, { metadata: { leasePolicy: 'reuse_by_execution_workspace' } });
    const run = await finished((await invoke((await agentOn(env.id, 'true', [])).id)).id);
    expect(run).toMatchObject({ status: 'failed', errorCode: 'invalid_lease_policy', leaseId: null });
    expect(run.error).toContain('metadata.leasePolicy "reuse_by_execution_workspace" is not a policy runs can take');
  });

  it('leaves no workspace behind from the runs above but the one retained on purpose', async () => {
    await waitFor('cleanups to settle', async () => remoteWorkspaces().length === 0, 10_000);
  });
});
