// Environment probes: the last result of "is it reachable and usable now?", kept on
// the environment so listings can show it without probing again.
import { sql } from 'drizzle-orm';
import { queryRows, type Db } from '../db/client.js';
import { requireId, notFound } from '../domain/errors.js';
import { SYSTEM_ACTOR, type Actor } from '../domain/types.js';
import { descriptorOf } from '../drivers/descriptors.js';
import { activityFrom, ENVIRONMENT_ENTITY } from './activity.js';

export interface ProbeRecord {
  ok: boolean;
  /** The driver that probed, and the result in one line (Paperclip's probe results carry both). */
  driver: string;
  summary: string;
  latencyMs: number;
  details: Record<string, unknown>;
  error?: string;
  /** When the probe finished (database clock). */
  at: string;
}

/** A probe's result in one line. */
export function probeSummary(driver: string, result: { ok: boolean; latencyMs: number; error?: string | undefined }): string {
  const d = descriptorOf(driver);
  const what = d ? `${d.title} (${driver})` : driver;
  return result.ok ? `${what} answered in ${Math.round(result.latencyMs * 10) / 10} ms` : `${what} did not pass its probe: ${result.error ?? 'no reason given'}`;
}

export function probeService(db: Db) {
  return {
    /** Store a probe's result on the environment, with one activity row. */
    async record(companyId: string, environmentId: string, driver: string, result: Omit<ProbeRecord, 'at' | 'driver' | 'summary'>, actor: Actor = SYSTEM_ACTOR): Promise<ProbeRecord> {
      requireId(environmentId, 'environment');
      const body = {
        ok: result.ok,
        driver,
        summary: probeSummary(driver, result),
        latencyMs: Math.round(result.latencyMs * 10) / 10,
        details: result.details,
        ...(result.error ? { error: result.error } : {}),
      };
      const [row] = await queryRows<{ last_probe: ProbeRecord }>(
        db,
        sql`WITH changed AS (
              UPDATE environments SET last_probe = ${JSON.stringify(body)}::jsonb || jsonb_build_object('at', now())
              WHERE id = ${environmentId} AND company_id = ${companyId} RETURNING *),
            act AS (${activityFrom({
              source: 'changed', actor, action: 'environment.probed', entityType: ENVIRONMENT_ENTITY, entityId: sql`changed.id::text`, runId: sql`NULL`,
              details: sql`jsonb_build_object('ok', ${body.ok}::boolean, 'driver', ${driver}::text, 'summary', ${body.summary}::text, 'latencyMs', ${body.latencyMs}::float8, 'error', ${body.error ?? null}::text)`,
            })})
            SELECT last_probe FROM changed`,
      );
      if (!row) throw notFound('environment', environmentId);
      return row.last_probe;
    },
  };
}
export type ProbeService = ReturnType<typeof probeService>;
