// Companies: the tenants every other row belongs to.
import { sql } from 'drizzle-orm';
import { z } from 'zod';
import { queryRows, type Db } from '../db/client.js';
import { toCompany } from '../db/rows.js';
import { notFound, requireId } from '../domain/errors.js';
import type { Company } from '../domain/types.js';
import { parseInput } from '../domain/validators.js';

const createCompanySchema = z.strictObject({
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
    async list(): Promise<Company[]> {
      return (await queryRows(db, sql`SELECT * FROM companies ORDER BY created_at, id`)).map(toCompany);
    },
  };
}
export type CompanyService = ReturnType<typeof companyService>;
