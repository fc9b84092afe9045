// Companies: the tenants every other row belongs to.
import { sql } from 'drizzle-orm';
import { z } from 'zod';
import { queryRows, type Db } from '../db/client.js';
import { toCompany } from '../db/rows.js';
import { notFound, requireId, UUID_RE } from '../domain/errors.js';
import type { Company } from '../domain/types.js';
import { parseInput } from '../domain/validators.js';

const OWNED_TABLES = {
  environment: 'environments',
  lease: 'environment_leases',
  agent: 'agents',
  run: 'heartbeat_runs',
  apiKey: 'api_keys',
} as const;
export type OwnedKind = keyof typeof OWNED_TABLES;

export const createCompanySchema = z.strictObject({
  name: z.string().trim().min(1, 'must not be empty').max(200, 'must be at most 200 characters'),
});

export function companyService(db: Db) {
  return {
    async create(input: { name: string }): Promise<Company> {
      const { name } = parseInput(createCompanySchema, input, 'company');
      const [row] = await queryRows(db, sql`INSERT INTO companies (name) VALUES (${name}) RETURNING *`);
      return toCompany(row!);
    },
    async get(id: string): Promise<Company> {
      requireId(id, 'company');
      const [row] = await queryRows(db, sql`SELECT * FROM companies WHERE id = ${id}`);
      if (!row) throw notFound('company', id);
      return toCompany(row);
    },
    /**
     * The company that owns an object, for callers that act across companies (the
     * instance admin); null when there is no such object.
     */
    async ownerOf(kind: OwnedKind, id: string): Promise<string | null> {
      if (!UUID_RE.test(id)) return null;
      const [row] = await queryRows<{ company_id: string }>(db, sql`SELECT company_id FROM ${sql.identifier(OWNED_TABLES[kind])} WHERE id = ${id}`);
      return row ? String(row.company_id) : null;
    },
    /** One round trip to the database (health checks). */
    async ping(): Promise<void> {
      await queryRows(db, sql`SELECT 1 AS ok`);
    },
    async list(): Promise<Company[]> {
      return (await queryRows(db, sql`SELECT * FROM companies ORDER BY created_at, id`)).map(toCompany);
    },
  };
}
export type CompanyService = ReturnType<typeof companyService>;
