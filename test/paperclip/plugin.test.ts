// The Berth provider plugin for Paperclip (packages/paperclip-plugin) under Paperclip's own
// plugin SDK (@paperclipai/plugin-sdk 2026.916.1: createEnvironmentTestHarness and its lease
// assertions) against a real `berth serve` on a scratch PostgreSQL database. The SDK needs
// Node >= 24, so the harness runs in a Node 24 child process (the plugin's
// test/harness-session.mjs, driven one JSON line at a time); killing that child is killing a
// plugin worker that holds leases. Runs once, on PostgreSQL.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { accessSync, constants, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { distState } from '../../bin/dist-state.mjs';
import { createScratchDatabase } from '../support/db.js';
import { startServeProcess, type ServeProcess } from '../support/serve-process.js';
import { waitFor } from '../support/wait.js';

const repo = join(import.meta.dirname, '../..');
const pkg = join(repo, 'packages/paperclip-plugin');
const dir = mkdtempSync(join(tmpdir(), 'berth-paperclip-plugin-'));

function node24(): string {
  const node = process.env.BERTH_TEST_NODE24 ?? '';
  try {
    accessSync(node, constants.X_OK);
  } catch {
    throw new Error(`no Node 24 (BERTH_TEST_NODE24=${node || 'unset'}): this test needs scripts/engines/paperclip.sh (berth_ensure_paperclip)`);
  }
  return node;
}

/** The plugin's dependencies (an npm workspace of the root: the root's npm ci installs them) and its build. */
function buildPlugin(): void {
  const tsc = join(repo, 'node_modules/typescript/bin/tsc');
  if (!existsSync(join(repo, 'node_modules/@paperclipai/plugin-sdk/package.json')) || !existsSync(join(repo, 'node_modules/paperclip-plugin-berth'))) {
    throw new Error('the plugin SDK is not installed: packages/paperclip-plugin is an npm workspace of the root, run `npm ci` at the root');
  }
  const built = spawnSync(process.execPath, [tsc, '-p', pkg], { encoding: 'utf8' });
  if (built.status !== 0) throw new Error(`building the plugin failed:\n${built.stdout}${built.stderr}`);
}

interface Session {
  child: ChildProcess;
  call<T = any>(op: string, params?: unknown): Promise<T>;
  /** The same, but the error message of a refused call (fails if it succeeds). */
  refused(op: string, params?: unknown): Promise<string>;
  kill(): Promise<void>;
}

const sessions: Session[] = [];

/** A plugin worker under the SDK's harness, in Node 24. */
async function startSession(): Promise<Session> {
  const child = spawn(node, [join(pkg, 'test/harness-session.mjs')], { cwd: pkg, stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '', HOME: dir } });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const waiting = new Map<number, { resolve: (a: { ok: boolean; result?: unknown; error?: string }) => void; reject: (e: Error) => void; op: string }>();
  child.once('exit', (code, signal) => {
    for (const w of waiting.values()) w.reject(new Error(`harness session exited (${code ?? signal}) during ${w.op}:\n${stderr}`));
    waiting.clear();
  });
  let ready!: () => void;
  const isReady = new Promise<void>((resolve, reject) => {
    ready = resolve;
    child.once('exit', (code) => reject(new Error(`harness session exited ${code} before it was ready:\n${stderr}`)));
  });
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const msg = JSON.parse(line) as { ready?: boolean; id?: number; ok: boolean; result?: unknown; error?: string };
    if (msg.ready) return ready();
    waiting.get(msg.id!)?.resolve(msg);
    waiting.delete(msg.id!);
  });
  await isReady;
  let next = 0;
  const send = (op: string, params?: unknown) =>
    new Promise<{ ok: boolean; result?: unknown; error?: string }>((resolve, reject) => {
      const id = ++next;
      waiting.set(id, { resolve, reject, op });
      child.stdin!.write(`${JSON.stringify({ id, op, params })}\n`);
    });
  const s: Session = {
    child,
    async call(op, params) {
      const a = await send(op, params);
      if (!a.ok) throw new Error(`${op} failed: ${a.error}`);
      return a.result as never;
    },
    async refused(op, params) {
      const a = await send(op, params);
      if (a.ok) throw new Error(`${op} succeeded: ${JSON.stringify(a.result)}`);
      return a.error ?? '';
    },
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await gone;
    },
  };
  sessions.push(s);
  return s;
}

