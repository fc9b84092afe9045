// The README's quick start, end to end with the real processes: `npm start` (the
// server on the embedded database with the demo), then the real CLI (`npx berth`,
// called here as the compiled bin it runs, without npx's own start-up): `berth run demo`,
// listings, a bad request, SIGTERM mid-run, and the CLI with no server.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { distState } from '../../bin/dist-state.mjs';
import { openDatabase } from '../../src/db/client.js';
import { createServices } from '../../src/services/index.js';
import { waitFor } from '../support/wait.js';

const repo = join(import.meta.dirname, '../..');
const home = mkdtempSync(join(tmpdir(), 'berth-quickstart-'));
const env = { ...process.env, BERTH_HOME: home, DATABASE_URL: '', BERTH_API_KEY: '', BERTH_URL: '', BERTH_LOG_FORMAT: 'json', NO_COLOR: '1' };
delete (env as Record<string, string | undefined>).TEST_DATABASE_URL;
let server: ChildProcess;
let out = '';

const bin = join(repo, 'bin/berth.mjs');

function berth(...args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { cwd: repo, env, encoding: 'utf8', timeout: 30_000 });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(async () => {
  // What the README's user runs: the build `npm ci` made. Built here when the sources
  // are newer (a direct vitest run after an edit), so the test never runs a stale one.
  if (!distState().current) {
    const built = spawnSync(process.execPath, ['scripts/build.mjs'], { cwd: repo, encoding: 'utf8' });
    if (built.status !== 0) throw new Error(`npm run build failed: ${built.stdout}${built.stderr}`);
  }
  expect(distState()).toEqual({ current: true });
  server = spawn('npm', ['start', '--', '--port', '0', '--grace', '1'], { cwd: repo, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  server.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  server.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  await waitFor('the demo run in the banner', async () => out.includes('demo run:') && out.includes('try:'), 60_000, 100);
});
afterAll(async () => {
  if (server.exitCode === null) process.kill(-server.pid!, 'SIGKILL');
  rmSync(home, { recursive: true, force: true });
});

describe('quick start', () => {
  it('npm start serves on the embedded database with a demo company and agent, and shows a run through a lease', () => {
    expect(out).toMatch(/Berth is serving at http:\/\/127\.0\.0\.1:\d+ +\(pglite: /);
    expect(out).toMatch(/API key: +bk_/);
    expect(out).toMatch(/demo run: +succeeded in \d+ ms on Local, lease [0-9a-f-]{36} acquired \(fence \d+\) and released/);
    expect(statSync(join(home, 'admin.key')).mode & 0o777).toBe(0o600);
    expect(statSync(join(home, 'credentials.json')).mode & 0o777).toBe(0o600);
  });

  it('npx berth run demo runs through the Local environment, its lease acquired and released', () => {
    const r = berth('run', 'demo');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('hello from the demo agent');
    expect(r.stdout).toMatch(/my lease is active \(policy ephemeral\)/);
    expect(r.stdout).toContain('done');
    expect(r.stderr).toMatch(/environment Local \(local\) · lease ([0-9a-f-]{36}) acquired, fence \d+/);
    expect(r.stderr).toMatch(/lease [0-9a-f-]{36} released · cleanup success/);
    expect(r.stderr).toMatch(/run [0-9a-f-]{36} succeeded in/);
  });

  it('lists as tables or JSON, and a bad field is a message and a non-zero exit', () => {
    const table = berth('env', 'list');
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/^NAME +DRIVER +STATUS/);
    expect(table.stdout).not.toContain('\u001b['); // no colour when not on a terminal
    const json = JSON.parse(berth('env', 'list', '--json').stdout) as Array<{ name: string; driver: string }>;
    expect(json.map((e) => e.driver)).toEqual(['local']);
    const runs = JSON.parse(berth('runs', 'list', '--json').stdout) as Array<{ status: string }>;
    expect(runs.length).toBeGreaterThanOrEqual(2);
    expect(JSON.parse(berth('activity', '--json', '--limit', '5').stdout)).toHaveLength(5);

    const drivers = berth('env', 'drivers');
    expect(drivers.code, drivers.stderr).toBe(0);
    expect(drivers.stdout).toMatch(/^KIND +WHAT +RUNS HERE/);
    expect(drivers.stdout).toMatch(/^local +this machine +yes/m);
    expect(drivers.stdout).toMatch(/^sandbox +.* no /m);
    const unknown = berth('env', 'create', 'x', '--driver', 'nope');
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toContain('HTTP 422');
    expect(unknown.stderr).toMatch(/driver: must be one of local, ssh/);

    const bad = berth('env', 'create', 'remote', '--driver', 'ssh', '--host', 'h', '--user', 'u', '--workspace', 'relative/path', '--no-strict-host-key-checking');
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/config\.remoteWorkspacePath: must be an absolute path/);
    expect(bad.stderr).toContain('HTTP 422');
    const failing = berth('agent', 'create', 'failing', '--command', 'sh', '--arg', '-c', '--arg', 'echo oops >&2; exit 3');
    expect(failing.code, failing.stderr).toBe(0);
    const ran = berth('run', 'failing');
    expect(ran.code).toBe(3);
    expect(ran.stderr).toContain('oops');
    expect(ran.stderr).toMatch(/lease [0-9a-f-]{36} failed/);
  });

  it('walks every CLI command a user has: companies, environments, leases, agents, runs, activity', () => {
    const made = berth('company', 'create', 'Other Co', '--json');
    expect(made.code, made.stderr).toBe(0);
    const other = JSON.parse(made.stdout) as { company: { id: string }; apiKey: string };
    expect(other.apiKey).toMatch(/^bk_/);
    const asOther = spawnSync(process.execPath, [bin, 'env', 'list', '--json'], { cwd: repo, env: { ...env, BERTH_API_KEY: other.apiKey }, encoding: 'utf8' });
    expect(JSON.parse(asOther.stdout)).toEqual([]); // the new company sees nothing of Demo
    expect(berth('company', 'list').stdout).toContain('Other Co');

    expect(berth('env', 'create', 'pool', '--driver', 'sandbox', '--config', '{"provider":"acme"}', '--capacity', '2', '--env', 'TOKEN=s3cret').code).toBe(0);
    const shown = berth('env', 'show', 'pool');
    expect(shown.stdout).toMatch(/capacity +2/);
    expect(shown.stdout).toContain('TOKEN');
    expect(shown.stdout).not.toContain('s3cret');
    const probe = berth('env', 'probe', 'Local');
    expect(probe.code).toBe(0);
    expect(probe.stdout).toMatch(/Local: ok in [\d.]+ ms/);
    expect(berth('env', 'show', 'Local', '--json').stdout).toContain('"lastProbe"');

    // env update changes only what it is given; bad input is a message, a non-zero exit, and no change.
    const updated = berth('env', 'update', 'pool', '--capacity', '3', '--metadata', '{"retentionSeconds":60}', '--description', 'three now');
    expect(updated.code, updated.stderr).toBe(0);
    expect(updated.stdout).toMatch(/capacity +3/);
    expect(updated.stdout).toContain('three now');
    expect(berth('env', 'show', 'pool').stdout).toContain('TOKEN');
    const notJson = berth('env', 'update', 'pool', '--metadata', '[1]');
    expect(notJson.code).not.toBe(0);
    expect(notJson.stderr).toContain('--metadata must be a JSON object');
    const badCapacity = berth('env', 'update', 'pool', '--capacity', '-2');
    expect(badCapacity.code).not.toBe(0);
    expect(badCapacity.stderr).toMatch(/capacity/);
    expect(berth('env', 'update', 'pool').stderr).toContain('nothing to change');
    expect(berth('env', 'show', 'pool').stdout).toMatch(/capacity +3/);

    const leases = JSON.parse(berth('lease', 'list', 'Local', '--json').stdout) as Array<{ id: string; status: string }>;
    expect(leases.length).toBeGreaterThanOrEqual(2);
    const released = leases.find((l) => l.status === 'released')!;
    expect(berth('lease', 'show', released.id).stdout).toMatch(/status +released/);
    const again = berth('lease', 'release', released.id);
    expect(again.stdout).toMatch(/had already ended: released/);

    expect(berth('agent', 'list').stdout).toMatch(/demo +process +active/);
    expect(berth('runs', 'list').stdout).toMatch(/demo +succeeded +on_demand/);
    expect(berth('activity', '--action', 'environment.lease_released').stdout).toContain('environment.lease_released');

    expect(berth('env', 'archive', 'pool').stdout).toContain('archived pool');
    expect(berth('env', 'delete', 'pool').stdout).toContain('deleted pool');
    const refused = berth('env', 'delete', 'Local');
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/cannot be deleted: it is the company's Local environment/);
    expect(berth('env', 'show', 'nope').stderr).toMatch(/^berth: no environment named "nope"/);
  });

  it('on SIGTERM the server cancels what still runs after the grace period and leaves no lease active', async () => {
    expect(berth('agent', 'create', 'sleeper', '--grace', '0', '--', 'sh', '-c', 'echo sleeping; sleep 60').code).toBe(0);
    // A user follows it with `berth run` in another terminal.
    const follower = spawn(process.execPath, [bin, 'run', 'sleeper'], { cwd: repo, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let followed = '';
    follower.stdout!.on('data', (d: Buffer) => (followed += d.toString()));
    follower.stderr!.on('data', (d: Buffer) => (followed += d.toString()));
    const followerExit = new Promise<number | null>((resolve) => follower.once('exit', (c) => resolve(c)));
    await waitFor('the sleeper to run', async () => followed.includes('sleeping'), 30_000, 100);
    const runId = /run ([0-9a-f-]{36}) of sleeper queued/.exec(followed)![1]!;
    // SIGTERM to the server process itself (npm, its parent, then exits with its code).
    const { pid } = JSON.parse(readFileSync(join(home, 'server.json'), 'utf8')) as { pid: number };
    process.kill(pid, 'SIGTERM');
    const code = await new Promise<number | null>((resolve) => server.once('exit', (c) => resolve(c)));
    expect(code).toBe(0);
    // The follower saw the end of the run, and exits as a cancelled run does.
    expect(await followerExit).toBe(130);
    expect(followed).toMatch(/run [0-9a-f-]{36} cancelled/);

    const db = await openDatabase({ databaseUrl: '', dataDir: join(home, 'db') });
    try {
      const s = createServices(db.db);
      const [company] = await s.companies.list();
      const run = await s.runs.get(company!.id, runId);
      expect(run.status).toBe('cancelled');
      const local = await s.environments.ensureLocalEnvironment(company!.id);
      const active = await s.leases.listByEnvironment(company!.id, local.id, { status: 'active' });
      expect(active.items).toEqual([]);
    } finally {
      await db.close();
    }
  });

  it('with no server running, the CLI says so in one line and exits non-zero', () => {
    const r = berth('env', 'list');
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^berth: no Berth server answers at http:\/\/127\.0\.0\.1:\d+/);
  });
});
