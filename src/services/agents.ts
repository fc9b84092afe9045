// Agents: who runs. Company-scoped; adapters validated here, not only in routes.
import { sql, type SQL } from 'drizzle-orm';
import { queryRows, type Db } from '../db/client.js';
import { pgErrorOf, PG_FOREIGN_KEY_VIOLATION, PG_UNIQUE_VIOLATION } from '../db/errors.js';
import { toAgent, toAgentStored } from '../db/rows.js';
import { adapterSchemas, createAgentSchema, updateAgentSchema, type CreateAgentInput, type UpdateAgentInput } from '../domain/agents.js';
import { driversForAdapter, type EnvironmentDriverKind } from '../drivers/descriptors.js';
import type { AdapterType } from '../domain/enums.js';
import { BerthError, notFound, requireId, UUID_RE } from '../domain/errors.js';
import { SYSTEM_ACTOR, type Actor, type Agent } from '../domain/types.js';
import { parseInput } from '../domain/validators.js';
import { agentSecretPaths, openSecrets, sealSecrets } from '../secrets/config.js';
import { activityFrom } from './activity.js';

function agentActivity(actor: Actor, action: string, details: SQL): SQL {
  return activityFrom({ source: 'changed', actor, action, entityType: 'agent', entityId: sql`changed.id::text`, runId: sql`NULL`, details });
}

function mapWriteError(err: unknown, companyId: string, name: string | undefined): never {
  const e = pgErrorOf(err);
  if (e?.code === PG_UNIQUE_VIOLATION) {
    throw new BerthError('conflict', `an agent named "${name}" already exists in this company`, { fields: [{ path: 'name', message: 'is already taken' }] });
  }
  if (e?.code === PG_FOREIGN_KEY_VIOLATION) throw notFound('company', companyId);
  throw err;
}

/** The adapter config as stored: its secrets (env, headers values) sealed. */
function sealAdapterConfig(adapterType: string, config: Record<string, unknown>): Record<string, unknown> {
  return sealSecrets({ adapterConfig: config }, agentSecretPaths(adapterType)).adapterConfig as Record<string, unknown>;
}

