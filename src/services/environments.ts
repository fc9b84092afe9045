// Environments: where runs execute. Every operation is scoped by company; every
// change writes its activity row in the same transaction.
import { sql, type SQL } from 'drizzle-orm';
import { z } from 'zod';
import { queryRows, sqlWordList, type Db } from '../db/client.js';
import { pgErrorOf, PG_FOREIGN_KEY_VIOLATION, PG_UNIQUE_VIOLATION } from '../db/errors.js';
import { environmentSecretDoc, toEnvironment } from '../db/rows.js';
import { ACTIONS, TERMINAL_LEASE_STATUSES, type EnvironmentDriverKind } from '../domain/enums.js';
import { DRIVER_KINDS } from '../drivers/descriptors.js';

/** The terminal lease statuses as an SQL list, from the one place they are named. */
const TERMINAL = sqlWordList(TERMINAL_LEASE_STATUSES);
import { BerthError, notFound, requireId } from '../domain/errors.js';
import { SYSTEM_ACTOR, type Actor, type Environment } from '../domain/types.js';
import { parseInput, type UpdateEnvironmentInput } from '../domain/validators.js';
import { configSchemaOf, createEnvironmentSchema, listEnvironmentsSchema, updateEnvironmentSchema, type CreateEnvironment, type CreateEnvironmentInput } from './environment-input.js';
import { environmentSecretPaths, keepUnnamedSecrets, openSecrets, sealSecrets } from '../secrets/config.js';
import { activityFrom, ENVIRONMENT_ENTITY } from './activity.js';
import { notifyEach, POOLS_CHANNEL } from '../db/notify.js';
import type { PoolConfig } from '../domain/validators.js';
import { checkPool, retireExcessPoolMembers, retireSql } from './pools/config.js';

export const LOCAL_ENVIRONMENT_DEFAULTS = {
  name: 'Local',
  description: 'Default execution environment for runs on this machine.',
  metadata: { managedByBerth: true, defaultForCompany: true },
} as const;

function mapWriteError(err: unknown, companyId: string, name?: string): never {
  const pgErr = pgErrorOf(err);
  if (pgErr?.code === PG_UNIQUE_VIOLATION && pgErr.constraint === 'environments_company_name_uq') {
    throw new BerthError('conflict', `an environment named "${name}" already exists in this company`, {
      fields: [{ path: 'name', message: 'is already taken' }],
    });
  }
  if (pgErr?.code === PG_UNIQUE_VIOLATION && pgErr.constraint === 'environments_company_local_uq') {
    throw new BerthError('conflict', 'this company already has a local environment (at most one per company)', {
      fields: [{ path: 'driver', message: 'local is already taken' }],
    });
  }
  if (pgErr?.code === PG_FOREIGN_KEY_VIOLATION) throw notFound('company', companyId);
  throw err;
}

function environmentActivity(actor: Actor, action: string, details: SQL): SQL {
  return activityFrom({ source: 'changed', actor, action, entityType: ENVIRONMENT_ENTITY, entityId: sql`changed.id::text`, runId: sql`NULL`, details });
}

export interface EnvironmentWithSecrets extends Environment {
  /** The full driver config, secrets included: for drivers only, never for responses. */
  secretConfig: Record<string, unknown>;
  /** The environment's variables in clear: for the run's process only. */
  envVars: Record<string, string>;
}

/**
 * Why the environment cannot be deleted now (none: it can), and what it holds: its leases
 * by status (only those that are not terminal or still owe cleanup) and its provider
 * resources not yet destroyed. Read in the delete's own transaction, under its row lock.
 */
