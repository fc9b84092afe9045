// The CLI starts light: `berth --help` and a client command (which only talks HTTP) run
// the compiled build and load neither the server, the database nor the validation
// libraries; only `berth serve` does (its modules are imported inside its action).
import { spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { distState } from '../../bin/dist-state.mjs';

const repo = join(import.meta.dirname, '../..');
const work = mkdtempSync(join(tmpdir(), 'berth-cli-start-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

let closedPort = 0;

const HEAVY = ['@electric-sql/pglite', 'drizzle-orm', 'pg', 'hono', '@hono/node-server', 'zod', 'pino', 'ssh2', 'tsx'];

beforeAll(async () => {
  // A port nothing listens on (taken, then freed), for a client command that finds no server.
  const probe = createServer().listen(0, '127.0.0.1');
  await new Promise((r) => probe.once('listening', r));
  closedPort = (probe.address() as { port: number }).port;
  await new Promise((r) => probe.close(r));
  if (!distState().current) {
    const built = spawnSync(process.execPath, ['scripts/build.mjs'], { cwd: repo, encoding: 'utf8' });
    if (built.status !== 0) throw new Error(`npm run build failed: ${built.stdout}${built.stderr}`);
  }
  expect(distState()).toEqual({ current: true });
  // A module hook that writes every file: URL node loads to stderr, tagged.
  writeFileSync(
    join(work, 'hooks.mjs'),
    "export async function resolve(s, c, next) { const r = await next(s, c); if (r.url.startsWith('file:')) process.stderr.write(`LOADED ${r.url}\\n`); return r; }\n",
  );
  writeFileSync(join(work, 'trace.mjs'), `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(join(work, 'hooks.mjs')).href)});\n`);
});

/** What one `berth ...` loaded: the npm packages and Berth's own modules. */
function loads(...args: string[]) {
  const r = spawnSync(process.execPath, ['--import', join(work, 'trace.mjs'), 'bin/berth.mjs', ...args], {
    cwd: repo,
    encoding: 'utf8',
    // No server answers here: a client command fails fast, after loading what it loads.
    env: { ...process.env, BERTH_HOME: work, BERTH_URL: `http://127.0.0.1:${closedPort}`, BERTH_API_KEY: 'bk_x', BERTH_COMPANY_ID: 'c' },
  });
  const urls = [...r.stderr.matchAll(/^LOADED (.*)$/gm)].map((m) => m[1]!);
  const packages = new Set(urls.flatMap((u) => /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(u)?.[1] ?? []));
  const own = urls.filter((u) => !u.includes('node_modules')).map((u) => u.slice(pathToFileURL(repo).href.length + 1));
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.replace(/^LOADED .*\n/gm, ''), packages, own };
}

describe('the CLI start', () => {
  it('berth --help runs the compiled CLI and loads commander only', () => {
    const r = loads('--help');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('Usage: berth');
    expect([...r.packages]).toEqual(['commander']);
    expect(r.own.every((f) => f.startsWith('bin/') || f.startsWith('dist/')), r.own.join(' ')).toBe(true);
    expect(r.own).not.toContain('dist/cli/serve-command.js');
  });

  it('a client command (env list) loads no server, database or validation library', () => {
    const r = loads('env', 'list');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/^berth: no Berth server answers at http:\/\/127\.0\.0\.1:\d+/);
    expect(HEAVY.filter((p) => r.packages.has(p))).toEqual([]);
    expect(r.own.filter((f) => /^dist\/(server|db|http|services|heartbeat|drivers)\//.test(f))).toEqual(['dist/server/home-files.js']);
  });

  it('berth serve --help is still answered without starting anything', () => {
    const r = loads('serve', '--help');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('--port');
    expect(HEAVY.filter((p) => r.packages.has(p))).toEqual([]);
  });
});