/** The worker as Paperclip starts it (`node dist/worker.js`), spoken to in the SDK's JSON-RPC over stdio. */
async function startWorker(): Promise<{ child: ChildProcess; rpc<T = any>(method: string, params: unknown): Promise<T>; kill(): Promise<void> }> {
  const child = spawn(node, [join(pkg, 'dist/worker.js')], { cwd: pkg, stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '', HOME: dir } });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  child.once('exit', (code, signal) => {
    for (const w of waiting.values()) w.reject(new Error(`worker exited (${code ?? signal}):\n${stderr}`));
    waiting.clear();
  });
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const msg = JSON.parse(line) as { id?: number; result?: unknown; error?: { message: string }; method?: string };
    if (msg.method !== undefined || msg.id === undefined) return; // a notification or a call to the host (logs): not an answer
    const w = waiting.get(msg.id);
    waiting.delete(msg.id);
    if (msg.error) w?.reject(new Error(msg.error.message));
    else w?.resolve(msg.result);
  });
  let next = 0;
  const w = {
    child,
    rpc: <T,>(method: string, params: unknown) =>
      new Promise<T>((resolve, reject) => {
        const id = ++next;
        waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
        child.stdin!.write(`${JSON.stringify({ jsonrpc: '2.0', id, method, params })}\n`);
      }),
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await gone;
    },
  };
  workers.push(w);
  return w;
}
const workers: Array<{ kill(): Promise<void> }> = [];

let node = '';
let scratch: { url: string; drop: () => Promise<void> };
let berth: ServeProcess;
let key = '';
let envId = '';
const envName = 'plugin-local';

function config(over: Record<string, unknown> = {}) {
  return { berthUrl: berth.url, apiKey: key, environment: envName, ttlSeconds: 6, ...over };
}

/** What Paperclip passes every lease hook: its own company, environment and the provider config. */
function base(paperclipEnvId: string, over: Record<string, unknown> = {}) {
  return { driverKey: 'berth', companyId: 'pc-company', environmentId: paperclipEnvId, config: config(over) };
}

async function lease(id: string) {
  const r = await berth.call('GET', `/api/environment-leases/${id}`, { key });
  expect(r.status, r.text).toBe(200);
  return r.body;
}

async function activeLeases() {
  const r = await berth.call('GET', `/api/environments/${envId}/leases?status=active`, { key });
  return r.body as Array<{ id: string }>;
}

beforeAll(async () => {
  node = node24();
  buildPlugin();
  if (!distState().current) {
    const built = spawnSync(process.execPath, ['scripts/build.mjs'], { cwd: repo, encoding: 'utf8' });
    if (built.status !== 0) throw new Error(`build failed: ${built.stdout}${built.stderr}`);
  }
  scratch = await createScratchDatabase();
  berth = await startServeProcess({ BERTH_HOME: join(dir, 'home'), DATABASE_URL: scratch.url, BERTH_LOG_LEVEL: 'info' });
  const made = await berth.call('POST', '/api/companies', { body: { name: 'Paperclip plugin Co' } });
  expect(made.status).toBe(201);
  key = made.body.apiKey;
  const env = await berth.call('POST', `/api/companies/${made.body.company.id}/environments`, { key, body: { name: envName, driver: 'local' } });
  expect(env.status, env.text).toBe(201);
  envId = env.body.id;
}, 180_000);

afterEach(async () => {
  for (const s of sessions.splice(0)) await s.kill();
  for (const w of workers.splice(0)) await w.kill();
});

afterAll(async () => {
  for (const s of sessions.splice(0)) await s.kill();
  await berth?.stop();
  await scratch?.drop();
  rmSync(dir, { recursive: true, force: true });
});