async function deleteBlockers(tx: Db, current: Record<string, unknown>): Promise<{ reasons: string[]; leases: Record<string, number>; resources: Record<string, number> }> {
  const id = String(current.id);
  const reasons: string[] = [];
  if (current.driver === 'local') reasons.push("it is the company's Local environment");
  // A lease that still owes cleanup needs its environment (the driver's cleanup reads
  // its config): once deleted, the cleanup could only fail. Terminal leases whose
  // cleanup is still due (next_cleanup_at set) count as well as the non-terminal ones.
  const open = await queryRows<{ status: string; n: number; terminal: boolean }>(
    tx,
    sql`SELECT status, status IN ${TERMINAL} AS terminal, count(*)::int AS n FROM environment_leases
        WHERE environment_id = ${id} AND (status NOT IN ${TERMINAL} OR next_cleanup_at IS NOT NULL)
        GROUP BY status ORDER BY status`,
  );
  const listed = (rows: typeof open) => rows.map((o) => `${o.n} ${o.status}`).join(', ');
  // A warm pool's idle members hold placeholder leases (status pooled): not anyone's leases.
  const pooled = open.find((o) => o.status === 'pooled');
  if (pooled) reasons.push(`it has a warm pool holding ${pooled.n} idle member${pooled.n === 1 ? '' : 's'}: set its pool to null and wait until they are destroyed`);
  const live = open.filter((o) => !o.terminal && o.status !== 'pooled');
  const owing = open.filter((o) => o.terminal);
  if (live.length > 0) reasons.push(`it has leases that are not terminal (${listed(live)})`);
  if (owing.length > 0) reasons.push(`it has ended leases that still owe cleanup (${listed(owing)}): wait for their cleanup to finish`);
  // What a driver made in it and has not destroyed yet (resource GC needs the record's environment to retry).
  const resources = await queryRows<{ status: string; n: number }>(
    tx,
    sql`SELECT status, count(*)::int AS n FROM provider_resources WHERE environment_id = ${id} AND status NOT IN ('destroyed', 'lost')
        GROUP BY status ORDER BY status`,
  );
  if (resources.length > 0) reasons.push(`it holds provider resources not yet destroyed (${resources.map((o) => `${o.n} ${o.status}`).join(', ')})`);
  return {
    reasons,
    leases: Object.fromEntries(open.map((o) => [o.status, o.n])),
    resources: Object.fromEntries(resources.map((o) => [o.status, o.n])),
  };
}

/**
 * An environment may take another driver (Paperclip's PATCH can) only with a config for it,
 * and only while nothing the old driver made or holds is live: no lease that is not terminal
 * or still owes cleanup, no provider resource not destroyed, no warm pool. The company's
 * Local stays local, and no other environment becomes one. Adds the driver to `sets`.
 */
async function checkDriverChange(tx: Db, current: Record<string, unknown>, v: { driver?: string | undefined; config?: unknown; pool?: unknown }, sets: SQL[]): Promise<void> {
  const to = v.driver!;
  const field = (message: string) => [{ path: 'driver', message }];
  if (!DRIVER_KINDS.includes(to as EnvironmentDriverKind)) throw new BerthError('invalid', `invalid environment update: driver: must be one of ${DRIVER_KINDS.join(', ')}`, { fields: field(`must be one of ${DRIVER_KINDS.join(', ')}`) });
  if (current.driver === 'local') throw new BerthError('conflict', "the company's Local environment stays local: make another environment for another driver", { fields: field('cannot change on the Local environment') });
  if (to === 'local') throw new BerthError('conflict', 'an environment cannot become local: each company has one Local environment, made by Berth', { fields: field('cannot be local') });
  if (v.config === undefined) throw new BerthError('invalid', `invalid environment update: config: is required when the driver changes (a ${to} config)`, { fields: [{ path: 'config', message: `is required with a new driver (a ${to} config)` }] });
  const { reasons } = await deleteBlockers(tx, current);
  const pool = v.pool !== undefined ? v.pool : current.pool;
  if (pool) reasons.push('it has a warm pool: set its pool to null first');
  if (reasons.length > 0) {
    throw new BerthError('conflict', `environment ${String(current.id)} cannot change its driver from ${String(current.driver)} to ${to}: ${reasons.join('; ')}`, { details: { reasons } });
  }
  sets.push(sql`driver = ${to}`);
}

