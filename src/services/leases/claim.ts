// Claim: a run's acquire on a pooled environment takes a ready member of its warm pool and
// grants the lease in the same statement (services/pools describes the pool).
import { sql } from 'drizzle-orm';
import { runStatement, type Db } from '../../db/client.js';
import { notifyEach, POOLS_CHANNEL } from '../../db/notify.js';
import { readJson, toLease } from '../../db/rows.js';
import { ACTIONS } from '../../domain/enums.js';
import type { Actor, Lease } from '../../domain/types.js';
import type { acquireLeaseSchema } from '../../domain/validators.js';
import { ACTOR_PLACEHOLDERS, grantParams, leaseActivity, P } from './sql.js';

type AcquireValues = ReturnType<typeof acquireLeaseSchema.parse>;

/** What a warm claim hands the run in place of provisioning: the member as its refill made it. */
export interface WarmMember {
  resourceId: string;
  providerId: string | null;
  state: Record<string, unknown>;
  /** Where the run's process starts, and what it is told (ProvisionedResource.cwd / details). */
  cwd: string;
  details: Record<string, unknown>;
}

type ClaimVariant = `lease.claim-warm.${'ttl' | 'at' | 'no-expiry'}${'' | '.max-lifetime'}`;

/**
 * One autocommit statement: the oldest ready member of the environment's pool, made under its
 * config as it is now, that no other claim holds (FOR UPDATE SKIP LOCKED: claimers on every server skip each other's, none
 * waits), its placeholder lease (status `pooled`, holding the member's capacity slot since
 * the refill reserved it) turned into this caller's active lease with a new fence, the member
 * marked leased, the lease's activity row, and, when it took the last ready member, a wake-up
 * for every server's refill (POOLS_CHANNEL, at commit; the claiming server wakes its own). The slot does not change hands, so a claim never changes how many places are held.
 * Nothing when no member is ready, or when the caller already holds a lease under its
 * idempotency key or run (the normal acquire then finds it).
 */
export async function claimWarm(conn: Db, companyId: string, v: AcquireValues, actor: Actor): Promise<{ lease: Lease; member: WarmMember } | null> {
  const expiry = v.ttlSeconds !== undefined ? 'ttl' : v.expiresAt !== undefined ? 'at' : 'no-expiry';
  const variant: ClaimVariant = `lease.claim-warm.${expiry}${v.maxLifetimeSeconds !== undefined ? '.max-lifetime' : ''}`;
  const rows = await runStatement(conn, variant, () => {
    const expires = expiry === 'ttl'
      ? sql`now() + make_interval(secs => ${P('ttl')})`
      : expiry === 'at' ? sql`${P('expiresAt')}::timestamptz` : sql`NULL::timestamptz`;
    const maxExpires = v.maxLifetimeSeconds !== undefined ? sql`now() + make_interval(secs => ${P('maxLifetime')})` : sql`NULL::timestamptz`;
    return sql`WITH env AS (
          SELECT id, config FROM environments
          WHERE id = ${P('envId')} AND company_id = ${P('companyId')} AND status = 'active' AND pool IS NOT NULL
          FOR KEY SHARE),
        member AS (
          SELECT p.id, p.lease_id FROM provider_resources p, env
          WHERE p.environment_id = env.id AND p.status = 'ready' AND p.pool_member
            -- Made under the environment's config as it is now (a member made before a config change is never handed out).
            AND p.config_snapshot->'config' = env.config
            AND NOT EXISTS (SELECT 1 FROM environment_leases d
                            WHERE d.company_id = ${P('companyId')} AND d.idempotency_key = ${P('key')}::text)
            AND NOT EXISTS (SELECT 1 FROM environment_leases d
                            WHERE d.environment_id = env.id AND d.heartbeat_run_id = ${P('runId')}::uuid AND d.status = 'active')
          ORDER BY p.ready_at, p.id LIMIT 1
          FOR UPDATE OF p SKIP LOCKED),
        claimed AS (
          UPDATE environment_leases l SET status = 'active', fence = nextval('environment_lease_fence_seq'),
            heartbeat_run_id = ${P('runId')}::uuid, execution_workspace_id = ${P('wsId')}::text, issue_id = ${P('issueId')}::text,
            idempotency_key = ${P('key')}::text, lease_policy = ${P('policy')}::text,
            acquired_at = now(), last_used_at = now(), created_at = now(),
            expires_at = LEAST(${expires}, ${maxExpires}), max_expires_at = ${maxExpires},
            metadata = ${P('meta')}::jsonb || '{"warm": true}'::jsonb, updated_at = now()
          FROM member WHERE l.id = member.lease_id AND l.status = 'pooled'
          RETURNING l.*),
        res AS (
          UPDATE provider_resources p SET status = 'leased', updated_at = now()
          FROM claimed WHERE p.id = claimed.resource_id AND p.status = 'ready'
          RETURNING p.id, p.provider_id, p.state, p.ready_details),
        act AS (${leaseActivity(
          'claimed',
          ACTOR_PLACEHOLDERS,
          ACTIONS.leaseAcquired,
          sql`jsonb_build_object('environmentId', claimed.environment_id, 'fence', claimed.fence, 'policy', claimed.lease_policy,
                'expiresAt', claimed.expires_at, 'executionWorkspaceId', claimed.execution_workspace_id,
                'issueId', claimed.issue_id, 'idempotencyKey', claimed.idempotency_key, 'warm', true, 'resourceId', claimed.resource_id)`,
        )})
        SELECT claimed.*, res.provider_id AS member_provider_id, res.state AS member_state, res.ready_details AS member_ready
        FROM claimed JOIN res ON res.id = claimed.resource_id
          -- Every server's refill is woken only when this took the last ready member (a burst
          -- all servers help refill); otherwise the claiming server wakes its own (in process):
          -- a NOTIFY per claim would serialize every claim's commit on the notification queue.
          CROSS JOIN ${notifyEach(POOLS_CHANNEL, sql`claimed.environment_id`, sql`NOT EXISTS (
            SELECT 1 FROM provider_resources o WHERE o.environment_id = claimed.environment_id AND o.status = 'ready' AND o.pool_member
              AND o.id <> claimed.resource_id)`)}`;
  }, grantParams(companyId, v, actor));
  const row = rows[0];
  if (!row) return null;
  const lease = toLease(row);
  const ready = readJson<{ cwd?: unknown; details?: Record<string, unknown> }>(row.member_ready);
  return {
    lease,
    member: {
      resourceId: lease.resourceId!,
      providerId: row.member_provider_id == null ? null : String(row.member_provider_id),
      state: readJson<Record<string, unknown>>(row.member_state),
      cwd: typeof ready.cwd === 'string' ? ready.cwd : '',
      details: ready.details ?? {},
    },
  };
}
