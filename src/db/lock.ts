// Exclusive ownership of the embedded data dir. PGlite has no lock of its own:
// a second process opening the same dir would silently lose its writes.
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, fstatSync, linkSync, openSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { BerthError } from '../domain/errors.js';

interface LockOwner {
  pid: number;
  hostname: string;
  /** The kernel's boot id and the process's start time (clock ticks after boot), so a reused pid is not taken for the owner. */
  bootId?: string | null;
  processStart?: string | null;
  startedAt: string;
  command: string;
  /** Makes every lock file's content unique, so a stale one is recognised as the very file judged stale. */
  nonce: string;
}

/** How long to wait for another process that is replacing a stale lock before naming it as the holder. */
const TAKEOVER_WAIT_MS = 5_000;
/** Claims on claims (a taker that died mid-takeover) nest at most this deep. */
const MAX_CLAIM_DEPTH = 4;

function readText(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}

const bootId = (): string | null => readText('/proc/sys/kernel/random/boot_id')?.trim() || null;

/** Field 22 of /proc/<pid>/stat (after the parenthesised command name, which may hold spaces). */
function processStart(pid: number): string | null {
  const stat = readText(`/proc/${pid}/stat`);
  if (!stat) return null;
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
}

function commandOf(pid: number): string {
  return readText(`/proc/${pid}/cmdline`)?.split('\0').filter(Boolean).join(' ') || 'unknown command';
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Whether the owner still runs. A lock from another host cannot be checked, so it counts as held. */
function isHeld(owner: LockOwner): boolean {
  if (owner.hostname !== hostname()) return true;
  const boot = bootId();
  if (owner.bootId && boot && owner.bootId !== boot) return false;
  if (!isAlive(owner.pid)) return false;
  const start = processStart(owner.pid);
  return !(owner.processStart && start && owner.processStart !== start);
}

interface Found {
  raw: string;
  ino: number;
  owner: LockOwner | null;
}

/** The lock file as it is now (content and inode read through one descriptor), or null if there is none. */
function readLock(path: string): Found | null {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  try {
    const ino = fstatSync(fd).ino;
    const raw = readFileSync(fd, 'utf8');
    let owner: LockOwner | null = null;
    try {
      const parsed = JSON.parse(raw) as LockOwner;
      if (typeof parsed?.pid === 'number' && typeof parsed.hostname === 'string') owner = parsed;
    } catch {
      /* unreadable: left by a crash of an older Berth, which wrote the file in two steps */
    }
    return { raw, ino, owner };
  } finally {
    closeSync(fd);
  }
}

/** A private temporary file beside `path` holding `content`, so that `path` is complete from its first instant. */
function writeTemp(path: string, content: string): string {
  const tmp = `${path}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  writeFileSync(tmp, content, { mode: 0o600, flag: 'wx' });
  return tmp;
}

/** Create `path` with `content` unless it exists (link() fails with EEXIST then). */
function createComplete(path: string, content: string): boolean {
  const tmp = writeTemp(path, content);
  try {
    linkSync(tmp, path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    unlinkSync(tmp);
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Make `path` hold `record`: returns null when it does, or the live owner that holds it.
 *
 * A free path is taken by link(), which only one process can win. A stale file (its owner
 * gone, or unreadable) is replaced only by the process holding the claim named after that
 * very file (its inode and content), taken the same way; the claimant replaces the file
 * with rename() only if it is still the one judged stale. So of several processes that
 * find the same stale lock, one replaces it and the others then find the new, live owner.
 * A claimant that dies mid-takeover leaves a stale claim, taken over by the same rule.
 */
function take(path: string, record: string, depth: number): LockOwner | null {
  const deadline = Date.now() + TAKEOVER_WAIT_MS;
  for (;;) {
    if (createComplete(path, record)) return null;
    const found = readLock(path);
    if (!found) continue; // released between our link() and our read: try again
    if (found.owner && isHeld(found.owner)) return found.owner;
    if (depth >= MAX_CLAIM_DEPTH) throw new BerthError('database_locked', `could not take the lock ${path}: too many nested takeovers`);
    const claim = `${path}.${createHash('sha256').update(`${found.ino}\0${found.raw}`).digest('hex').slice(0, 16)}.takeover`;
    const claimant = take(claim, record, depth + 1);
    if (claimant === null) {
      try {
        const now = readLock(path);
        if (now && now.ino === found.ino && now.raw === found.raw) {
          renameSync(writeTemp(path, record), path);
          return null;
        }
        // Someone replaced it before we held the claim: look at the new owner.
      } finally {
        unlinkSync(claim);
      }
      continue;
    }
    // A live process is replacing it: give it a moment, then look at the new owner.
    if (Date.now() > deadline) return claimant;
    sleepSync(5);
  }
}

export interface DirLock {
  path: string;
  release(): void;
}

/**
 * Take the lock file beside a data dir, or throw `database_locked` naming the
 * process that holds it. A lock left by a process that is gone (dead pid on this
 * host, or a boot ago) is taken over, by exactly one of the processes that find it.
 */
export function lockDataDir(dataDir: string): DirLock {
  const lockPath = `${dataDir}.lock`;
  const record = JSON.stringify({
    pid: process.pid,
    hostname: hostname(),
    bootId: bootId(),
    processStart: processStart(process.pid),
    startedAt: new Date().toISOString(),
    command: commandOf(process.pid),
    nonce: randomBytes(12).toString('hex'),
  } satisfies LockOwner);
  const owner = take(lockPath, record, 0);
  if (owner) {
    throw new BerthError(
      'database_locked',
      `the embedded database at ${dataDir} is in use by process ${owner.pid} (${owner.command}) on ${owner.hostname} since ${owner.startedAt}; ` +
        'stop that process, or set DATABASE_URL to a PostgreSQL database that several processes can share',
      { details: { lockPath, owner } },
    );
  }
  const release = () => {
    process.off('exit', release);
    if (readLock(lockPath)?.raw !== record) return;
    try {
      unlinkSync(lockPath);
    } catch {
      /* already gone */
    }
  };
  process.on('exit', release);
  return { path: lockPath, release };
}
