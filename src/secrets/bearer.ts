// The stored form of a bearer secret (a company API key, a run token, the admin key):
// its sha256. They are 32 random bytes (24 for run tokens), so a fast hash leaves
// nothing to brute-force; whoever stores one and whoever checks one use this.
import { createHash } from 'node:crypto';

export const ADMIN_KEY_PREFIX = 'badm_';

export function hashBearerSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}