export function agentService(db: Db) {
  /** A default environment must exist in the company, be active, and suit the adapter. */
  async function checkDefaultEnvironment(companyId: string, environmentId: string, adapterType: string): Promise<void> {
    const [env] = await queryRows<{ driver: string; status: string }>(
      db,
      sql`SELECT driver, status FROM environments WHERE id = ${environmentId} AND company_id = ${companyId}`,
    );
    const field = (message: string) =>
      new BerthError('invalid', `invalid agent: defaultEnvironmentId: ${message}`, { fields: [{ path: 'defaultEnvironmentId', message }] });
    if (!env) throw field('no such environment in this company');
    if (env.status !== 'active') throw field(`environment is ${env.status}`);
    const usable = driversForAdapter(adapterType);
    if (!usable.includes(env.driver as EnvironmentDriverKind)) {
      throw field(`the ${adapterType} adapter cannot run on a ${env.driver} environment (usable: ${usable.join(', ')})`);
    }
  }

  const service = {
    async create(companyId: string, input: CreateAgentInput, actor: Actor = SYSTEM_ACTOR): Promise<Agent> {
      requireId(companyId, 'company');
      const v = parseInput(createAgentSchema, input, 'agent');
      if (v.defaultEnvironmentId) await checkDefaultEnvironment(companyId, v.defaultEnvironmentId, v.adapterType);
      try {
        const [row] = await queryRows(
          db,
          sql`WITH changed AS (
                INSERT INTO agents (company_id, name, adapter_type, adapter_config, default_environment_id, max_concurrent_runs, interval_sec)
                VALUES (${companyId}, ${v.name}, ${v.adapterType}, ${JSON.stringify(sealAdapterConfig(v.adapterType, v.adapterConfig))}::jsonb, ${v.defaultEnvironmentId},
                        ${v.maxConcurrentRuns}, ${v.intervalSec})
                RETURNING *),
              act AS (${agentActivity(actor, 'agent.created', sql`jsonb_build_object('name', changed.name, 'adapterType', changed.adapter_type)`)})
              SELECT * FROM changed`,
        );
        return toAgent(row!);
      } catch (err) {
        mapWriteError(err, companyId, v.name);
      }
    },

    async get(companyId: string, id: string): Promise<Agent> {
      requireId(id, 'agent');
      const [row] = await queryRows(db, sql`SELECT * FROM agents WHERE id = ${id} AND company_id = ${companyId}`);
      if (!row) throw notFound('agent', id);
      return toAgent(row);
    },

    /** An agent by its id or, within the company, its name (how Paperclip's CLI names an agent). */
    async getByRef(companyId: string, ref: string): Promise<Agent> {
      if (UUID_RE.test(ref)) return service.get(companyId, ref);
      // No agent has a name the database could not store (NUL) or longer than names may be.
      if (ref.length > 200 || ref.includes('\u0000')) throw notFound('agent', ref.slice(0, 200).replace(/\u0000/g, '\\0'));
      const [row] = await queryRows(db, sql`SELECT * FROM agents WHERE company_id = ${companyId} AND name = ${ref}`);
      if (!row) throw notFound('agent', ref.slice(0, 200));
      return toAgent(row);
    },

    /** For the executor: the agent with its adapter config in clear (env, headers values), never for responses. */
    async getWithSecrets(companyId: string, id: string): Promise<Agent> {
      requireId(id, 'agent');
      const [row] = await queryRows(db, sql`SELECT * FROM agents WHERE id = ${id} AND company_id = ${companyId}`);
      if (!row) throw notFound('agent', id);
      const stored = toAgentStored(row);
      const open = openSecrets({ adapterConfig: stored.adapterConfig }, agentSecretPaths(stored.adapterType), `agent ${stored.id}`);
      return { ...stored, adapterConfig: open.adapterConfig as Record<string, unknown> };
    },

    async list(companyId: string, filter: { name?: string } = {}): Promise<Agent[]> {
      const byName = typeof filter.name === 'string' ? sql`AND name = ${filter.name}` : sql``;
      return (await queryRows(db, sql`SELECT * FROM agents WHERE company_id = ${companyId} ${byName} ORDER BY name`)).map(toAgent);
    },

    async update(companyId: string, id: string, input: UpdateAgentInput, actor: Actor = SYSTEM_ACTOR): Promise<Agent> {
      const current = await service.get(companyId, id);
      const v = parseInput(updateAgentSchema, input, 'agent update');
      const sets: SQL[] = [];
      if (v.name !== undefined) sets.push(sql`name = ${v.name}`);
      if (v.adapterConfig !== undefined) {
        const schema = adapterSchemas[current.adapterType as AdapterType];
        if (!schema) throw new BerthError('invalid', `agent ${id} has adapter "${current.adapterType}", which this version cannot configure`);
        const config = parseInput(schema, v.adapterConfig, `${current.adapterType} adapter config`);
        sets.push(sql`adapter_config = ${JSON.stringify(sealAdapterConfig(current.adapterType, config))}::jsonb`);
      }
      if (v.defaultEnvironmentId !== undefined) {
        if (v.defaultEnvironmentId !== null) await checkDefaultEnvironment(companyId, v.defaultEnvironmentId, current.adapterType);
        sets.push(sql`default_environment_id = ${v.defaultEnvironmentId}`);
      }
      if (v.maxConcurrentRuns !== undefined) sets.push(sql`max_concurrent_runs = ${v.maxConcurrentRuns}`);
      if (v.intervalSec !== undefined) sets.push(sql`interval_sec = ${v.intervalSec}`);
      if (v.status !== undefined) sets.push(sql`status = ${v.status}`);
      try {
        const [row] = await queryRows(
          db,
          sql`WITH changed AS (
                UPDATE agents SET ${sql.join(sets, sql`, `)}, updated_at = now() WHERE id = ${id} AND company_id = ${companyId} RETURNING *),
              act AS (${agentActivity(actor, 'agent.updated', sql`jsonb_build_object('name', changed.name, 'changedFields', ${JSON.stringify(Object.keys(v))}::jsonb)`)})
              SELECT * FROM changed`,
        );
        if (!row) throw notFound('agent', id);
        return toAgent(row);
      } catch (err) {
        mapWriteError(err, companyId, v.name);
      }
    },

    /**
     * Delete an agent and its run history (the activity log keeps the record). Refused
     * while it has queued or running runs: cancel them first.
     */
    async delete(companyId: string, id: string, actor: Actor = SYSTEM_ACTOR): Promise<Agent> {
      requireId(id, 'agent');
      return db.transaction(async (tx) => {
        const [current] = await queryRows(tx, sql`SELECT * FROM agents WHERE id = ${id} AND company_id = ${companyId} FOR UPDATE`);
        if (!current) throw notFound('agent', id);
        const [{ open } = { open: 0 }] = await queryRows<{ open: number }>(
          tx,
          sql`SELECT count(*)::int AS open FROM heartbeat_runs WHERE agent_id = ${id} AND status IN ('queued', 'running')`,
        );
        if (Number(open) > 0) {
          throw new BerthError('conflict', `agent ${id} cannot be deleted: it has ${open} queued or running runs (cancel them first)`, {
            details: { reasons: [`${open} queued or running runs`] },
          });
        }
        const [row] = await queryRows(
          tx,
          sql`WITH changed AS (DELETE FROM agents WHERE id = ${id} AND company_id = ${companyId} RETURNING *),
              act AS (${agentActivity(actor, 'agent.deleted', sql`jsonb_build_object('name', changed.name)`)})
              SELECT * FROM changed`,
        );
        return toAgent(row!);
      });
    },
  };
  return service;
}
export type AgentService = ReturnType<typeof agentService>;
