// Paperclip's own CLI (`paperclipai` 2026.916.1 from npm, on Node 24 from npm:
// scripts/engines/paperclip.sh) against a real `berth serve`: every environment, lease,
// agent, run and heartbeat command whose subject Berth has, as a Paperclip user types it
// (`--api-base URL --api-key KEY`). Each must exit 0 with what Berth holds; a refusal
// must print Berth's reason, not "Request failed with status N". An agent's own process
// runs the same CLI with its run token (PAPERCLIP_API_URL, PAPERCLIP_API_KEY) and sees
// itself, and the wake context it was invoked with. Runs once, on PostgreSQL.
import { execFile, spawnSync } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { distState } from '../../bin/dist-state.mjs';
import { createScratchDatabase } from '../support/db.js';
import { startServeProcess, type ServeProcess } from '../support/serve-process.js';
import { waitFor } from '../support/wait.js';

const run = promisify(execFile);
const repo = join(import.meta.dirname, '../..');
const dir = mkdtempSync(join(tmpdir(), 'berth-paperclip-cli-'));

function paperclip(): { cli: string; node: string } {
  const cli = process.env.BERTH_TEST_PAPERCLIP_CLI ?? '';
  const node = process.env.BERTH_TEST_NODE24 ?? '';
  try {
    accessSync(cli, constants.R_OK);
    accessSync(node, constants.X_OK);
  } catch {
    throw new Error(
      `no Paperclip CLI (BERTH_TEST_PAPERCLIP_CLI=${cli || 'unset'}, BERTH_TEST_NODE24=${node || 'unset'}): this test needs scripts/engines/paperclip.sh (berth_ensure_paperclip)`,
    );
  }
  return { cli, node };
}

let pc: { cli: string; node: string };
let scratch: { url: string; drop: () => Promise<void> };
let berth: ServeProcess;
let key = '';
let companyId = '';
let agentId = '';
let localId = '';

/** `paperclipai <args> --api-base <berth> --api-key <key>`: its exit code and output. */
async function cli(args: string[], o: { key?: string | null; json?: boolean } = {}): Promise<{ code: number; out: string; err: string; json: any }> {
  const auth = o.key === null ? [] : ['--api-key', o.key ?? key];
  const argv = [pc.cli, ...args, '--api-base', berth.url, ...auth, ...(o.json === false ? [] : ['--json'])];
  let code = 0;
  let out = '';
  let err = '';
  try {
    ({ stdout: out, stderr: err } = await run(pc.node, argv, { env: { PATH: process.env.PATH ?? '', HOME: dir, PAPERCLIP_HOME: join(dir, 'pc-home'), NO_COLOR: '1' }, timeout: 60_000 }));
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string };
    code = typeof x.code === 'number' ? x.code : 1;
    out = x.stdout ?? '';
    err = x.stderr ?? '';
  }
  let json: unknown = null;
  try {
    json = JSON.parse(out);
  } catch {
    /* not JSON */
  }
  return { code, out, err, json };
}

/** Exit 0, or fail with what the CLI printed. */
async function ok(args: string[], o: { key?: string | null; json?: boolean } = {}) {
  const r = await cli(args, o);
  expect(r.code, `paperclipai ${args.join(' ')}:\n${r.out}\n${r.err}`).toBe(0);
  return r;
}

beforeAll(async () => {
  pc = paperclip();
  if (!distState().current) {
    const built = spawnSync(process.execPath, ['scripts/build.mjs'], { cwd: repo, encoding: 'utf8' });
    if (built.status !== 0) throw new Error(`build failed: ${built.stdout}${built.stderr}`);
  }
  scratch = await createScratchDatabase();
  berth = await startServeProcess({ BERTH_HOME: join(dir, 'home'), DATABASE_URL: scratch.url, BERTH_LOG_LEVEL: 'info' });
  const made = await berth.call('POST', '/api/companies', { body: { name: 'Paperclip CLI Co' } });
  expect(made.status).toBe(201);
  key = made.body.apiKey;
  companyId = made.body.company.id;
  // The agent runs Paperclip's CLI itself, with the run's own token, and says what it was woken for.
  const script = [
    'echo "task=$PAPERCLIP_TASK_ID reason=$PAPERCLIP_WAKE_REASON payload=$PAPERCLIP_WAKE_PAYLOAD_JSON"',
    'echo "runtime=$PAPERCLIP_RUNTIME_API_URL api=$PAPERCLIP_API_URL"',
    '"$PC_NODE" "$PC_CLI" agent me --json | tr -d "\\n "; echo',
    'echo agent-done',
  ].join('; ');
  const agent = await berth.call('POST', `/api/companies/${companyId}/agents`, {
    key,
    body: {
      name: 'clip',
      adapterType: 'process',
      adapterConfig: { command: 'sh', args: ['-c', script], env: { PC_NODE: pc.node, PC_CLI: pc.cli, PAPERCLIP_HOME: join(dir, 'agent-pc-home') }, timeoutSec: 60 },
    },
  });
  expect(agent.status, JSON.stringify(agent.body)).toBe(201);
  agentId = agent.body.id;
  const envs = await berth.call('GET', `/api/companies/${companyId}/environments`, { key });
  localId = envs.body.find((e: { driver: string }) => e.driver === 'local')?.id;
  if (!localId) {
    const local = await berth.call('POST', `/api/companies/${companyId}/environments`, { key, body: { name: 'Local', driver: 'local' } });
    localId = local.body.id;
  }
}, 180_000);

