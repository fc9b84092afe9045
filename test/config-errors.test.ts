// A wrong address is said in one line naming the variable: `berth serve` with an
// unreachable or malformed DATABASE_URL (never its password), the CLI with a malformed BERTH_URL.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const home = mkdtempSync(join(tmpdir(), 'berth-config-'));
afterAll(() => rmSync(home, { recursive: true, force: true }));
const PASSWORD = 'Sup3rSecretPw';

function berth(args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, ['bin/berth.mjs', ...args], { env: { ...process.env, BERTH_HOME: home, ...env }, timeout: 60_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, stdout: String(stdout), stderr: String(stderr) }),
    );
    child.stdin?.end();
  });
}

describe('berth serve with a bad DATABASE_URL', () => {
  it('unreachable: exits non-zero with one line naming host:port and what failed, never the password', async () => {
    const r = await berth(['serve', '--port', '0'], { DATABASE_URL: `postgres://berth:${PASSWORD}@127.0.0.1:1/berth` });
    expect(r.code).not.toBe(0);
    expect(r.code).not.toBeNull(); // it exited, and was not killed by the timeout
    const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('127.0.0.1:1');
    expect(lines[0]).toContain('DATABASE_URL');
    expect(lines[0]).toMatch(/ECONNREFUSED/);
    expect(r.stdout + r.stderr).not.toContain(PASSWORD);
  });

  it.each([`postgres://berth:${PASSWORD}@127.0.0.1:notaport/berth`, `not a url ${PASSWORD}`, `mysql://berth:${PASSWORD}@127.0.0.1/berth`, `postgres://berth:${PASSWORD}@[bad/berth`])(
    'malformed (%s): exits non-zero with one line naming DATABASE_URL, never the password',
    async (url) => {
      const r = await berth(['serve', '--port', '0'], { DATABASE_URL: url });
      expect(r.code).not.toBe(0);
      expect(r.code).not.toBeNull();
      const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain('DATABASE_URL is not a PostgreSQL URL');
      expect(r.stdout + r.stderr).not.toContain(PASSWORD);
    },
  );
});

describe('berth serve with a bad BERTH_HTTP_ALLOW_NETWORKS', () => {
  it('exits non-zero with one line naming the variable and the entry', async () => {
    const r = await berth(['serve', '--port', '0'], { BERTH_HTTP_ALLOW_NETWORKS: '127.0.0.1/32,10.0.0.0/33' });
    expect(r.code).not.toBe(0);
    expect(r.code).not.toBeNull();
    const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('BERTH_HTTP_ALLOW_NETWORKS');
    expect(lines[0]).toContain('10.0.0.0/33');
  });
});

describe('the CLI with a bad BERTH_URL', () => {
  it.each(['not a url', 'ftp://127.0.0.1:3710/', 'http://'])('%s: exits non-zero saying BERTH_URL is wrong', async (url) => {
    const r = await berth(['env', 'list'], { BERTH_URL: url, BERTH_API_KEY: 'brk_x' });
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain('BERTH_URL is not an http(s) URL');
  });
});
