// Host key checking against OpenSSH known_hosts text, without a server.
import { describe, expect, it } from 'vitest';
import { createHmac, randomBytes } from 'node:crypto';
import { fingerprintSha256, keyTypeOf, knownHostsName, verifyHostKey } from '../../src/drivers/ssh/known-hosts.js';

/** A fake ssh-ed25519 public key blob: string "ssh-ed25519", string <32 bytes>. */
function blob(): Buffer {
  const type = Buffer.from('ssh-ed25519');
  const key = randomBytes(32);
  const b = Buffer.alloc(4 + type.length + 4 + key.length);
  b.writeUInt32BE(type.length, 0);
  type.copy(b, 4);
  b.writeUInt32BE(key.length, 4 + type.length);
  key.copy(b, 8 + type.length);
  return b;
}
const line = (hosts: string, key: Buffer) => `${hosts} ssh-ed25519 ${key.toString('base64')} comment`;
const hashed = (name: string) => {
  const salt = randomBytes(20);
  return `|1|${salt.toString('base64')}|${createHmac('sha1', salt).update(name).digest('base64')}`;
};

describe('verifyHostKey', () => {
  const key = blob();
  const other = blob();

  it('names hosts as OpenSSH does and fingerprints as ssh-keygen -l does', () => {
    expect(knownHostsName('build-1', 22)).toBe('build-1');
    expect(knownHostsName('build-1', 2222)).toBe('[build-1]:2222');
    expect(keyTypeOf(key)).toBe('ssh-ed25519');
    expect(fingerprintSha256(key)).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
  });

  it('accepts a key listed for the host: plain, [host]:port, comma lists, wildcards and hashed names', () => {
    expect(verifyHostKey(line('build-1', key), 'build-1', 22, key, true)).toEqual({ ok: true, known: true });
    expect(verifyHostKey(line('[build-1]:2222', key), 'build-1', 2222, key, true)).toEqual({ ok: true, known: true });
    expect(verifyHostKey(`# comment\n\n${line('other,build-1,10.0.0.1', key)}`, 'build-1', 22, key, true).ok).toBe(true);
    expect(verifyHostKey(line('build-?.internal', key), 'build-7.internal', 22, key, true).ok).toBe(true);
    expect(verifyHostKey(line('*.internal,!evil.internal', key), 'evil.internal', 22, key, true).ok).toBe(false);
    expect(verifyHostKey(line(hashed('[build-1]:2222'), key), 'build-1', 2222, key, true).ok).toBe(true);
  });

  it('a plain host line does not cover another port', () => {
    const v = verifyHostKey(line('build-1', key), 'build-1', 2222, key, true);
    expect(v).toMatchObject({ ok: false, reason: 'unknown' });
  });

  it('refuses an unknown host when strict, naming host:port and the offered fingerprint; accepts it when not strict', () => {
    const v = verifyHostKey(line('elsewhere', key), 'build-1', 2222, key, true);
    expect(v.ok).toBe(false);
    if (!v.ok) {
      expect(v.reason).toBe('unknown');
      expect(v.message).toContain('build-1:2222');
      expect(v.message).toContain(fingerprintSha256(key));
    }
    expect(verifyHostKey(undefined, 'build-1', 2222, key, false)).toEqual({ ok: true, known: false });
  });

  it('refuses a changed key even when not strict, naming both fingerprints', () => {
    for (const strict of [true, false]) {
      const v = verifyHostKey(line('[build-1]:2222', other), 'build-1', 2222, key, strict);
      expect(v.ok).toBe(false);
      if (!v.ok) {
        expect(v.reason).toBe('changed');
        expect(v.message).toContain('build-1:2222');
        expect(v.message).toContain(fingerprintSha256(key));
        expect(v.message).toContain(fingerprintSha256(other));
      }
    }
  });

  it('accepts any of several keys listed for a host, and refuses a @revoked one', () => {
    expect(verifyHostKey(`${line('build-1', other)}\n${line('build-1', key)}`, 'build-1', 22, key, true).ok).toBe(true);
    const v = verifyHostKey(`${line('build-1', key)}\n@revoked ${line('*', key)}`, 'build-1', 22, key, false);
    expect(v).toMatchObject({ ok: false, reason: 'revoked' });
  });
});
