// Files Berth keeps in BERTH_HOME besides the database: the instance admin key,
// the CLI's saved credentials, and where a running server listens. Keys are
// written with mode 0600 and never logged.
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { berthHome } from '../home.js';
import { ADMIN_KEY_PREFIX } from '../secrets/bearer.js';

export const homePath = (name: string, home = berthHome()) => join(home, name);

function readText(path: string): string | null {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/** The admin key, made at first start (0600). Returns it and whether it was new. */
export function ensureAdminKey(home = berthHome()): { key: string; path: string; created: boolean } {
  mkdirSync(home, { recursive: true, mode: 0o700 });
  const path = homePath('admin.key', home);
  const existing = readText(path);
  if (existing) return { key: existing, path, created: false };
  const key = `${ADMIN_KEY_PREFIX}${randomBytes(32).toString('base64url')}`;
  try {
    writeFileSync(path, `${key}\n`, { mode: 0o600, flag: 'wx' });
    return { key, path, created: true };
  } catch (err) {
    // Another process made it first: use theirs.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return { key: readText(path)!, path, created: false };
    throw err;
  }
}

export function readAdminKey(home = berthHome()): string | null {
  return readText(homePath('admin.key', home));
}

export interface SavedCredentials {
  url?: string;
  apiKey: string;
  companyId: string;
  companyName?: string;
}

/** What `berth` uses when BERTH_API_KEY is not set (written by the demo and `company create --save`). */
export function saveCredentials(creds: SavedCredentials, home = berthHome()): string {
  mkdirSync(home, { recursive: true, mode: 0o700 });
  const path = homePath('credentials.json', home);
  writeFileSync(path, `${JSON.stringify(creds, null, 2)}\n`, { mode: 0o600 });
  chmodSync(path, 0o600); // mode applies only when the file is created
  return path;
}

export function readCredentials(home = berthHome()): SavedCredentials | null {
  const text = readText(homePath('credentials.json', home));
  if (!text) return null;
  try {
    const v = JSON.parse(text) as SavedCredentials;
    return typeof v.apiKey === 'string' && typeof v.companyId === 'string' ? v : null;
  } catch {
    return null;
  }
}

export interface ServerInfo {
  url: string;
  pid: number;
  startedAt: string;
}

export function writeServerInfo(info: ServerInfo, home = berthHome()): void {
  mkdirSync(home, { recursive: true, mode: 0o700 });
  writeFileSync(homePath('server.json', home), `${JSON.stringify(info)}\n`);
}

export function readServerInfo(home = berthHome()): ServerInfo | null {
  const text = readText(homePath('server.json', home));
  if (!text) return null;
  try {
    return JSON.parse(text) as ServerInfo;
  } catch {
    return null;
  }
}

export function removeServerInfo(pid: number, home = berthHome()): void {
  if (readServerInfo(home)?.pid === pid) rmSync(homePath('server.json', home), { force: true });
}
