// The install that ships: `npm pack` of this package installs into an empty directory
// (`npm install ./berth-*.tgz`, from the npm cache when it holds the dependencies), and
// there `npx berth serve --demo` serves from the compiled JavaScript: no sources, no tsx,
// no tests in the package. A small .mjs in that directory imports `berth/client` and
// calls the server with it (so does the README's example, run as written), and a .ts
// consumer typechecks against the shipped declarations.
// On the postgres project the installed server runs on a database of its own (DATABASE_URL).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { distState } from '../../bin/dist-state.mjs';
import { createScratchDatabase, testBackend } from '../support/db.js';
import { waitFor } from '../support/wait.js';

const repo = join(import.meta.dirname, '../..');
const work = mkdtempSync(join(tmpdir(), 'berth-pack-'));
const app = join(work, 'app');
const home = join(work, 'home');
let server: ChildProcess | null = null;
let output = '';
let drop: (() => Promise<void>) | null = null;
let databaseUrl = '';

function sh(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env) {
  const r = spawnSync(cmd, args, { cwd, env, encoding: 'utf8', timeout: 240_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** The environment of the installed berth: nothing of this repository's (no TEST_*, no NODE_OPTIONS). */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const k of ['PATH', 'HOME', 'TMPDIR', 'LANG', 'npm_config_cache']) if (process.env[k] !== undefined) env[k] = process.env[k];
  return { ...env, BERTH_HOME: home, NO_COLOR: '1', BERTH_LOG_LEVEL: 'warn', DATABASE_URL: databaseUrl, ...extra };
}

beforeAll(async () => {
  if (testBackend() === 'postgres') {
    const scratch = await createScratchDatabase();
    databaseUrl = scratch.url;
    drop = scratch.drop;
  }
  if (!distState().current) sh(process.execPath, ['scripts/build.mjs'], repo);
  expect(distState()).toEqual({ current: true });
  // dist/ is current: pack it as it is (the prepare script would build it again).
  const packed = JSON.parse(sh('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', work], repo)) as Array<{ filename: string }>;
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), `${JSON.stringify({ name: 'berth-install-check', private: true, type: 'module' })}\n`);
  sh('npm', ['install', join(work, packed[0]!.filename), '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], app, cleanEnv());
}, 300_000);

afterAll(async () => {
  if (server?.pid && server.exitCode === null) {
    try {
      process.kill(-server.pid, 'SIGTERM');
    } catch {
      /* gone */
    }
    await new Promise((r) => (server!.exitCode !== null ? r(null) : server!.once('exit', r)));
  }
  rmSync(work, { recursive: true, force: true });
  await drop?.();
});

describe('the packed package', () => {
  it('holds the compiled build, its migrations, the dashboard and the bin, and no sources or tests', () => {
    const pkg = join(app, 'node_modules/berth');
    for (const f of ['bin/berth.mjs', 'dist/cli/main.js', 'dist/server/demo.js', 'dist/db/migrations/meta/_journal.json', 'dist/web/index.html', 'dist/web/app.js', 'dist/client/index.js', 'dist/client/index.d.ts', 'dist/client/schema.gen.d.ts', 'scripts/demo-agent.mjs']) {
      expect(existsSync(join(pkg, f)), f).toBe(true);
    }
    const migrations = readdirSync(join(repo, 'src/db/migrations')).filter((f) => f.endsWith('.sql'));
    expect(readdirSync(join(pkg, 'dist/db/migrations')).filter((f) => f.endsWith('.sql'))).toEqual(migrations);
    expect(readdirSync(pkg).sort()).toEqual(['README.md', 'bin', 'dist', 'package.json', 'scripts']);
    expect(readdirSync(join(pkg, 'scripts'))).toEqual(['demo-agent.mjs']);
    const all = (dir: string): string[] => readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? all(join(dir, e.name)) : [join(dir, e.name)]));
    expect(all(pkg).filter((f) => /\.test\.|\/test\/|\.ts$/.test(f.slice(pkg.length)) && !f.endsWith('.d.ts'))).toEqual([]);
    // Nothing runs TypeScript at run time: tsx is not even installed.
    expect(existsSync(join(app, 'node_modules/tsx'))).toBe(false);
    expect(existsSync(join(app, 'node_modules/typescript'))).toBe(false);
  });

  it('npx berth serve --demo serves from compiled JavaScript; the CLI and berth/client call it', async () => {
    server = spawn('npx', ['--offline', 'berth', 'serve', '--demo', '--port', '0'], { cwd: app, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    server.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    server.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    const url = await waitFor(
      'the installed berth to serve and finish its demo run',
      async () => {
        if (server!.exitCode !== null) throw new Error(`berth serve exited ${server!.exitCode}:\n${output}`);
        return /demo run:/.test(output) ? /Berth is serving at (http:\/\/[^\s]+)/.exec(output)?.[1] ?? null : null;
      },
      120_000,
      100,
    );
    expect(output).not.toContain('running the TypeScript sources');
    expect(output).toContain(testBackend() === 'postgres' ? '(postgres:' : '(pglite:');
    expect(/demo run:\s+(.*)/.exec(output)?.[1]).toMatch(/succeeded/);

    const health = (await (await fetch(`${url}/health`)).json()) as { ok: boolean; version: string };
    expect(health).toMatchObject({ ok: true, version: '0.1.0' });
    const creds = JSON.parse(readFileSync(join(home, 'credentials.json'), 'utf8')) as { apiKey: string; companyId: string };
    const envs = await fetch(`${url}/api/companies/${creds.companyId}/environments`, { headers: { authorization: `Bearer ${creds.apiKey}` } });
    expect(envs.status).toBe(200);
    expect(((await envs.json()) as Array<{ driver: string }>).map((e) => e.driver)).toContain('local');

    // The installed CLI, through the credentials the demo saved.
    const listed = sh('npx', ['--offline', 'berth', 'env', 'list', '--json'], app, cleanEnv());
    expect((JSON.parse(listed) as Array<{ driver: string }>).map((e) => e.driver)).toContain('local');

    // berth/client from a program of the user's own.
    writeFileSync(
      join(app, 'use-client.mjs'),
      `import { createClient, BerthApiError } from 'berth/client';
const [url, apiKey, companyId] = process.argv.slice(2);
const berth = createClient({ baseUrl: url, apiKey });
const { data: agents } = await berth.GET('/api/companies/{companyId}/agents', { params: { path: { companyId } } });
const demo = agents.find((a) => a.name === 'demo');
const { data: run } = await berth.POST('/api/agents/{id}/wakeup', { params: { path: { id: demo.id } }, body: { source: 'on_demand' } });
const log = [];
for await (const ev of berth.followLog(run.id)) if (ev.event === 'log') log.push(ev.data.chunk);
const done = await berth.waitForRun(run.id, { timeoutMs: 30000 });
const envs = (await berth.GET('/api/companies/{companyId}/environments', { params: { path: { companyId } } })).data;
const lease = await berth.acquireLease(envs.find((e) => e.driver === 'local').id);
await berth.POST('/api/environment-leases/{leaseId}/release', { params: { path: { leaseId: lease.lease.id } }, body: { fence: lease.lease.fence, status: 'released' } });
const refused = await berth.GET('/api/agents/{id}', { params: { path: { id: 'not-a-uuid' } } }).catch((e) => e);
console.log(JSON.stringify({ status: done.status, logged: log.join('').length, leaseKey: lease.lease.idempotencyKey, refused: refused instanceof BerthApiError ? [refused.status, refused.code] : String(refused) }));
`,
    );
    const result = JSON.parse(sh(process.execPath, ['use-client.mjs', url, creds.apiKey, creds.companyId], app, cleanEnv())) as { status: string; logged: number; leaseKey: string; refused: [number, string] };
    expect(result.status).toBe('succeeded');
    expect(result.logged).toBeGreaterThan(0);
    expect(result.leaseKey).toMatch(/^[0-9a-f-]{36}$/);
    expect(result.refused[0]).toBeGreaterThanOrEqual(400);
    expect(result.refused[0]).toBeLessThan(500);

    // The README's example, as it is written there.
    const readme = readFileSync(join(repo, 'README.md'), 'utf8');
    const example = /### Typed client[\s\S]*?```js\n([\s\S]*?)```/.exec(readme)?.[1];
    expect(example, 'README: a js block under ### Typed client').toBeTruthy();
    writeFileSync(join(app, 'run-demo.mjs'), example!);
    const printed = sh(process.execPath, ['run-demo.mjs'], app, cleanEnv({ BERTH_URL: url, BERTH_API_KEY: creds.apiKey, BERTH_COMPANY_ID: creds.companyId }));
    expect(printed).toMatch(/^run [0-9a-f-]{36} succeeded$/m);
    expect(printed).toMatch(/^lease [0-9a-f-]{36} \(key [0-9a-f-]{36}\) released$/m);
    expect(printed).toMatch(/^refused: HTTP 404 not_found$/m);
  }, 240_000);

  it('berth/client typechecks from the shipped declarations (a route that does not exist does not)', () => {
    writeFileSync(
      join(app, 'tsconfig.json'),
      JSON.stringify({ compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, lib: ['ES2022', 'DOM', 'DOM.Iterable'], types: [] }, include: ['*.ts'] }),
    );
    writeFileSync(
      join(app, 'good.ts'),
      `import { createClient, BerthApiError, type HeartbeatRun } from 'berth/client';
const berth = createClient({ baseUrl: 'http://127.0.0.1:3710', apiKey: 'bk_x' });
export async function f(id: string): Promise<[string, HeartbeatRun, boolean]> {
  const { data } = await berth.GET('/api/environments/{id}', { params: { path: { id } } });
  const run = await berth.waitForRun(id);
  return [data.name, run, new BerthApiError(400, 'invalid', 'x') instanceof Error];
}
`,
    );
    const tsc = join(repo, 'node_modules/typescript/bin/tsc');
    const ok = spawnSync(process.execPath, [tsc, '-p', app], { cwd: app, encoding: 'utf8' });
    expect(ok.status, ok.stdout + ok.stderr).toBe(0);
    writeFileSync(join(app, 'bad.ts'), `import { createClient } from 'berth/client';\nexport const p = createClient({ baseUrl: 'http://x' }).GET('/api/no-such-route');\n`);
    const bad = spawnSync(process.execPath, [tsc, '-p', app], { cwd: app, encoding: 'utf8' });
    expect(bad.status).not.toBe(0);
    expect(bad.stdout).toContain('bad.ts');
    rmSync(join(app, 'bad.ts'));
  });
});
