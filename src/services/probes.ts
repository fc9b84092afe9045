// Environment probes: the last result of "is it reachable and usable now?", kept on
// the environment so listings can show it without probing again.
import { sql } from 'drizzle-orm';
import { queryRows, type Db } from '../db/client.js';
import { requireId, notFound } from '../domain/errors.js';
import { SYSTEM_ACTOR, type Actor } from '../domain/types.js';
import { activityFrom, ENVIRONMENT_ENTITY } from './activity.js';

export interface ProbeRecord {
  ok: boolean;
  latencyMs: number;
  details: Record<string, unknown>;
  error?: string;
  /** When the probe finished (database clock). */
  at: string;
}

export function probeService(db: Db) {
  return {
    /** Store a probe's result on the environment, with one activity row. */
    async record(companyId: string, environmentId: string, result: Omit<ProbeRecord, 'at'>, actor: Actor = SYSTEM_ACTOR): Promise<ProbeRecord> {
      requireId(environmentId, 'environment');
      const body = { ok: result.ok, latencyMs: Math.round(result.latencyMs * 10) / 10, details: result.details, ...(result.error ? { error: result.error } : {}) };
      const [row] = await queryRows<{ last_probe: ProbeRecord }>(
        db,
        sql`WITH changed AS (
              UPDATE environments SET last_probe = ${JSON.stringify(body)}::jsonb || jsonb_build_object('at', now())
              WHERE id = ${environmentId} AND company_id = ${companyId} RETURNING *),
            act AS (${activityFrom({
              source: 'changed', actor, action: 'environment.probed', entityType: ENVIRONMENT_ENTITY, entityId: sql`changed.id::text`, runId: sql`NULL`,
              details: sql`jsonb_build_object('ok', ${body.ok}::boolean, 'latencyMs', ${body.latencyMs}::float8, 'error', ${body.error ?? null}::text)`,
            })})
            SELECT last_probe FROM changed`,
      );
      if (!row) throw notFound('environment', environmentId);
      return row.last_probe;
    },
  };
}
export type ProbeService = ReturnType<typeof probeService>;