afterAll(async () => {
  await berth?.stop();
  await scratch?.drop();
  rmSync(dir, { recursive: true, force: true });
});

async function finished(runId: string) {
  return waitFor(
    `run ${runId} to finish`,
    async () => {
      const r = await berth.call('GET', `/api/heartbeat-runs/${runId}`, { key });
      return ['succeeded', 'failed', 'cancelled', 'timed_out'].includes(r.body.status) ? r.body : null;
    },
    60_000,
    100,
  );
}

describe("Paperclip's CLI against berth serve", () => {
  it('health', async () => {
    const r = await ok(['health']);
    expect(r.json).toMatchObject({ status: 'ok', ok: true });
  });

  it('environment list, get, capabilities, update, probe, probe-config, create, delete (and the blast radius of a delete)', async () => {
    const list = await ok(['environment', 'list', '-C', companyId]);
    expect(list.json.map((e: { id: string }) => e.id)).toContain(localId);
    expect((await ok(['environment', 'get', localId])).json).toMatchObject({ id: localId, driver: 'local' });
    const caps = await ok(['environment', 'capabilities', '-C', companyId]);
    expect(caps.json.drivers).toMatchObject({ local: 'supported', ssh: 'supported' });
    expect(caps.json.adapters.find((a: { adapterType: string }) => a.adapterType === 'process').drivers.local).toBe('supported');
    expect((await ok(['environment', 'update', localId, '--payload-json', '{"description":"set by paperclipai"}'])).json.description).toBe('set by paperclipai');
    // Paperclip's probe sends {}: the saved probe answers with its driver and a summary.
    const probe = await ok(['environment', 'probe', localId]);
    expect(probe.json).toMatchObject({ ok: true, driver: 'local' });
    expect(probe.json.summary).toMatch(/answered in/);
    const unsaved = await ok(['environment', 'probe-config', '-C', companyId, '--payload-json', '{"driver":"local","config":{}}']);
    expect(unsaved.json).toMatchObject({ ok: true, driver: 'local' });
    // A config its driver refuses: the reason reaches the user, not only a status.
    const bad = await cli(['environment', 'probe-config', '-C', companyId, '--payload-json', '{"driver":"ssh","config":{"host":""}}']);
    expect(bad.code).toBe(1);
    expect(bad.err).toMatch(/API error 422: invalid probe config: config\./);
    expect(bad.err).not.toMatch(/Request failed with status/);
    const made = await ok(['environment', 'create', '-C', companyId, '--payload-json', '{"name":"from-paperclip","driver":"sandbox","config":{"provider":"p"}}']);
    expect(made.json).toMatchObject({ name: 'from-paperclip', driver: 'sandbox' });
    const taken = await cli(['environment', 'create', '-C', companyId, '--payload-json', '{"name":"from-paperclip","driver":"sandbox","config":{"provider":"p"}}']);
    expect(taken.err).toMatch(/API error 409: .*from-paperclip/);
    const blast = await berth.call('GET', `/api/environments/${made.json.id}/delete-blast-radius`, { key });
    expect(blast.body).toMatchObject({ canDelete: true, deleteBlockedReasons: [] });
    const localBlast = await berth.call('GET', `/api/environments/${localId}/delete-blast-radius`, { key });
    expect(localBlast.body.canDelete).toBe(false);
    expect(localBlast.body.deleteBlockedReasons.join(' ')).toMatch(/Local environment/);
    await ok(['environment', 'delete', made.json.id]);
    expect((await berth.call('GET', `/api/environments/${made.json.id}`, { key })).status).toBe(404);
  });

  it('agent list, get, pause (a wake refused with the reason), resume', async () => {
    expect((await ok(['agent', 'list', '-C', companyId])).json.map((a: { id: string }) => a.id)).toContain(agentId);
    expect((await ok(['agent', 'get', agentId])).json).toMatchObject({ id: agentId, name: 'clip' });
    expect((await ok(['agent', 'pause', agentId])).json.status).toBe('paused');
    const refused = await cli(['agent', 'wake', agentId]);
    expect(refused.code).toBe(1);
    expect(refused.err).toMatch(/API error 409: agent .* is paused/);
    expect((await ok(['agent', 'resume', agentId])).json.status).toBe('active');
  });

  it('agent wake (by name, with reason, payload and an idempotency key) runs the agent with its wake context; the agent sees itself with its run token', async () => {
    const args = ['agent', 'wake', 'clip', '-C', companyId, '--reason', 'issue_assigned', '--payload', '{"issueId":"ISS-7"}', '--idempotency-key', 'wake-once'];
    const woke = await ok(args);
    const runId = woke.json.id as string;
    expect(woke.json).toMatchObject({ agentId, status: 'queued' });
    expect(woke.json.contextSnapshot).toMatchObject({ wakeReason: 'issue_assigned', issueId: 'ISS-7', taskId: 'ISS-7', paperclipWake: { issueId: 'ISS-7' } });
    // The same key again: the same run, nothing new queued.
    expect((await ok(args)).json.id).toBe(runId);
    const done = await finished(runId);
    expect(done.status, JSON.stringify(done)).toBe('succeeded');
    const log = await ok(['run', 'log', runId]);
    const lines = (log.json.content as string).trim().split('\n').map((l) => JSON.parse(l) as { stream: string; chunk: string });
    const text = lines.map((l) => l.chunk).join('');
    expect(text).toContain('task=ISS-7 reason=issue_assigned payload={"issueId":"ISS-7"}');
    expect(text).toMatch(/runtime=http:\/\/127\.0\.0\.1:\d+ api=http:\/\/127\.0\.0\.1:\d+/);
    // `paperclipai agent me` inside the run: its own agent, through its run token.
    expect(text).toContain(`"id":"${agentId}"`);
    expect(text).toContain(`"runId":"${runId}"`);
    expect(text).toContain('agent-done');
    // Paged by bytes: each page whole lines, the pages together the whole log, in order.
    let offset = 0;
    let paged = '';
    for (let i = 0; i < 100; i++) {
      const page = await ok(['run', 'log', runId, '--offset', String(offset), '--limit-bytes', '64']);
      if (page.json.content === '') break;
      expect(page.json.content.endsWith('\n')).toBe(true);
      paged += page.json.content;
      offset = page.json.nextOffset;
    }
    expect(paged).toBe(log.json.content);
    expect(offset).toBe(Buffer.byteLength(log.json.content));
  });

  it('agent me with a company key says why it cannot answer', async () => {
    const r = await cli(['agent', 'me']);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/API error 401: agent authentication required/);
  });

  it('heartbeat run: invokes, streams the status and the log, and ends with the run status', async () => {
    const r = await cli(['heartbeat', 'run', '-a', agentId, '--timeout-ms', '60000'], { json: false });
    expect(r.code, r.out + r.err).toBe(0);
    expect(r.out).toMatch(/Invoked heartbeat run [0-9a-f-]{36} for agent clip/);
    expect(r.out).toContain('[status] queued');
    expect(r.out).toMatch(/lease [0-9a-f-]{36} acquired/);
    expect(r.out).toMatch(/Run [0-9a-f-]{36} completed with status succeeded/);
  });

  it('agent heartbeat:invoke, run list, get, events, cancel; environment leases and lease', async () => {
    const invoked = await ok(['agent', 'heartbeat:invoke', agentId]);
    const runId = invoked.json.id as string;
    expect((await ok(['run', 'list', '-C', companyId, '--agent-id', agentId])).json.map((x: { id: string }) => x.id)).toContain(runId);
    expect((await ok(['run', 'get', runId])).json.id).toBe(runId);
    const done = await finished(runId);
    const events = await ok(['run', 'events', runId]);
    const statuses = events.json.filter((e: { eventType: string }) => e.eventType === 'heartbeat.run.status').map((e: { payload: { status: string } }) => e.payload.status);
    expect(statuses).toEqual(['queued', done.status]);
    expect(events.json.some((e: { eventType: string }) => e.eventType === 'environment.lease_acquired')).toBe(true);
    const after = await ok(['run', 'events', runId, '--after-seq', String(events.json[0].seq)]);
    expect(after.json.length).toBe(events.json.length - 1);
    // Cancel of a finished run changes nothing and says so with the run.
    expect((await ok(['run', 'cancel', runId])).json).toMatchObject({ id: runId, status: done.status });
    const leases = await ok(['environment', 'leases', localId]);
    const lease = leases.json.find((l: { heartbeatRunId: string }) => l.heartbeatRunId === runId);
    expect(lease).toBeTruthy();
    expect((await ok(['environment', 'lease', lease.id])).json).toMatchObject({ id: lease.id, environmentId: localId });
  });

  it('run cancel of a running run: it ends cancelled, its process gone', async () => {
    const sleeper = await berth.call('POST', `/api/companies/${companyId}/agents`, {
      key,
      body: { name: 'sleeper', adapterType: 'process', adapterConfig: { command: 'sh', args: ['-c', 'echo started; sleep 30'], graceSec: 1 } },
    });
    const woke = await ok(['agent', 'wake', 'sleeper', '-C', companyId]);
    const runId = woke.json.id as string;
    await waitFor('the sleeper to run', async () => (await berth.call('GET', `/api/heartbeat-runs/${runId}`, { key })).body.status === 'running', 30_000, 100);
    const cancelled = await ok(['run', 'cancel', runId]);
    expect(cancelled.json.id).toBe(runId);
    const done = await finished(runId);
    expect(done.status).toBe('cancelled');
    expect(done.agentId).toBe(sleeper.body.id);
    expect(spawnSync('pgrep', ['-f', 'echo started; sleep 30']).status).toBe(1);
  });
});
