// At server start: make sure this server's secret key is the one the database's secrets
// are sealed with (several servers on one database must share it), and seal in place any
// secret an older Berth stored in clear.
import { sql } from 'drizzle-orm';
import { queryRows, type Db } from '../db/client.js';
import { secretKey, SecretKeyError, type SecretKey } from './cipher.js';
import { agentSecretPaths, environmentSecretPaths, sealClearSecrets, sealedKeyIds, type SecretPath } from './config.js';

type Row = Record<string, unknown>;

interface Kind {
  table: 'environments' | 'agents';
  /** The row's stored secrets as a document, and its secret paths. */
  doc(r: Row): Record<string, unknown>;
  paths(r: Row): readonly SecretPath[];
  /** The update that stores a resealed document. */
  write(id: string, doc: Record<string, unknown>): ReturnType<typeof sql>;
}

const obj = (v: unknown): Record<string, unknown> => (v && typeof v === 'object' ? (v as Record<string, unknown>) : {});

const KINDS: Kind[] = [
  {
    table: 'environments',
    doc: (r) => ({ config: obj(r.config), envVars: obj(r.env_vars) }),
    paths: (r) => environmentSecretPaths(String(r.driver)),
    write: (id, d) => sql`UPDATE environments SET config = ${JSON.stringify(d.config)}::jsonb, env_vars = ${JSON.stringify(d.envVars)}::jsonb WHERE id = ${id}`,
  },
  {
    table: 'agents',
    doc: (r) => ({ adapterConfig: obj(r.adapter_config) }),
    paths: (r) => agentSecretPaths(String(r.adapter_type)),
    write: (id, d) => sql`UPDATE agents SET adapter_config = ${JSON.stringify(d.adapterConfig)}::jsonb WHERE id = ${id}`,
  },
];

function mismatch(dbKeyId: string, key: SecretKey): SecretKeyError {
  return new SecretKeyError(
    `this database's secrets are sealed with secret key ${dbKeyId}, but this server's key (${key.source}) is ${key.id}: ` +
      'every server on one database must use the same key. Set BERTH_SECRET_KEY on this server to that key ' +
      "(the contents of secret.key in the BERTH_HOME of a server that works with this database, or its BERTH_SECRET_KEY)",
  );
}

export interface SecretsAtRest {
  keyId: string;
  /** Rows whose clear secrets were sealed now. */
  sealedRows: number;
}

/**
 * Refuse a key other than the database's (recorded in berth_secret_key on first start;
 * a database from before the record is judged by the key ids its ciphertexts carry), then
 * seal the secrets older versions stored in clear. Several servers starting at once: the
 * first insert wins the record, the others compare against it.
 */
export async function prepareSecretsAtRest(db: Db, key: SecretKey = secretKey()): Promise<SecretsAtRest> {
  const scanned = await Promise.all(KINDS.map(async (k) => ({ kind: k, rows: await queryRows(db, sql`SELECT * FROM ${sql.identifier(k.table)}`) })));
  const recorded = async () => (await queryRows<{ key_id: string }>(db, sql`SELECT key_id FROM berth_secret_key`))[0]?.key_id;
  let dbKeyId = await recorded();
  if (dbKeyId === undefined) {
    const used = new Set<string>();
    for (const { kind, rows } of scanned) for (const r of rows) for (const id of sealedKeyIds(kind.doc(r), kind.paths(r))) used.add(id);
    const other = [...used].find((id) => id !== key.id);
    if (other !== undefined) throw mismatch(other, key);
    await queryRows(db, sql`INSERT INTO berth_secret_key (singleton, key_id) VALUES (true, ${key.id}) ON CONFLICT DO NOTHING`);
    dbKeyId = await recorded();
  }
  if (dbKeyId !== key.id) throw mismatch(dbKeyId ?? '(none)', key);

  let sealedRows = 0;
  for (const { kind, rows } of scanned) {
    const clear = rows.filter((r) => JSON.stringify(sealClearSecrets(kind.doc(r), kind.paths(r), key)) !== JSON.stringify(kind.doc(r)));
    if (clear.length === 0) continue;
    // Reread under a row lock: a write since the scan (or another server sealing too) is
    // what gets resealed, never an older copy.
    sealedRows += await db.transaction(async (tx) => {
      let n = 0;
      for (const stale of clear) {
        const [r] = await queryRows(tx, sql`SELECT * FROM ${sql.identifier(kind.table)} WHERE id = ${String(stale.id)} FOR UPDATE`);
        if (!r) continue;
        const doc = kind.doc(r);
        const sealed = sealClearSecrets(doc, kind.paths(r), key);
        if (JSON.stringify(sealed) === JSON.stringify(doc)) continue;
        await queryRows(tx, kind.write(String(r.id), sealed));
        n++;
      }
      return n;
    });
  }
  return { keyId: key.id, sealedRows };
}