export function environmentService(db: Db) {
  async function insertEnvironment(
    companyId: string,
    v: { name: string; description: string | null; driver: EnvironmentDriverKind; config: object; envVars: object; metadata: object; capacity: number | null; pool?: PoolConfig | null },
    actor: Actor,
    onConflictDoNothing: boolean,
  ): Promise<Environment | null> {
    const rows = await queryRows(
      db,
      sql`WITH changed AS (
            INSERT INTO environments (company_id, name, description, driver, config, env_vars, metadata, capacity, pool)
            VALUES (${companyId}, ${v.name}, ${v.description}, ${v.driver}, ${JSON.stringify(v.config)}::jsonb,
                    ${JSON.stringify(v.envVars)}::jsonb, ${JSON.stringify(v.metadata)}::jsonb, ${v.capacity},
                    ${v.pool ? JSON.stringify(v.pool) : null}::jsonb)
            ${onConflictDoNothing ? sql`ON CONFLICT DO NOTHING` : sql``}
            RETURNING *),
          act AS (${environmentActivity(actor, ACTIONS.environmentCreated, sql`jsonb_build_object('name', changed.name, 'driver', changed.driver, 'capacity', changed.capacity)`)})
          SELECT changed.* FROM changed ${v.pool ? sql`CROSS JOIN ${notifyEach(POOLS_CHANNEL, sql`changed.id`)}` : sql``}`,
    );
    return rows[0] ? toEnvironment(rows[0]) : null;
  }

  async function getRow(companyId: string, id: string): Promise<Record<string, unknown>> {
    requireId(id, 'environment');
    const [row] = await queryRows(db, sql`SELECT * FROM environments WHERE id = ${id} AND company_id = ${companyId}`);
    if (!row) throw notFound('environment', id);
    return row;
  }

  const service = {
    /** Newest updated first. */
    async list(companyId: string, filter: { status?: string; driver?: string } = {}): Promise<Environment[]> {
      const f = parseInput(listEnvironmentsSchema, filter, 'environment filter');
      const conds: SQL[] = [sql`company_id = ${companyId}`];
      if (f.status) conds.push(sql`status = ${f.status}`);
      if (f.driver) conds.push(sql`driver = ${f.driver}`);
      const rows = await queryRows(db, sql`SELECT * FROM environments WHERE ${sql.join(conds, sql` AND `)} ORDER BY updated_at DESC, id DESC`);
      return rows.map(toEnvironment);
    },

    async get(companyId: string, id: string): Promise<Environment> {
      return toEnvironment(await getRow(companyId, id));
    },

    /** For drivers: the environment with its full config, secrets included. */
    async getWithSecrets(companyId: string, id: string): Promise<EnvironmentWithSecrets> {
      const row = await getRow(companyId, id);
      const open = openSecrets(environmentSecretDoc(row), environmentSecretPaths(String(row.driver)), `environment ${String(row.id)}`);
      return { ...toEnvironment(row), secretConfig: open.config as Record<string, unknown>, envVars: open.envVars as Record<string, string> };
    },

    /** For reconciliation: every active environment (of any company) served by one of `drivers`, with its secrets. */
    async listActiveForDrivers(drivers: readonly string[]): Promise<EnvironmentWithSecrets[]> {
      if (drivers.length === 0) return [];
      const rows = await queryRows(db, sql`SELECT * FROM environments WHERE status = 'active' AND driver IN ${sqlWordList(drivers)}`);
      return rows.map((row) => {
        const open = openSecrets(environmentSecretDoc(row), environmentSecretPaths(String(row.driver)), `environment ${String(row.id)}`);
        return { ...toEnvironment(row), secretConfig: open.config as Record<string, unknown>, envVars: open.envVars as Record<string, string> };
      });
    },

    async create(companyId: string, input: CreateEnvironmentInput, actor: Actor = SYSTEM_ACTOR): Promise<Environment> {
      requireId(companyId, 'company');
      const v = parseInput(createEnvironmentSchema, input, 'environment') as CreateEnvironment;
      checkPool(v.driver, v.pool ?? null, v.capacity);
      try {
        const sealed = sealSecrets({ config: v.config, envVars: v.envVars }, environmentSecretPaths(v.driver));
        const env = await insertEnvironment(companyId, { ...v, config: sealed.config as object, envVars: sealed.envVars as object, description: v.description ?? null }, actor, false);
        return env!;
      } catch (err) {
        mapWriteError(err, companyId, v.name);
      }
    },

    /**
     * The company's local environment, created on first use. Safe under any number of
     * concurrent callers on any number of processes: the partial unique index on
     * (company_id) WHERE driver = 'local' admits one row, and an existing one is
     * returned untouched.
     */
    async ensureLocalEnvironment(companyId: string, actor: Actor = SYSTEM_ACTOR): Promise<Environment> {
      requireId(companyId, 'company');
      for (let n = 1; n <= 20; n++) {
        const [existing] = await queryRows(db, sql`SELECT * FROM environments WHERE company_id = ${companyId} AND driver = 'local'`);
        if (existing) return toEnvironment(existing);
        // An operator may have given another environment the name "Local".
        const name = n === 1 ? LOCAL_ENVIRONMENT_DEFAULTS.name : `${LOCAL_ENVIRONMENT_DEFAULTS.name} (${n})`;
        try {
          const created = await insertEnvironment(
            companyId,
            { name, description: LOCAL_ENVIRONMENT_DEFAULTS.description, driver: 'local', config: {}, envVars: {}, metadata: LOCAL_ENVIRONMENT_DEFAULTS.metadata, capacity: null },
            actor,
            true,
          );
          if (created) return created;
        } catch (err) {
          mapWriteError(err, companyId, name);
        }
      }
      throw new BerthError('conflict', 'could not create the local environment: every candidate name is taken');
    },

    async update(companyId: string, id: string, input: UpdateEnvironmentInput, actor: Actor = SYSTEM_ACTOR): Promise<Environment> {
      requireId(id, 'environment');
      const v = parseInput(updateEnvironmentSchema, input, 'environment update');
      try {
        return await db.transaction(async (tx) => {
          // FOR UPDATE conflicts with the KEY SHARE lock every acquire holds until it commits,
          // so a capacity change and the acquires around it are ordered: none decides on a
          // stale capacity, and the count below sees every lease granted before it.
          const [current] = await queryRows(tx, sql`SELECT * FROM environments WHERE id = ${id} AND company_id = ${companyId} FOR UPDATE`);
          if (!current) throw notFound('environment', id);
          const sets: SQL[] = [];
          const driver = (v.driver ?? String(current.driver)) as EnvironmentDriverKind;
          if (v.driver !== undefined && v.driver !== current.driver) await checkDriverChange(tx, current, v, sets);
          if (v.name !== undefined) sets.push(sql`name = ${v.name}`);
          if (v.description !== undefined) sets.push(sql`description = ${v.description}`);
          if (v.status !== undefined) sets.push(sql`status = ${v.status}`);
          const secretPaths = environmentSecretPaths(driver);
          if (v.envVars !== undefined) sets.push(sql`env_vars = ${JSON.stringify(sealSecrets({ envVars: v.envVars }, secretPaths).envVars)}::jsonb`);
          if (v.metadata !== undefined) sets.push(sql`metadata = ${JSON.stringify(v.metadata)}::jsonb`);
          if (v.config !== undefined) {
            const schema = configSchemaOf(driver);
            if (!schema) throw new BerthError('invalid', `environment ${id} has driver "${driver}", which this version cannot configure`);
            // Parsed under `config`, so a refusal names `config.port` as a create's does.
            const given = sealSecrets({ config: parseInput(z.object({ config: schema }), { config: v.config }, `${driver} config`).config }, secretPaths);
            // A secret field that is set (an SSH key) stays set unless the update names a new
            // one: a caller cannot read it back to resend it.
            const { config } = driver === current.driver ? keepUnnamedSecrets(given, environmentSecretDoc(current), secretPaths) : given;
            sets.push(sql`config = ${JSON.stringify(config)}::jsonb`);
          }
          if (v.pool !== undefined || v.capacity !== undefined) {
            const pool = v.pool !== undefined ? v.pool : ((current.pool as PoolConfig | null) ?? null);
            checkPool(driver, pool, v.capacity !== undefined ? v.capacity : current.capacity === null ? null : Number(current.capacity));
            if (v.pool !== undefined) sets.push(sql`pool = ${v.pool ? JSON.stringify(v.pool) : null}::jsonb`);
          }
          if (v.capacity !== undefined) {
            if (v.capacity !== null) {
              const [{ active } = { active: 0 }] = await queryRows<{ active: number }>(
                tx,
                sql`SELECT count(*)::int AS active FROM environment_leases WHERE environment_id = ${id} AND status = 'active'`,
              );
              if (Number(active) > v.capacity) {
                throw new BerthError('conflict', `capacity ${v.capacity} is below the ${active} active leases of this environment; release some first`, {
                  fields: [{ path: 'capacity', message: `must be at least ${active} (the active leases)` }],
                });
              }
            }
            sets.push(sql`capacity = ${v.capacity}`);
          }
          if (v.capacity !== undefined && v.capacity !== null) {
            // Acquires grant a slot below the capacity, and the unique index admits one active
            // lease per slot: that is the whole capacity check. So every active lease must hold
            // a slot below the new capacity before it applies, else a lease above it (or one
            // granted while the environment was unlimited, without a slot) would let acquires
            // fill the slots below and exceed the capacity. The leases that do not move the
            // ones without a slot or above it to the free slots below, lowest first (there are
            // enough: the count is at most the capacity). No acquire runs meanwhile (FOR UPDATE
            // above) and releases only free slots, so no slot is taken twice.
            // A warm pool's idle members hold places too: those the new capacity has no room
            // for beside the active leases are retired first (resource GC destroys them).
            await retireExcessPoolMembers(tx, id, v.capacity);
            await queryRows(
              tx,
              sql`WITH used AS (
                    SELECT slot AS u, (row_number() OVER (ORDER BY slot) - 1)::int AS i FROM environment_leases
                    WHERE environment_id = ${id} AND status IN ('active', 'pooled') AND slot IS NOT NULL AND slot < ${v.capacity}),
                  movers AS (
                    SELECT id, (row_number() OVER (ORDER BY acquired_at, id) - 1)::int AS j FROM environment_leases
                    WHERE environment_id = ${id} AND status IN ('active', 'pooled') AND (slot IS NULL OR slot >= ${v.capacity}))
                  UPDATE environment_leases l SET slot = movers.j + (SELECT count(*)::int FROM used WHERE used.u - used.i <= movers.j)
                  FROM movers WHERE l.id = movers.id AND l.status IN ('active', 'pooled')`,
            );
          }
          const changedFields = Object.keys(v);
          const action = v.status === 'archived' && current.status !== 'archived' && changedFields.length === 1 ? ACTIONS.environmentArchived : ACTIONS.environmentUpdated;
          const [row] = await queryRows(
            tx,
            sql`WITH changed AS (
                  UPDATE environments SET ${sql.join(sets, sql`, `)}, updated_at = now()
                  WHERE id = ${id} AND company_id = ${companyId} RETURNING *),
                act AS (${environmentActivity(actor, action, sql`jsonb_build_object('name', changed.name, 'changedFields', ${JSON.stringify(changedFields)}::jsonb)`)})
                SELECT changed.* FROM changed ${v.pool !== undefined || v.status !== undefined ? sql`CROSS JOIN ${notifyEach(POOLS_CHANNEL, sql`changed.id`)}` : sql``}`,
          );
          // Idle members were made with the variables and setup the environment had: when those
          // change they are retired (the refill makes new ones). A config change needs nothing
          // here: a member whose config snapshot is not the environment's is never claimed, and
          // the refill retires it.
          const setupChanged = v.pool !== undefined && JSON.stringify((current.pool as PoolConfig | null)?.setup ?? null) !== JSON.stringify(v.pool?.setup ?? null);
          if (v.envVars !== undefined || setupChanged) {
            await queryRows(tx, retireSql(sql`SELECT p.id FROM provider_resources p WHERE p.environment_id = ${id} AND p.pool_member AND p.status = 'ready' FOR UPDATE OF p SKIP LOCKED`));
          }
          return toEnvironment(row!);
        });
      } catch (err) {
        mapWriteError(err, companyId, v.name);
      }
    },

    /** Archived environments take no new leases. Archiving an archived one changes nothing. */
    async archive(companyId: string, id: string, actor: Actor = SYSTEM_ACTOR): Promise<Environment> {
      const current = await service.get(companyId, id);
      if (current.status === 'archived') return current;
      return service.update(companyId, id, { status: 'archived' }, actor);
    },

    /**
     * Delete, or refuse with every reason: the company's Local environment, leases
     * that are not terminal (active, retained, pending_cleanup), or ended leases whose
     * cleanup is still due. Terminal leases keep their history (their environment_id
     * becomes null).
     */
    /**
     * What deleting the environment would touch, and why it would be refused now, read
     * the way the delete reads it (nothing changes): the leases and resources that block
     * it, the ended leases that would lose their environment reference (kept as history),
     * and the agents whose default environment it is (they fall back to the company's Local).
     */
    async deleteBlastRadius(companyId: string, id: string) {
      requireId(id, 'environment');
      return db.transaction(async (tx) => {
        const [current] = await queryRows(tx, sql`SELECT * FROM environments WHERE id = ${id} AND company_id = ${companyId}`);
        if (!current) throw notFound('environment', id);
        const { reasons, leases, resources } = await deleteBlockers(tx, current);
        const [counts] = await queryRows<{ history: number; agents: number }>(
          tx,
          sql`SELECT (SELECT count(*)::int FROM environment_leases WHERE environment_id = ${id}) AS history,
                     (SELECT count(*)::int FROM agents WHERE default_environment_id = ${id}) AS agents`,
        );
        return {
          environmentId: id,
          driver: String(current.driver),
          canDelete: reasons.length === 0,
          deleteBlockedReasons: reasons,
          blockingLeases: leases,
          blockingResources: resources,
          leaseHistory: counts?.history ?? 0,
          agentsDefaulting: counts?.agents ?? 0,
        };
      });
    },

    async delete(companyId: string, id: string, actor: Actor = SYSTEM_ACTOR): Promise<Environment> {
      requireId(id, 'environment');
      return db.transaction(async (tx) => {
        const [current] = await queryRows(tx, sql`SELECT * FROM environments WHERE id = ${id} AND company_id = ${companyId} FOR UPDATE`);
        if (!current) throw notFound('environment', id);
        const { reasons } = await deleteBlockers(tx, current);
        if (reasons.length > 0) {
          throw new BerthError('conflict', `environment ${id} cannot be deleted: ${reasons.join('; ')}`, { details: { reasons } });
        }
        const [row] = await queryRows(
          tx,
          sql`WITH changed AS (DELETE FROM environments WHERE id = ${id} AND company_id = ${companyId} RETURNING *),
              act AS (${environmentActivity(actor, ACTIONS.environmentDeleted, sql`jsonb_build_object('name', changed.name, 'driver', changed.driver)`)})
              SELECT * FROM changed`,
        );
        return toEnvironment(row!);
      });
    },
  };
  return service;
}
export type EnvironmentService = ReturnType<typeof environmentService>;
