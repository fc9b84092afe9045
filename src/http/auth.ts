// Who is calling: `Authorization: Bearer <key>` names the instance admin, a company
// (its API key) or one run (its PAPERCLIP_API_KEY). Keys are looked up by sha256;
// a found key is remembered for a few seconds so a busy client costs one lookup.
import { timingSafeEqual } from 'node:crypto';
import { ADMIN_KEY_PREFIX, hashBearerSecret } from '../secrets/bearer.js';
import { COMPANY_KEY_PREFIX } from '../services/api-keys.js';
import type { Services } from '../services/index.js';
import type { Principal } from './context.js';
import { HttpError } from './errors.js';

export { ADMIN_KEY_PREFIX };
export const RUN_TOKEN_PREFIX = 'brt_';
/** How long a company or admin key, once found, is trusted without looking again (revocation takes this long to reach other servers). Run tokens are looked up every time. */
export const AUTH_CACHE_MS = 5_000;
const CACHE_MAX = 10_000;
const RUN_ACTIVE = new Set(['queued', 'running']);


export function createAuthenticator(services: Services, adminKeyHash: string | null) {
  const cache = new Map<string, { principal: Principal; until: number }>();
  const adminHash = adminKeyHash ? Buffer.from(adminKeyHash, 'hex') : null;

  // Bumped by forgetAll: a lookup that began before a revocation must not put the key back.
  let generation = 0;
  function remember(hash: string, principal: Principal, startedIn: number): Principal {
    if (startedIn !== generation) return principal;
    if (cache.size >= CACHE_MAX) cache.delete(cache.keys().next().value!);
    cache.set(hash, { principal, until: Date.now() + AUTH_CACHE_MS });
    return principal;
  }

  return {
    async authenticate(header: string | undefined): Promise<Principal> {
      if (!header) throw new HttpError(401, 'unauthorized', 'missing Authorization header: send "Authorization: Bearer <API key>"');
      const m = /^Bearer ([A-Za-z0-9_-]{1,200})$/.exec(header.trim());
      if (!m) throw new HttpError(401, 'unauthorized', 'malformed Authorization header: expected "Bearer <API key>"');
      const key = m[1]!;
      const hash = hashBearerSecret(key);
      const hit = cache.get(hash);
      if (hit && hit.until > Date.now()) return hit.principal;
      const startedIn = generation;
      if (key.startsWith(ADMIN_KEY_PREFIX)) {
        const given = Buffer.from(hash, 'hex');
        if (adminHash && timingSafeEqual(given, adminHash)) return remember(hash, { kind: 'admin' }, startedIn);
      } else if (key.startsWith(COMPANY_KEY_PREFIX)) {
        const found = await services.apiKeys.authenticate(hash);
        if (found) return remember(hash, { kind: 'company', companyId: found.companyId, keyId: found.keyId }, startedIn);
      } else if (key.startsWith(RUN_TOKEN_PREFIX)) {
        // Not remembered: a run token must stop working the moment its run ends.
        const run = await services.runs.authenticateToken(hash);
        if (run && RUN_ACTIVE.has(run.status)) return { kind: 'run', companyId: run.companyId, runId: run.runId, agentId: run.agentId };
        if (run) throw new HttpError(401, 'unauthorized', `this run token is no longer valid: run ${run.runId} is ${run.status}`);
      }
      throw new HttpError(401, 'unauthorized', 'unknown or revoked API key');
    },
    /** Forget every remembered key (after a revocation on this server). */
    forgetAll(): void {
      generation++;
      cache.clear();
    },
  };
}
export type Authenticator = ReturnType<typeof createAuthenticator>;
