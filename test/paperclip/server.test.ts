// End to end with a real Paperclip server (@paperclipai/server 2026.916.1 from npm, on Node 24,
// on its own scratch PostgreSQL database) and a real `berth serve`: the Berth provider plugin
// (packages/paperclip-plugin) installed into Paperclip from its local path, a Paperclip sandbox
// environment with provider `berth` whose leases come from a Berth `local` environment, and a
// `claude_local` agent (a stand-in script for Claude's CLI: no model is called) whose runs use it.
// A run goes through the plugin: Berth holds an active lease for it (metadata.paperclip.runId),
// Paperclip's adapter runs its commands in the lease's workspace through Berth's exec route, and
// the lease ends released with its cleanup done. A Paperclip server SIGKILLed mid-run leaves no
// Berth lease active once the lease's TTL has passed. Runs once, on PostgreSQL.
//
// What this does not show: a run that succeeds. Paperclip's sandbox adapters start a callback
// bridge in the sandbox (`nohup node … &`) and expect it to outlive the command that started it;
// Berth's exec contains every process a command starts and ends them with it, so the bridge never
// answers and Paperclip fails the run at "wait for sandbox callback bridge readiness". The test
// asserts that failure, so that it has to change when that changes.
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { distState } from '../../bin/dist-state.mjs';
import { createScratchDatabase } from '../support/db.js';
import { paperclipPaths, startPaperclipServer, type PaperclipServer } from '../support/paperclip-server.js';
import { startServeProcess, type ServeProcess } from '../support/serve-process.js';
import { waitFor } from '../support/wait.js';

const repo = join(import.meta.dirname, '../..');
const pkg = join(repo, 'packages/paperclip-plugin');
const dir = mkdtempSync(join(tmpdir(), 'berth-paperclip-server-'));
const TTL = 6;

let berthDb: { url: string; drop: () => Promise<void> };
let paperclipDb: { url: string; drop: () => Promise<void> };
let berth: ServeProcess;
let pc: PaperclipServer | undefined;
let key = '';
let berthEnvId = '';
let agentId = '';

interface Lease {
  id: string;
  status: string;
  cleanupStatus: string | null;
  driver: string | null;
  expiresAt: string | null;
  metadata: { paperclip?: Record<string, string> };
  driverState: { cwd?: string } | null;
}

async function leases(): Promise<Lease[]> {
  const r = await berth.call('GET', `/api/environments/${berthEnvId}/leases`, { key });
  expect(r.status, r.text).toBe(200);
  return r.body;
}

async function leaseOfRun(runId: string): Promise<Lease | undefined> {
  return (await leases()).find((l) => l.metadata?.paperclip?.runId === runId);
}

async function wake(): Promise<string> {
  const r = await pc!.call('POST', `/agents/${agentId}/wakeup`, { source: 'on_demand', reason: 'berth end-to-end test' });
  expect(r.status, r.text).toBe(202);
  return r.body.id as string;
}

beforeAll(async () => {
  const paths = paperclipPaths();
  if (!distState().current) {
    const built = spawnSync(process.execPath, ['scripts/build.mjs'], { cwd: repo, encoding: 'utf8' });
    if (built.status !== 0) throw new Error(`build failed: ${built.stdout}${built.stderr}`);
  }
  const tsc = spawnSync(process.execPath, [join(repo, 'node_modules/typescript/bin/tsc'), '-p', pkg], { encoding: 'utf8' });
  if (tsc.status !== 0) throw new Error(`building the plugin failed:\n${tsc.stdout}${tsc.stderr}`);

  berthDb = await createScratchDatabase();
  paperclipDb = await createScratchDatabase();
  const [b, p] = await Promise.all([
    startServeProcess({ BERTH_HOME: join(dir, 'berth'), DATABASE_URL: berthDb.url, BERTH_LOG_LEVEL: 'info' }),
    startPaperclipServer({ home: dir, databaseUrl: paperclipDb.url, paths }),
  ]);
  berth = b;
  pc = p;

  const made = await berth.call('POST', '/api/companies', { body: { name: 'Paperclip server Co' } });
  expect(made.status).toBe(201);
  key = made.body.apiKey;
  const env = await berth.call('POST', `/api/companies/${made.body.company.id}/environments`, { key, body: { name: 'berth-local', driver: 'local' } });
  expect(env.status, env.text).toBe(201);
  berthEnvId = env.body.id;

  // The plugin, from its local path (Paperclip runs its dist/worker.js on the server's Node 24).
  const installed = await pc.call('POST', '/plugins/install', { packageName: pkg, isLocalPath: true });
  expect(installed.status, installed.text).toBe(200);
  expect(installed.body).toMatchObject({ pluginKey: 'berth.sandbox-provider', status: 'ready' });

  const company = await pc.call('POST', '/companies', { name: 'Berth Co' });
  expect(company.status, company.text).toBe(201);
  const pcEnv = await pc.call('POST', `/companies/${company.body.id}/environments`, {
    name: 'berth',
    driver: 'sandbox',
    config: { provider: 'berth', berthUrl: berth.url, apiKey: key, environment: 'berth-local', ttlSeconds: TTL },
  });
  expect(pcEnv.status, pcEnv.text).toBe(201);
  // Paperclip keeps the key as a secret: the environment holds a reference to it, not the key.
  expect(JSON.stringify(pcEnv.body)).not.toContain(key);

  // Claude's CLI stand-in: answers the adapter's --version and --help probes, and a run with stream-json lines.
  const fake = join(dir, 'fake-claude');
  writeFileSync(
    fake,
    [
      '#!/bin/sh',
      'case " $* " in',
      '  *" --version "*) echo "2.1.251 (Claude Code)"; exit 0;;',
      '  *" --help "*) echo "Usage: claude [options]"; exit 0;;',
      'esac',
      'cat >/dev/null',
      'echo \'{"type":"system","subtype":"init","session_id":"s-1","model":"stand-in"}\'',
      'echo \'{"type":"result","subtype":"success","session_id":"s-1","result":"done","usage":{"input_tokens":1,"cache_read_input_tokens":0,"output_tokens":1}}\'',
      '',
    ].join('\n'),
  );
  chmodSync(fake, 0o755);
  const agent = await pc.call('POST', `/companies/${company.body.id}/agents`, {
    name: 'berth-agent',
    adapterType: 'claude_local',
    adapterConfig: { command: fake, engine: 'cli' },
    defaultEnvironmentId: pcEnv.body.id,
  });
  expect(agent.status, agent.text).toBe(201);
  expect(agent.body.defaultEnvironmentId).toBe(pcEnv.body.id);
  agentId = agent.body.id;
}, 180_000);

