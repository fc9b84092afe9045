// Keyset cursors for lists ordered by (timestamp, id) descending: an opaque token
// naming the last row of a page, checked to be exactly what a list returned.
import { sql } from 'drizzle-orm';
import { BerthError, UUID_RE } from '../domain/errors.js';

/** SQL that writes a timestamptz column the way a cursor holds it (UTC, microseconds). */
export const cursorTimestamp = (column: string) => sql.raw(`to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`);

export function encodeCursor(ts: string, id: string): string {
  return Buffer.from(`${ts}|${id}`).toString('base64url');
}

/** The (timestamp, id) a cursor names; `what` names the list in the error ("run filter"). */
export function decodeCursor(cursor: string, what: string): [string, string] {
  const [ts, id, ...rest] = Buffer.from(cursor, 'base64url').toString().split('|');
  // Exactly the shape encodeCursor writes: anything else could not be cast by PostgreSQL.
  if (rest.length > 0 || !ts || !id || !/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/.test(ts) || Number.isNaN(Date.parse(ts)) || !UUID_RE.test(id)) {
    throw new BerthError('invalid', `invalid ${what}: cursor: is not a cursor this list returned`, {
      fields: [{ path: 'cursor', message: 'is not a cursor this list returned' }],
    });
  }
  return [ts, id];
}
