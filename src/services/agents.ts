// Agents: who runs. Company-scoped; adapters validated here, not only in routes.
import { sql } from 'drizzle-orm';
import { queryRows, type Db } from '../db/client.js';
import { pgErrorOf, PG_FOREIGN_KEY_VIOLATION, PG_UNIQUE_VIOLATION } from '../db/errors.js';
import { toAgent } from '../db/rows.js';
import { createAgentSchema, type CreateAgentInput } from '../domain/agents.js';
import { ADAPTER_DRIVERS, type AdapterType, type EnvironmentDriver } from '../domain/enums.js';
import { BerthError, notFound, requireId } from '../domain/errors.js';
import { SYSTEM_ACTOR, type Actor, type Agent } from '../domain/types.js';
import { parseInput } from '../domain/validators.js';
import { activityFrom } from './activity.js';

export function agentService(db: Db) {
  return {
    async create(companyId: string, input: CreateAgentInput, actor: Actor = SYSTEM_ACTOR): Promise<Agent> {
      requireId(companyId, 'company');
      const v = parseInput(createAgentSchema, input, 'agent');
      if (v.defaultEnvironmentId) {
        const [env] = await queryRows<{ driver: string; status: string }>(
          db,
          sql`SELECT driver, status FROM environments WHERE id = ${v.defaultEnvironmentId} AND company_id = ${companyId}`,
        );
        const field = (message: string) =>
          new BerthError('invalid', `invalid agent: defaultEnvironmentId: ${message}`, { fields: [{ path: 'defaultEnvironmentId', message }] });
        if (!env) throw field('no such environment in this company');
        if (env.status !== 'active') throw field(`environment is ${env.status}`);
        const usable = ADAPTER_DRIVERS[v.adapterType as AdapterType];
        if (!usable.includes(env.driver as EnvironmentDriver)) {
          throw field(`the ${v.adapterType} adapter cannot run on a ${env.driver} environment (usable: ${usable.join(', ')})`);
        }
      }
      try {
        const [row] = await queryRows(
          db,
          sql`WITH changed AS (
                INSERT INTO agents (company_id, name, adapter_type, adapter_config, default_environment_id, max_concurrent_runs, interval_sec)
                VALUES (${companyId}, ${v.name}, ${v.adapterType}, ${JSON.stringify(v.adapterConfig)}::jsonb, ${v.defaultEnvironmentId},
                        ${v.maxConcurrentRuns}, ${v.intervalSec})
                RETURNING *),
              act AS (${activityFrom({
                source: 'changed', actor, action: 'agent.created', entityType: 'agent', entityId: sql`changed.id::text`, runId: sql`NULL`,
                details: sql`jsonb_build_object('name', changed.name, 'adapterType', changed.adapter_type)`,
              })})
              SELECT * FROM changed`,
        );
        return toAgent(row!);
      } catch (err) {
        const e = pgErrorOf(err);
        if (e?.code === PG_UNIQUE_VIOLATION) {
          throw new BerthError('conflict', `an agent named "${v.name}" already exists in this company`, { fields: [{ path: 'name', message: 'is already taken' }] });
        }
        if (e?.code === PG_FOREIGN_KEY_VIOLATION) throw notFound('company', companyId);
        throw err;
      }
    },

    async get(companyId: string, id: string): Promise<Agent> {
      requireId(id, 'agent');
      const [row] = await queryRows(db, sql`SELECT * FROM agents WHERE id = ${id} AND company_id = ${companyId}`);
      if (!row) throw notFound('agent', id);
      return toAgent(row);
    },

    async list(companyId: string): Promise<Agent[]> {
      return (await queryRows(db, sql`SELECT * FROM agents WHERE company_id = ${companyId} ORDER BY name`)).map(toAgent);
    },
  };
}
export type AgentService = ReturnType<typeof agentService>;
