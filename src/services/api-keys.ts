// Company API keys: random, shown once at creation, kept only as a sha256 hash.
import { randomBytes } from 'node:crypto';
import { sql } from 'drizzle-orm';
import { z } from 'zod';
import { queryRows, type Db } from '../db/client.js';
import { toApiKey } from '../db/rows.js';
import { pgErrorOf, PG_FOREIGN_KEY_VIOLATION } from '../db/errors.js';
import { BerthError, notFound, requireId } from '../domain/errors.js';
import { SYSTEM_ACTOR, type Actor, type ApiKeyRecord } from '../domain/types.js';
import { parseInput } from '../domain/validators.js';
import { hashBearerSecret } from '../secrets/bearer.js';
import { activityFrom } from './activity.js';

export const COMPANY_KEY_PREFIX = 'bk_';

export const createApiKeySchema = z.strictObject({
  name: z.string().trim().min(1, 'must not be empty').max(200, 'must be at most 200 characters').default('default'),
});


export function apiKeyService(db: Db) {
  return {
    /** A new key for the company. The returned `key` is the only time it is ever seen. */
    async create(companyId: string, input: { name?: string } = {}, actor: Actor = SYSTEM_ACTOR): Promise<{ key: string; record: ApiKeyRecord }> {
      requireId(companyId, 'company');
      const v = parseInput(createApiKeySchema, input, 'API key');
      const key = `${COMPANY_KEY_PREFIX}${randomBytes(32).toString('base64url')}`;
      try {
        const [row] = await queryRows(
          db,
          sql`WITH changed AS (
                INSERT INTO api_keys (company_id, name, key_hash, prefix)
                VALUES (${companyId}, ${v.name}, ${hashBearerSecret(key)}, ${key.slice(0, 10)}) RETURNING *),
              act AS (${activityFrom({
                source: 'changed', actor, action: 'api_key.created', entityType: 'api_key', entityId: sql`changed.id::text`, runId: sql`NULL`,
                details: sql`jsonb_build_object('name', changed.name, 'prefix', changed.prefix)`,
              })})
              SELECT * FROM changed`,
        );
        return { key, record: toApiKey(row!) };
      } catch (err) {
        if (pgErrorOf(err)?.code === PG_FOREIGN_KEY_VIOLATION) throw notFound('company', companyId);
        throw err;
      }
    },

    async list(companyId: string): Promise<ApiKeyRecord[]> {
      return (await queryRows(db, sql`SELECT * FROM api_keys WHERE company_id = ${companyId} ORDER BY created_at, id`)).map(toApiKey);
    },

    /**
     * Revoking a revoked key changes nothing. With `keepOneLive`, the company's last
     * live key is not revoked (409): the check and the change hold the company row, so
     * two revocations at once cannot both pass it.
     */
    async revoke(companyId: string, id: string, actor: Actor = SYSTEM_ACTOR, opts: { keepOneLive?: boolean } = {}): Promise<ApiKeyRecord> {
      requireId(id, 'API key');
      if (opts.keepOneLive) {
        return db.transaction(async (tx) => {
          await queryRows(tx, sql`SELECT id FROM companies WHERE id = ${companyId} FOR UPDATE`);
          const [{ others } = { others: 0 }] = await queryRows<{ others: number }>(
            tx,
            sql`SELECT count(*)::int AS others FROM api_keys WHERE company_id = ${companyId} AND revoked_at IS NULL AND id <> ${id}`,
          );
          const [target] = await queryRows<{ revoked_at: unknown }>(tx, sql`SELECT revoked_at FROM api_keys WHERE id = ${id} AND company_id = ${companyId}`);
          if (target && target.revoked_at === null && Number(others) === 0) {
            throw new BerthError('conflict', 'this is the last live key of the company: create another before revoking it');
          }
          return apiKeyService(tx).revoke(companyId, id, actor);
        });
      }
      const [row] = await queryRows(
        db,
        sql`WITH changed AS (
              UPDATE api_keys SET revoked_at = now() WHERE id = ${id} AND company_id = ${companyId} AND revoked_at IS NULL RETURNING *),
            act AS (${activityFrom({
              source: 'changed', actor, action: 'api_key.revoked', entityType: 'api_key', entityId: sql`changed.id::text`, runId: sql`NULL`,
              details: sql`jsonb_build_object('name', changed.name, 'prefix', changed.prefix)`,
            })})
            SELECT * FROM changed`,
      );
      if (row) return toApiKey(row);
      const [existing] = await queryRows(db, sql`SELECT * FROM api_keys WHERE id = ${id} AND company_id = ${companyId}`);
      if (!existing) throw notFound('API key', id);
      return toApiKey(existing);
    },

    /** The live key with this hash, or null; marks it used (at most once a minute, to spare writes). */
    async authenticate(keyHash: string): Promise<{ keyId: string; companyId: string } | null> {
      const [row] = await queryRows<{ id: string; company_id: string; last_used_at: unknown }>(
        db,
        sql`SELECT id, company_id, last_used_at FROM api_keys WHERE key_hash = ${keyHash} AND revoked_at IS NULL`,
      );
      if (!row) return null;
      const last = row.last_used_at ? new Date(row.last_used_at as string).getTime() : 0;
      if (Date.now() - last > 60_000) {
        await queryRows(db, sql`UPDATE api_keys SET last_used_at = now() WHERE id = ${row.id}`);
      }
      return { keyId: String(row.id), companyId: String(row.company_id) };
    },
  };
}
export type ApiKeyService = ReturnType<typeof apiKeyService>;
