// Secrets at rest: AES-256-GCM encryption of short strings (the fields config.ts lists) under
// one server key, from BERTH_SECRET_KEY or a key file created on first use.
//
// Format: `enc:v1:<key id>:<iv b64>:<tag b64>:<ciphertext b64>`. The key id (8 hex
// characters of SHA-256 of the key) lets a wrong key be told apart from a damaged
// value: GCM's tag alone says only "does not authenticate".
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { linkSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { berthHome } from '../db/client.js';

const PREFIX = 'enc:v1:';
const KEY_BYTES = 32;
const IV_BYTES = 12;
/** Binds ciphertexts to Berth's secret store: a GCM value made elsewhere with the same key does not decrypt here. */
const AAD = Buffer.from('berth-secret:v1');

export class SecretKeyError extends Error {
  readonly code = 'secret_key';
  constructor(message: string) {
    super(message);
    this.name = 'SecretKeyError';
  }
}

export interface SecretKey {
  key: Buffer;
  /** 8 hex characters of SHA-256(key): names the key without revealing it. */
  id: string;
  /** Where it came from, for error messages: `BERTH_SECRET_KEY` or the key file's path. */
  source: string;
}

function keyId(key: Buffer): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 8);
}

/** 32 bytes as 64 hex characters or as base64 (padded or not, url-safe or not). */
export function parseSecretKey(text: string, source: string): SecretKey {
  const t = text.trim();
  let key: Buffer | null = null;
  if (/^[0-9a-fA-F]{64}$/.test(t)) key = Buffer.from(t, 'hex');
  else if (/^[A-Za-z0-9+/_-]{42,44}={0,2}$/.test(t)) {
    const b = Buffer.from(t.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
    if (b.length === KEY_BYTES) key = b;
  }
  if (!key) {
    throw new SecretKeyError(
      `${source} is not a valid secret key: it must be ${KEY_BYTES} bytes, written as 64 hex characters or as base64 ` +
        `(e.g. the output of \`openssl rand -base64 32\`)`,
    );
  }
  return { key, id: keyId(key), source };
}

let cached: { from: string; key: SecretKey } | null = null;

/**
 * The server's secret key: BERTH_SECRET_KEY when set, else `$BERTH_HOME/secret.key`,
 * created (mode 0600) on first use. Creation is race-safe across processes: the key is
 * written to a private temporary file and then hard-linked into place, which fails with
 * EEXIST if another process got there first; then that process's key is read. A reader
 * therefore never sees a half-written key file.
 */
export function secretKey(): SecretKey {
  const fromEnv = process.env.BERTH_SECRET_KEY;
  const from = fromEnv ? `env:${fromEnv}` : `file:${join(berthHome(), 'secret.key')}`;
  if (cached?.from === from) return cached.key;
  const key = fromEnv ? parseSecretKey(fromEnv, 'BERTH_SECRET_KEY') : loadOrCreateKeyFile(join(berthHome(), 'secret.key'));
  cached = { from, key };
  return key;
}

function loadOrCreateKeyFile(path: string): SecretKey {
  try {
    return parseSecretKey(readFileSync(path, 'utf8'), path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  mkdirSync(berthHome(), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  writeFileSync(tmp, `${randomBytes(KEY_BYTES).toString('base64')}\n`, { mode: 0o600, flag: 'wx' });
  try {
    linkSync(tmp, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    // Another process created it first: use theirs.
  } finally {
    unlinkSync(tmp);
  }
  return parseSecretKey(readFileSync(path, 'utf8'), path);
}

export function isEncryptedSecret(value: unknown): value is string {
  return typeof value === 'string' && value.startsWith(PREFIX);
}

export function encryptSecret(plaintext: string, key: SecretKey = secretKey()): string {
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key.key, iv);
  cipher.setAAD(AAD);
  const ct = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
  return `${PREFIX}${key.id}:${iv.toString('base64')}:${cipher.getAuthTag().toString('base64')}:${ct.toString('base64')}`;
}

/** The plaintext, or a clear error: wrong key (naming both key ids), or a damaged value. Never garbage. */
export function decryptSecret(value: string, key: SecretKey = secretKey()): string {
  if (!isEncryptedSecret(value)) throw new SecretKeyError('the value is not an encrypted secret (expected enc:v1:...)');
  const parts = value.slice(PREFIX.length).split(':');
  if (parts.length !== 4) throw new SecretKeyError('the encrypted secret is damaged: expected enc:v1:<key id>:<iv>:<tag>:<ciphertext>');
  const [id, ivB64, tagB64, ctB64] = parts as [string, string, string, string];
  if (id !== key.id) {
    throw new SecretKeyError(
      `the secret was encrypted with key ${id}, but the server's key (${key.source}) is ${key.id}: ` +
        'restore the key it was encrypted with, or set the secret again',
    );
  }
  const iv = Buffer.from(ivB64, 'base64');
  const tag = Buffer.from(tagB64, 'base64');
  if (iv.length !== IV_BYTES || tag.length !== 16) throw new SecretKeyError('the encrypted secret is damaged: bad iv or tag length');
  try {
    const decipher = createDecipheriv('aes-256-gcm', key.key, iv);
    decipher.setAAD(AAD);
    decipher.setAuthTag(tag);
    return Buffer.concat([decipher.update(Buffer.from(ctB64, 'base64')), decipher.final()]).toString('utf8');
  } catch {
    throw new SecretKeyError(`the encrypted secret does not authenticate under key ${key.id}: it was damaged or altered`);
  }
}
