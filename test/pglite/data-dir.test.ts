// The embedded database belongs to one process at a time, and keeps its data.
import { afterAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { sql } from 'drizzle-orm';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { migrationsFolder, openDatabase, queryRows } from '../../src/db/client.js';
import { createServices } from '../../src/services/index.js';

const home = mkdtempSync(join(tmpdir(), 'berth-datadir-'));
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(home, { recursive: true, force: true });
});

function holdInChild(dataDir: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/support/hold-database.ts', dataDir], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(child);
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve(child));
    child.on('exit', (code) => reject(new Error(`holder exited with ${code}`)));
  });
}

describe('the embedded data dir', () => {
  it('keeps data across reopen, applying migrations only once', async () => {
    const dir = join(home, 'keep');
    const first = await openDatabase({ databaseUrl: '', dataDir: dir });
    const company = await createServices(first.db).companies.create({ name: 'Persisted' });
    await first.close();
    expect(existsSync(`${dir}.lock`)).toBe(false);
    const second = await openDatabase({ databaseUrl: '', dataDir: dir });
    expect((await createServices(second.db).companies.get(company.id)).name).toBe('Persisted');
    const [applied] = await queryRows<{ n: number }>(second.db, sql`SELECT count(*)::int AS n FROM drizzle.__drizzle_migrations`);
    expect(applied!.n).toBe(readdirSync(migrationsFolder).filter((f) => f.endsWith('.sql')).length);
    await second.close();
  });

  it('refuses a second process, naming the process that holds it; a dead holder is taken over', async () => {
    const dir = join(home, 'shared');
    const holder = await holdInChild(dir);
    const err = await openDatabase({ databaseUrl: '', dataDir: dir }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'database_locked' });
    expect((err as Error).message).toContain(`process ${holder.pid}`);
    expect((err as Error).message).toContain('hold-database.ts');
    expect((err as Error).message).toContain('DATABASE_URL');
    // SIGKILL leaves the lock file behind; its owner is gone, so the next open takes over.
    holder.kill('SIGKILL');
    await new Promise((r) => holder.once('exit', r));
    expect(existsSync(`${dir}.lock`)).toBe(true);
    const db = await openDatabase({ databaseUrl: '', dataDir: dir });
    await createServices(db.db).companies.create({ name: 'After takeover' });
    await db.close();
  });
});
