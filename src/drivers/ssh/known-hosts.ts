// Host key checking for the SSH driver against OpenSSH known_hosts text: plain,
// `[host]:port`, comma lists, `*`/`?` wildcards, `!` negation, hashed (`|1|salt|hash`)
// names, and `@revoked` lines. `@cert-authority` lines are not supported and ignored.
import { createHash, createHmac } from 'node:crypto';

export interface KnownHostEntry {
  marker: '@revoked' | '@cert-authority' | null;
  patterns: string[];
  keyType: string;
  key: Buffer;
}

export type HostKeyVerdict =
  | { ok: true; known: boolean }
  | { ok: false; reason: 'unknown' | 'changed' | 'revoked'; message: string };

/** `SHA256:<base64, unpadded>` of a raw host key blob, as `ssh-keygen -l` prints it. */
export function fingerprintSha256(key: Buffer): string {
  return `SHA256:${createHash('sha256').update(key).digest('base64').replace(/=+$/, '')}`;
}

/** The key type named inside an SSH public key blob (its first string). */
export function keyTypeOf(key: Buffer): string {
  if (key.length < 4) return 'unknown';
  const n = key.readUInt32BE(0);
  return n > 0 && 4 + n <= key.length ? key.subarray(4, 4 + n).toString('latin1') : 'unknown';
}

export function parseKnownHosts(text: string): KnownHostEntry[] {
  const out: KnownHostEntry[] = [];
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const fields = line.split(/\s+/);
    let marker: KnownHostEntry['marker'] = null;
    if (fields[0] === '@revoked' || fields[0] === '@cert-authority') marker = fields.shift() as KnownHostEntry['marker'];
    const [hosts, keyType, keyB64] = fields;
    if (!hosts || !keyType || !keyB64) continue;
    const key = Buffer.from(keyB64, 'base64');
    if (key.length === 0) continue;
    out.push({ marker, patterns: hosts.split(','), keyType, key });
  }
  return out;
}

/** How OpenSSH names a host in known_hosts: `host` on port 22, `[host]:port` otherwise. */
export function knownHostsName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

function globToRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`, 'i');
}

function patternMatches(pattern: string, name: string): boolean {
  if (pattern.startsWith('|1|')) {
    const [, , salt, hash] = pattern.split('|');
    if (!salt || !hash) return false;
    return createHmac('sha1', Buffer.from(salt, 'base64')).update(name).digest('base64') === hash;
  }
  return globToRegExp(pattern).test(name);
}

/** An entry names the host when one of its patterns matches and none of its `!` patterns does. */
function entryMatches(entry: KnownHostEntry, name: string): boolean {
  let hit = false;
  for (const p of entry.patterns) {
    if (p.startsWith('!')) {
      if (patternMatches(p.slice(1), name)) return false;
    } else if (patternMatches(p, name)) hit = true;
  }
  return hit;
}

/**
 * Is `key` the host key of host:port? A revoked key is always refused; so is a key
 * other than the one(s) known_hosts lists for the host, whatever `strict` says (a
 * changed key is what an attacker in the middle looks like). An unlisted host is
 * refused only when strict.
 */
export function verifyHostKey(knownHosts: string | undefined, host: string, port: number, key: Buffer, strict: boolean): HostKeyVerdict {
  const name = knownHostsName(host, port);
  const fp = fingerprintSha256(key);
  const type = keyTypeOf(key);
  const entries = parseKnownHosts(knownHosts ?? '').filter((e) => e.marker !== '@cert-authority' && entryMatches(e, name));
  if (entries.some((e) => e.marker === '@revoked' && e.key.equals(key))) {
    return { ok: false, reason: 'revoked', message: `host key of ${host}:${port} (${type} ${fp}) is marked @revoked in knownHosts` };
  }
  const listed = entries.filter((e) => e.marker === null);
  if (listed.some((e) => e.key.equals(key))) return { ok: true, known: true };
  if (listed.length > 0) {
    const knownFps = listed.map((e) => `${e.keyType} ${fingerprintSha256(e.key)}`).join(', ');
    return {
      ok: false,
      reason: 'changed',
      message: `host key of ${host}:${port} has changed: the server offered ${type} ${fp}, but knownHosts lists ${knownFps} (refused: possible man-in-the-middle; update knownHosts if the host was re-keyed)`,
    };
  }
  if (strict) {
    return {
      ok: false,
      reason: 'unknown',
      message: `host key of ${host}:${port} is not in knownHosts (server offered ${type} ${fp}); add a line "${name} ${type} <key>" or turn strictHostKeyChecking off`,
    };
  }
  return { ok: true, known: false };
}