describe('the Berth provider plugin under the Paperclip plugin SDK harness', () => {
  it("its manifest passes Paperclip's manifest schema: one sandbox_provider driver whose apiKey is a secret", async () => {
    const s = await startSession();
    const m = await s.call('manifest');
    expect(m.issues).toEqual([]);
    expect(m.valid).toBe(true);
    expect(m.manifest.capabilities).toEqual(['environment.drivers.register']);
    expect(m.manifest.environmentDrivers).toHaveLength(1);
    expect(m.manifest.environmentDrivers[0]).toMatchObject({ driverKey: 'berth', kind: 'sandbox_provider' });
    expect(m.manifest.environmentDrivers[0].configSchema.properties.apiKey.format).toBe('secret-ref');
  });

  it('validateConfig names each bad field, never quotes the key; probe answers from Berth by name and by id', async () => {
    const s = await startSession();
    const bad = await s.call('validateConfig', { driverKey: 'berth', config: { berthUrl: 'ftp://berth', apiKey: 'brt_secret-run-token', ttlSeconds: 1 } });
    expect(bad.ok).toBe(false);
    expect(bad.errors).toEqual([
      'berthUrl must be an http:// or https:// URL (got ftp://)',
      'apiKey must be a Berth company API key (it starts with bk_); an admin key or a run token is not accepted',
      "environment is required: the Berth environment's id or its name",
      'ttlSeconds must be between 3 and 604800 (7 days), got 1',
    ]);
    expect(JSON.stringify(bad)).not.toContain('brt_secret-run-token');
    const empty = await s.call('validateConfig', { driverKey: 'berth', config: {} });
    expect(empty.errors.map((e: string) => e.split(' ')[0])).toEqual(['berthUrl', 'apiKey', 'environment']);
    const good = await s.call('validateConfig', { driverKey: 'berth', config: { ...config(), berthUrl: `${berth.url}/`, provider: 'berth', unknownThing: 1 } });
    expect(good).toMatchObject({ ok: true, normalizedConfig: config(), warnings: ['unknown config key "unknownThing" is ignored'] });

    const byName = await s.call('probe', base(randomUUID()));
    expect(byName).toMatchObject({ ok: true, metadata: { berthEnvironmentId: envId, berthDriver: 'local' } });
    expect(byName.summary).toMatch(/^Berth environment plugin-local \(local, \w+\): probe ok/);
    expect((await s.call('probe', base(randomUUID(), { environment: envId }))).ok).toBe(true);
    const noSuch = await s.call('probe', base(randomUUID(), { environment: 'nowhere' }));
    expect(noSuch).toMatchObject({ ok: false, summary: 'Berth has no environment named "nowhere" in this key\'s company' });
    const wrongKey = await s.call('probe', base(randomUUID(), { apiKey: 'bk_not-a-real-key' }));
    expect(wrongKey.ok).toBe(false);
    expect(wrongKey.summary).toMatch(/Berth refused GET \/api\/companies: 401/);
    expect(JSON.stringify(wrongKey)).not.toContain('bk_not-a-real-key');
  });

  it('a lease lifecycle: the same run id gets the same Berth lease, renewed while held; released with a receipt once Berth owes no cleanup', async () => {
    const s = await startSession();
    const pcEnv = randomUUID();
    const runId = randomUUID();
    const acquireParams = { ...base(pcEnv), runId, agentId: 'pc-agent', issueId: 'PC-1' };
    const first = await s.call('acquireLease', acquireParams);
    const leaseId = first.providerLeaseId as string;
    expect(first.metadata).toMatchObject({ berthLeaseId: leaseId, berthEnvironmentId: envId, created: true, idempotencyKey: `paperclip:${pcEnv}:${runId}` });
    const held = await lease(leaseId);
    // Acquired with provision: true: Berth's local driver made the lease a workspace.
    expect(held).toMatchObject({ status: 'active', environmentId: envId, idempotencyKey: `paperclip:${pcEnv}:${runId}`, driver: 'local', issueId: 'PC-1' });
    expect(typeof held.driverState.cwd).toBe('string');
    expect(held.metadata.paperclip).toMatchObject({ runId, environmentId: pcEnv, agentId: 'pc-agent' });
    expect(new Date(first.expiresAt).getTime()).toBe(new Date(held.expiresAt).getTime());

    // Paperclip retries the acquire (an answer lost): the same Berth lease, no second one.
    const again = await s.call('acquireLease', acquireParams);
    expect(again.providerLeaseId).toBe(leaseId);
    expect(again.metadata.created).toBe(false);
    expect((await activeLeases()).map((l) => l.id)).toEqual([leaseId]);

    // Renewed while held (every ttl/3 = 2 s): expiresAt moves, and past the first TTL the lease is still active.
    const firstExpiry = new Date(held.expiresAt).getTime();
    await waitFor('the plugin to renew the lease', async () => (new Date((await lease(leaseId)).expiresAt).getTime() > firstExpiry ? true : null), 10_000, 200);
    await new Promise((r) => setTimeout(r, 7_000)); // longer than the 6 s TTL
    const later = await lease(leaseId);
    expect(later.status).toBe('active');
    expect(new Date(later.expiresAt).getTime()).toBeGreaterThan(firstExpiry + 3_000);
    const renewing = await s.call('renewing');
    expect(renewing).toHaveLength(1);
    expect(renewing[0].berthLeaseId).toBe(leaseId);
    expect(renewing[0].renewals).toBeGreaterThanOrEqual(3);

    // The workspace is the one Berth's driver made; commands run there through Berth's exec route.
    const workspace = await s.call('realizeWorkspace', { ...base(pcEnv), lease: first, workspace: { localPath: '/tmp/x' } });
    expect(workspace.cwd).toBe(held.driverState.cwd);
    expect(existsSync(workspace.cwd)).toBe(true);
    const ran = await s.call('execute', {
      ...base(pcEnv), lease: first, command: 'sh', args: ['-c', 'pwd; cat; echo "$X"; echo err >&2; exit 3'], stdin: 'from stdin\n', env: { X: 'y' }, cwd: workspace.cwd,
    });
    expect(ran).toMatchObject({ exitCode: 3, timedOut: false, stderr: 'err\n' });
    expect(ran.stdout).toBe(`${workspace.cwd}\nfrom stdin\ny\n`);
    const slow = await s.call('execute', { ...base(pcEnv), lease: first, command: 'sleep', args: ['30'], timeoutMs: 1000 });
    expect(slow.timedOut).toBe(true);
    expect(await s.refused('execute', { ...base(pcEnv), lease: first, command: 'pwd', cwd: '/etc' })).toMatch(/outside the lease's workspace/);

    const receipt = await s.call('releaseLease', { ...base(pcEnv), providerLeaseId: leaseId, leaseMetadata: first.metadata });
    expect(receipt).toEqual({ providerLeaseId: leaseId, state: 'stopped' });
    // Berth's own account: released, its workspace destroyed before the receipt.
    const ended = await lease(leaseId);
    expect(ended).toMatchObject({ status: 'released', driver: 'local', cleanupStatus: 'success' });
    expect(existsSync(workspace.cwd)).toBe(false);
    expect(ended.releasedAt).toBeTruthy();
    expect(await s.call('renewing')).toEqual([]);
    expect(await activeLeases()).toEqual([]);
    // An acquire retried after the release names the ended lease: refused, never a fresh lease for the same run.
    expect(await s.refused('acquireLease', acquireParams)).toMatch(new RegExp(`the Berth lease of this run \\(${leaseId}, .*\\) has already ended: released`));
    expect(await activeLeases()).toEqual([]);
    // Releasing again: the same receipt (Berth returns the lease's final state).
    expect(await s.call('releaseLease', { ...base(pcEnv), providerLeaseId: leaseId, leaseMetadata: first.metadata })).toEqual(receipt);

    // The SDK's assertions over what its harness recorded.
    const life = await s.call('assertLeaseLifecycle', { environmentId: pcEnv });
    expect(life.acquire.result.providerLeaseId).toBe(leaseId);
    expect(life.release.result).toEqual(receipt);
    const execs = await s.call('assertExecutionLifecycle', { environmentId: pcEnv });
    // Inside the lease's lifecycle: the two that ran, and the one refused for its cwd.
    expect(execs).toHaveLength(3);
    expect(execs.filter((e: { error?: unknown }) => e.error == null)).toHaveLength(2);
    expect((await s.call('assertEnvironmentError', { type: 'execute', environmentId: pcEnv })).error).toMatch(/outside the lease's workspace/);
    await s.call('assertEnvironmentEventOrder', { order: ['acquireLease', 'acquireLease', 'realizeWorkspace', 'execute', 'execute', 'execute', 'releaseLease', 'acquireLease', 'releaseLease'] });
  });

  it('destroyLease ends the Berth lease with a destroyed receipt; resumeLease in a restarted worker takes the renewals over', async () => {
    const a = await startSession();
    const pcEnv = randomUUID();
    const got = await a.call('acquireLease', { ...base(pcEnv), runId: randomUUID() });
    const destroyed = await a.call('destroyLease', { ...base(pcEnv), providerLeaseId: got.providerLeaseId, leaseMetadata: got.metadata, cancelActiveWork: true });
    expect(destroyed).toEqual({ providerLeaseId: got.providerLeaseId, state: 'destroyed' });
    expect(await lease(got.providerLeaseId)).toMatchObject({ status: 'released', cleanupStatus: 'success', failureReason: 'destroyed by Paperclip (active work cancelled)' });
    await a.call('assertLeaseLifecycle', { environmentId: pcEnv });

    // Paperclip's own deadline (requestedExpiresAt) bounds the Berth lease: renewals never pass it.
    const deadline = new Date(Date.now() + 60_000);
    const bounded = await a.call('acquireLease', { ...base(pcEnv), runId: randomUUID(), requestedExpiresAt: deadline.toISOString() });
    const boundedLease = await lease(bounded.providerLeaseId);
    expect(Math.abs(new Date(boundedLease.maxExpiresAt).getTime() - deadline.getTime())).toBeLessThan(2_000);
    expect(new Date(bounded.expiresAt).getTime()).toBeLessThanOrEqual(new Date(boundedLease.maxExpiresAt).getTime());
    await a.call('releaseLease', { ...base(pcEnv), providerLeaseId: bounded.providerLeaseId, leaseMetadata: bounded.metadata });
    expect(await a.refused('acquireLease', { ...base(pcEnv), runId: randomUUID(), requestedExpiresAt: new Date(Date.now() - 1000).toISOString() })).toMatch(/is not in the future/);

    // A lease held by a worker that is then replaced: the new worker resumes it and renews it past its TTL.
    const pcEnv2 = randomUUID();
    const held = await a.call('acquireLease', { ...base(pcEnv2), runId: randomUUID() });
    await a.kill();
    const b = await startSession();
    const resumed = await b.call('resumeLease', { ...base(pcEnv2), providerLeaseId: held.providerLeaseId, leaseMetadata: held.metadata });
    expect(resumed).toMatchObject({ providerLeaseId: held.providerLeaseId, metadata: { resumed: true, fence: held.metadata.fence } });
    await new Promise((r) => setTimeout(r, 8_000));
    expect((await lease(held.providerLeaseId)).status).toBe('active');
    expect(await b.call('releaseLease', { ...base(pcEnv2), providerLeaseId: held.providerLeaseId, leaseMetadata: resumed.metadata })).toEqual({
      providerLeaseId: held.providerLeaseId,
      state: 'stopped',
    });
    expect(await b.refused('resumeLease', { ...base(pcEnv2), providerLeaseId: held.providerLeaseId })).toBe(`Berth lease ${held.providerLeaseId} is released: it cannot be resumed`);
  });

  it("the worker as Paperclip starts it (node dist/worker.js, the SDK's JSON-RPC): initialize lists the eight environment methods; its lease is renewed, and expires after its TTL once the worker is killed", async () => {
    const ttl = 4;
    const w = await startWorker();
    const manifest = (await import(join(pkg, 'dist/manifest.js'))).default;
    const init = await w.rpc('initialize', { manifest, config: {}, instanceInfo: { instanceId: randomUUID(), hostVersion: '2026.916.1' }, apiVersion: 1 });
    expect(init.ok).toBe(true);
    for (const m of ['Probe', 'ValidateConfig', 'AcquireLease', 'ResumeLease', 'ReleaseLease', 'DestroyLease', 'RealizeWorkspace', 'Execute']) {
      expect(init.supportedMethods).toContain(`environment${m}`);
    }
    const pcEnv = randomUUID();
    const runId = randomUUID();
    const got = await w.rpc('environmentAcquireLease', { ...base(pcEnv, { ttlSeconds: ttl }), runId });
    expect((await w.rpc('environmentAcquireLease', { ...base(pcEnv, { ttlSeconds: ttl }), runId })).providerLeaseId).toBe(got.providerLeaseId);
    const firstExpiry = new Date(got.expiresAt).getTime();
    await waitFor('the worker to renew its lease', async () => (new Date((await lease(got.providerLeaseId)).expiresAt).getTime() > firstExpiry ? true : null), 10_000, 200);
    await w.kill();
    const killedAt = Date.now();
    const ended = await waitFor('the killed worker\'s lease to expire', async () => {
      const l = await lease(got.providerLeaseId);
      return l.status === 'active' ? null : l;
    }, 30_000, 200);
    expect(ended.status).toBe('expired');
    expect(Date.now() - killedAt).toBeLessThan((ttl + 3) * 1000);
    console.log(`[plugin] killed dist/worker.js: lease expired ${Date.now() - killedAt} ms after the kill (ttl ${ttl} s)`);

    // Over RPC as well: a command runs; a release answers with its receipt once Berth has destroyed the workspace; then execute is refused.
    const w2 = await startWorker();
    await w2.rpc('initialize', { manifest, config: {}, instanceInfo: { instanceId: randomUUID(), hostVersion: '2026.916.1' }, apiVersion: 1 });
    const held = await w2.rpc('environmentAcquireLease', { ...base(pcEnv, { ttlSeconds: ttl }), runId: randomUUID() });
    const echoed = await w2.rpc('environmentExecute', { ...base(pcEnv), lease: held, command: 'echo', args: ['over', 'rpc'] });
    expect(echoed).toMatchObject({ exitCode: 0, stdout: 'over rpc\n', timedOut: false });
    const receipt = await w2.rpc('environmentReleaseLease', { ...base(pcEnv, { ttlSeconds: ttl }), providerLeaseId: held.providerLeaseId, leaseMetadata: held.metadata });
    expect(receipt).toEqual({ providerLeaseId: held.providerLeaseId, state: 'stopped' });
    expect(await lease(held.providerLeaseId)).toMatchObject({ status: 'released', cleanupStatus: 'success', driver: 'local' });
    const refused = await w2.rpc('environmentExecute', { ...base(pcEnv), lease: held, command: 'true' }).then(
      () => 'ran',
      (e: Error) => e.message,
    );
    expect(refused).toMatch(/execute: Berth lease .* is released/);
    expect(await activeLeases()).toEqual([]);
  });

  it('a killed plugin worker leaves its Berth lease to expire after the TTL; so does a stopped renewal timer', async () => {
    const ttl = 4;
    const a = await startSession();
    const killedLease = await a.call('acquireLease', { ...base(randomUUID(), { ttlSeconds: ttl }), runId: randomUUID() });
    await new Promise((r) => setTimeout(r, 2_500)); // at least one renewal
    await a.kill();
    const killedAt = Date.now();
    const expired = await waitFor(
      'the killed worker\'s lease to expire',
      async () => {
        const l = await lease(killedLease.providerLeaseId);
        return l.status === 'active' ? null : l;
      },
      30_000,
      200,
    );
    const afterKillMs = Date.now() - killedAt;
    expect(expired.status).toBe('expired');
    // Within its TTL from the last renewal, plus Berth's sweep (1 s heartbeat) and this poll.
    expect(afterKillMs).toBeLessThan((ttl + 3) * 1000);

    const b = await startSession();
    const stoppedLease = await b.call('acquireLease', { ...base(randomUUID(), { ttlSeconds: ttl }), runId: randomUUID() });
    expect(await b.call('stopRenewals')).toEqual([]);
    const stoppedAt = Date.now();
    await waitFor('the unrenewed lease to expire', async () => ((await lease(stoppedLease.providerLeaseId)).status === 'expired' ? true : null), 30_000, 200);
    expect(Date.now() - stoppedAt).toBeLessThan((ttl + 3) * 1000);
    expect(await activeLeases()).toEqual([]);
    // Paperclip releasing the expired lease later still gets a receipt: it has ended and owes nothing.
    expect(await b.call('releaseLease', { ...base(randomUUID()), providerLeaseId: stoppedLease.providerLeaseId, leaseMetadata: stoppedLease.metadata })).toEqual({
      providerLeaseId: stoppedLease.providerLeaseId,
      state: 'stopped',
    });
    console.log(`[plugin] killed worker: lease expired ${afterKillMs} ms after the kill (ttl ${ttl} s)`);
  });
});