afterAll(async () => {
  await pc?.kill('SIGTERM');
  await berth?.stop();
  await berthDb?.drop();
  await paperclipDb?.drop();
  rmSync(dir, { recursive: true, force: true });
});

describe('a real Paperclip server with the Berth plugin', () => {
  it("an agent's run takes a Berth lease through the plugin, runs its commands in the lease's workspace, and ends with the lease released and cleaned up", async () => {
    const runId = await wake();
    // While the run holds it: active, with Paperclip's run, agent and adapter in its metadata.
    // (Active from its acquire on; its workspace is in driverState once Berth's driver has made it.)
    const held = await waitFor('the run\'s Berth lease to be active with its workspace', async () => {
      const l = await leaseOfRun(runId);
      return l?.status === 'active' && l.driverState?.cwd ? l : null;
    }, 60_000, 50);
    expect(held.metadata.paperclip).toMatchObject({ runId, agentId, adapterType: 'claude_local' });
    expect(held.driver).toBe('local');
    const workspace = held.driverState?.cwd ?? '';
    expect(workspace).not.toBe('');

    const run = await waitFor('the Paperclip run to end', async () => {
      const r = await pc!.call('GET', `/heartbeat-runs/${runId}`);
      return ['succeeded', 'failed', 'cancelled', 'timed_out'].includes(r.body.status) ? r.body : null;
    }, 90_000, 250);
    // The adapter ran in the lease (its runtime files went into the workspace through Berth's
    // exec) up to the callback bridge, which cannot outlive its command under Berth (see above).
    expect(run.status, JSON.stringify(run)).toBe('failed');
    expect(run.error).toMatch(/sandbox callback bridge readiness/);
    expect(pc!.output()).toContain('Berth lease acquired');
    // Those commands reached Berth as exec calls on this lease (its request log names each one).
    const execs = berth.output().split('\n').filter((l) => l.includes(`"url":"/api/environment-leases/${held.id}/exec"`) && l.includes('"status":200'));
    expect(execs.length).toBeGreaterThan(5);

    // Released by Paperclip through the plugin, whose receipt waits for Berth's cleanup.
    const ended = await waitFor('the Berth lease to end and its cleanup to finish', async () => {
      const l = await leaseOfRun(runId);
      return l && l.status !== 'active' && l.cleanupStatus !== 'pending' ? l : null;
    }, 60_000, 100);
    expect(ended).toMatchObject({ status: 'released', cleanupStatus: 'success', driver: 'local' });
    expect(existsSync(workspace)).toBe(false);
    // The plugin's release returned its receipt once Berth had cleaned up (the worker logs it through Paperclip).
    await waitFor('the plugin to log its receipt', async () => pc!.output().includes(`"berthLeaseId":"${held.id}","status":"released","cleanupStatus":"success"`), 15_000, 100);
  }, 150_000);

  it('a Paperclip server SIGKILLed mid-run leaves no Berth lease active after its TTL', async () => {
    const runId = await wake();
    const held = await waitFor('the second run\'s Berth lease to be active', async () => {
      const l = await leaseOfRun(runId);
      return l?.status === 'active' ? l : null;
    }, 60_000, 50);
    await pc!.kill('SIGKILL');
    // Nobody renews it any more (the plugin's worker went with its server): Berth expires it.
    const gone = await waitFor('the Berth lease to stop being active', async () => {
      const l = (await leases()).find((x) => x.id === held.id);
      return l && l.status !== 'active' ? l : null;
    }, (TTL + 20) * 1000, 250);
    expect(gone.status).toBe('expired');
    expect((await leases()).filter((l) => l.status === 'active')).toEqual([]);
    // The expired lease's workspace is cleaned up by Berth too.
    await waitFor('the expired lease\'s cleanup', async () => {
      const l = (await leases()).find((x) => x.id === held.id);
      return l?.cleanupStatus === 'success' ? l : null;
    }, 30_000, 250);
    pc = undefined;
  }, 120_000);
});
