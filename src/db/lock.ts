// Exclusive ownership of the embedded data dir. PGlite has no lock of its own:
// a second process opening the same dir would silently lose its writes.
import { closeSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { BerthError } from '../domain/errors.js';

interface LockOwner {
  pid: number;
  hostname: string;
  startedAt: string;
  command: string;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function readOwner(lockPath: string): LockOwner | null {
  try {
    return JSON.parse(readFileSync(lockPath, 'utf8')) as LockOwner;
  } catch {
    return null;
  }
}

function commandOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ');
  } catch {
    return 'unknown command';
  }
}

export interface DirLock {
  path: string;
  release(): void;
}

/**
 * Take the lock file beside a data dir, or throw `database_locked` naming the
 * process that holds it. A lock left by a dead process on this host is taken over.
 */
export function lockDataDir(dataDir: string): DirLock {
  const lockPath = `${dataDir}.lock`;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(lockPath, 'wx', 0o600);
      const owner: LockOwner = {
        pid: process.pid,
        hostname: hostname(),
        startedAt: new Date().toISOString(),
        command: commandOf(process.pid),
      };
      writeSync(fd, JSON.stringify(owner));
      closeSync(fd);
      const release = () => {
        process.off('exit', release);
        const current = readOwner(lockPath);
        if (current?.pid === process.pid) {
          try {
            unlinkSync(lockPath);
          } catch {
            /* already gone */
          }
        }
      };
      process.on('exit', release);
      return { path: lockPath, release };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const owner = readOwner(lockPath);
    const sameHost = owner?.hostname === hostname();
    if (owner && (!sameHost || isAlive(owner.pid)) && owner.pid !== process.pid) {
      throw new BerthError(
        'database_locked',
        `the embedded database at ${dataDir} is in use by process ${owner.pid} (${owner.command}) on ${owner.hostname} since ${owner.startedAt}; ` +
          'stop that process, or set DATABASE_URL to a PostgreSQL database that several processes can share',
        { details: { lockPath, owner } },
      );
    }
    // Stale (its process is gone) or unreadable: remove it and try again.
    try {
      unlinkSync(lockPath);
    } catch {
      /* another process removed it first */
    }
  }
  throw new BerthError('database_locked', `could not take the lock ${lockPath}`);
}
